"""What the framework callbacks share: which gradients to monitor and where the report goes."""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import GradscopeError, UsageError
from ..monitor import GradientMonitor, MonitorConfig, attached_monitor
from ..monitor.hooks import InstanceWrap
from ..report import check_writable

# Steps a callback keeps on the host when it writes no report: it only logs the latest.
CALLBACK_KEEP_LAST = 1024

# The monitors callbacks made: one still attached when another run starts belongs to a run that stopped.
_MADE_BY_CALLBACKS: "weakref.WeakSet[GradientMonitor]" = weakref.WeakSet()

# The optional records of a step as log keys, the monitor's sinks' (gradscope.monitor.sinks):
# (key, GradientMonitor.latest()'s global value, its per-block values).
_OPTIONAL_LOGS = (("weight_norm", "global_weight_l2", "weight_l2"),
                  ("update_ratio", "global_update_ratio", "update_ratio"),
                  ("act_grad_norm", None, "act_grad_l2"))


def optional_values(latest: dict, prefix: str) -> dict[str, float]:
    """The weight norms, update ratios and dL/dh of a step (``GradientMonitor.latest()``) as log entries:
    ``{prefix}/weight_norm/global`` and ``/<block>``, ``{prefix}/update_ratio/global`` and ``/<block>``,
    ``{prefix}/act_grad_norm/<block>``; those not recorded at that step (NaN) are left out."""
    out = {}
    for key, whole, per_block in _OPTIONAL_LOGS:
        if whole is not None and not math.isnan(latest[whole]):
            out[f"{prefix}/{key}/global"] = latest[whole]
        out.update((f"{prefix}/{key}/{block}", v) for block, v in latest[per_block].items() if not math.isnan(v))
    return out


def stepping_optimizer(optimizer):
    """The torch optimizer that takes the update: accelerate's ``AcceleratedOptimizer`` (and Lightning's
    ``LightningOptimizer``) hold it as ``.optimizer`` and call its ``step``, whose hooks fire there; the
    wrapper's own step hooks never do."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class MonitorCallbackOptions:
    """The options of a training-framework callback, and the monitor it makes from them.

    ``options`` are :class:`~gradscope.GradientMonitor`'s (``every``, ``params``,
    ``on_nonfinite``, ``keep_last``, ...); ``report_dir`` writes a report with
    every recorded step when training ends; ``prefix`` starts every log key.
    Without ``report_dir`` only the last ``CALLBACK_KEEP_LAST`` steps stay on
    the host, unless ``keep_last`` says otherwise. With ``update_ratios`` the
    monitor keeps the weights when it records a step and takes the update from
    the trainer's torch optimizer's own step (its step post-hook, removed when
    the monitor closes), and at the end of the step for a step that optimizer
    never took (a GradScaler skipped it: update 0).
    """

    def __init__(self, *, report_dir=None, prefix: str = "gradscope", **options):
        if report_dir is None:
            options.setdefault("keep_last", CALLBACK_KEEP_LAST)
        else:  # a report_dir that cannot be written fails here, not after training
            check_writable(report_dir, "report_dir")
        self.config = MonitorConfig.with_options(None, options)  # bad options fail here, not at train time
        self.report_dir = report_dir
        self.prefix = prefix
        self.monitor: GradientMonitor | None = None
        self._clip_wrap: Optional[InstanceWrap] = None

    def wrap_clip(self, owner, name: str, make: Callable[[Callable], Callable]) -> None:
        """Replace the framework's clip method ``owner.name`` by ``make(original)`` until :meth:`restore_clip`
        (which puts back an instance attribute set before ours, or lets the class's method show again)."""
        original = getattr(owner, name)
        self._clip_wrap = InstanceWrap(owner, name, functools.wraps(original)(make(original)))

    def restore_clip(self) -> None:
        if self._clip_wrap is not None:
            self._clip_wrap.remove()
            self._clip_wrap = None

    def make_monitor(self, model: nn.Module, scaler=None, optimizers: tuple = (), *, engine=None,
                     step_numbers: Optional[Callable[[], int]] = None) -> GradientMonitor:
        """The monitor of a run; ``optimizers``: the trainer's (wrapped or not), where ``update_ratios`` takes
        the update from (it follows one). With a DeepSpeed ``engine`` the monitor follows the engine's step
        instead (its own optimizer and loss scale), numbering the steps with ``step_numbers``."""
        if engine is not None:
            self._close_stopped(model)
            monitor = GradientMonitor(engine, config=self.config, step_numbers=step_numbers)
            _MADE_BY_CALLBACKS.add(monitor)
            return monitor
        updates_from = None
        if self.config.update_ratios:
            if len(optimizers) != 1:
                raise UsageError(f"`update_ratios=True` takes the update from the trainer's optimizer step, and "
                                 f"follows one optimizer; this run has {len(optimizers)}: leave `update_ratios` "
                                 f"out (`weight_norms=True` records the weight norms alone)")
            updates_from = stepping_optimizer(optimizers[0])
        self._close_stopped(model)
        monitor = GradientMonitor(model, scaler=scaler, config=self.config, updates_from=updates_from)
        _MADE_BY_CALLBACKS.add(monitor)
        return monitor

    @staticmethod
    def _close_stopped(model: nn.Module) -> None:
        """Close a monitor a callback left on ``model``: its run stopped before its end event (an error the
        callback never saw)."""
        previous = attached_monitor(model)
        if previous in _MADE_BY_CALLBACKS:
            previous.close(flush=False)

    def finish(self, meta: dict, *, write: bool, error: Optional[BaseException] = None) -> None:
        """Flush, write the report (``report_dir`` set and ``write``: the main process) and release the model.

        After ``error`` the report holds the steps recorded before it and says
        what stopped the run; in sharded mode only the steps already flushed
        (a flush is a collective that the other processes may never join). A
        report that cannot be written then is a warning: the error is what the
        user must see.
        """
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            self._write_report(monitor, meta, write, error)
        except Exception as exc:
            if error is None:
                raise
            warnings.warn(f"gradscope: the report of the stopped run could not be written to {self.report_dir}: "
                          f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
        finally:
            monitor.close(flush=False)

    def _write_report(self, monitor: GradientMonitor, meta: dict, write: bool,
                      error: Optional[BaseException]) -> None:
        if error is None or monitor.mode != "sharded":
            monitor.flush(check=error is None)
        else:  # the report reads the history, which would flush
            monitor.drop_unflushed()
        if self.report_dir is None or not write or not monitor.has_records:
            return
        if error is not None:
            meta = {**meta, "stopped_by": f"{type(error).__name__}: {error}"}
        try:
            monitor.report(meta=meta).save(self.report_dir, force=True)
        except GradscopeError as exc:  # raised at the end of training, it would stop the script before saving the model
            warnings.warn(f"gradscope: the report could not be written to {self.report_dir}: {exc}", RuntimeWarning,
                          stacklevel=3)
