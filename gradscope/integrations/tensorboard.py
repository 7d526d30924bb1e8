"""Logging sinks without a trainer: ``monitor.log_to(SummaryWriter(...))`` or ``monitor.log_to(callable)``.

The sinks live with the monitor, in :mod:`gradscope.monitor.sinks` (its docstring lists the keys written); they
are named here too, where integrations are looked for::

    from gradscope.integrations import TensorBoardSink
"""

from __future__ import annotations

from ..monitor.sinks import CallableSink, TensorBoardSink, scalars

__all__ = ["CallableSink", "TensorBoardSink", "scalars"]
