"""What the framework callbacks share: which gradients to monitor and where the report goes."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from ..monitor import GradientMonitor


class MonitorCallbackOptions:
    """The options of a training-framework callback, and the monitor it makes from them.

    ``every``, ``params`` and ``on_nonfinite`` are :class:`~gradscope.GradientMonitor`'s;
    ``report_dir`` writes a report when training ends; ``prefix`` starts every log key.
    """

    def __init__(self, *, every: int = 1, params: Optional[Sequence[str]] = None, on_nonfinite: str = "warn",
                 report_dir=None, prefix: str = "gradscope"):
        self.every = every
        self.params = params
        self.on_nonfinite = on_nonfinite
        self.report_dir = report_dir
        self.prefix = prefix
        self.monitor: Optional[GradientMonitor] = None

    def make_monitor(self, model: nn.Module) -> GradientMonitor:
        return GradientMonitor(model, every=self.every, params=self.params, on_nonfinite=self.on_nonfinite)
