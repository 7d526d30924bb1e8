"""What a monitor is told: :class:`MonitorConfig`, and the checks of what it is given with it (the optimizer,
the options that the distributed mode or the lack of an optimizer rule out)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

from torch import nn

from .. import distributed as dist_utils
from ..errors import UsageError

ON_NONFINITE = ("warn", "raise", "skip", "ignore")


@dataclass(frozen=True)
class MonitorConfig:
    """How a :class:`~gradscope.monitor.GradientMonitor` samples and keeps gradient statistics.

    - ``every``: record optimizer steps whose number (1-based) is a multiple of it;
    - ``params``: ``None`` for every trainable parameter, or names and ``fnmatch``
      patterns (``"encoder.layer.*.attention.*"``);
    - ``on_nonfinite``: ``"warn"``, ``"raise"``, ``"skip"`` or ``"ignore"`` (see :mod:`gradscope.monitor`);
    - ``flush_every``: recorded steps held on the device between host copies;
    - ``distributed``: ``"auto"``, ``"none"``, ``"replicated"`` (DDP) or ``"sharded"`` (FSDP, DTensor);
    - ``backend``: ``grad_stats`` backend (``"auto"``, ``"fused"``, ``"reference"``);
    - ``keep_last``: recorded steps kept on the host (``None``: all). Each costs
      57 bytes per monitored parameter (BERT-base: about 11.5 kB a step, 1.2 GB
      over 100,000 steps): for long runs set it, or sample with ``every``;
    - ``weight_norms``: also record the weight L2 per parameter at each recorded
      step, in the same fused call as the gradients (one more read of the weights);
    - ``update_ratios``: ``N`` > 0 also records ``||W_after - W_before||`` of the
      optimizer step on the steps whose number (the monitor's own count) is a
      multiple of ``every * N`` (``True``: 1; needs the optimizer; implies
      ``weight_norms``). It keeps **one copy of the monitored weights** on their
      device (BERT-base fp32: 440 MB) and costs, per such step, a copy of them
      before the optimizer step and a read of both after it (on the CPU one
      pass each: ``copy_sumsq``, which also reads the weight norms, and
      ``diff_sumsq``), hence opt-in;
    - ``activation_grads``: ``N`` > 0 records ``||dL/dh||`` at each block's output
      on the steps whose number (the monitor's own count) is a multiple of
      ``every * N`` (``True``: 1); reduced inside a gradient hook, nothing kept.

    Under FSDP (``"sharded"``) the three read each rank's shards of the weights and
    its own micro-batch's dL/dh, and the flush's one collective adds them: the
    values are the unsharded model's over the global batch (the assumption about
    the loss: :mod:`gradscope.distributed`).
    """

    every: int = 1
    params: Optional[tuple[str, ...]] = None
    on_nonfinite: str = "warn"
    flush_every: int = 64
    distributed: str = "auto"
    backend: str = "auto"
    keep_last: Optional[int] = None
    weight_norms: bool = False
    update_ratios: int = 0
    activation_grads: int = 0

    @classmethod
    def with_options(cls, config: Optional["MonitorConfig"], options: dict) -> "MonitorConfig":
        """``config`` (default: the defaults) with ``options``, which must be field names."""
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(f"unknown GradientMonitor option(s) {', '.join(f'`{n}`' for n in sorted(unknown))}; "
                             f"the options are {', '.join(f.name for f in fields(cls))}")
        return replace(config or cls(), **options)

    def __post_init__(self):
        if isinstance(self.params, str):
            object.__setattr__(self, "params", (self.params,))
        elif self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))
        if not isinstance(self.every, int) or self.every < 1:
            raise UsageError(f"`every` must be a positive integer; got {self.every!r}")
        if not isinstance(self.flush_every, int) or self.flush_every < 1:
            raise UsageError(f"`flush_every` must be a positive integer; got {self.flush_every!r}")
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or self.keep_last < 1):
            raise UsageError(f"`keep_last` must be None or a positive integer; got {self.keep_last!r}")
        for name in ("update_ratios", "activation_grads"):
            value = getattr(self, name)
            if isinstance(value, bool):
                object.__setattr__(self, name, int(value))
            elif not isinstance(value, int) or value < 0:
                raise UsageError(f"`{name}` must be True, False or a non-negative integer (every N recorded steps); "
                                 f"got {value!r}")
        if self.update_ratios:
            object.__setattr__(self, "weight_norms", True)  # a ratio needs the weight norm it divides by
        if self.on_nonfinite not in ON_NONFINITE:
            raise UsageError(f"`on_nonfinite` must be one of {', '.join(ON_NONFINITE)}; got {self.on_nonfinite!r}")
        if self.distributed not in dist_utils.MODES:
            raise UsageError(f"`distributed` must be one of {', '.join(dist_utils.MODES)}; got {self.distributed!r}")


def check_optimizer(optimizer, params: Sequence[nn.Parameter]) -> None:
    """UsageError unless ``optimizer`` is an optimizer that trains at least one of ``params``."""
    if not (hasattr(optimizer, "register_step_pre_hook") and hasattr(optimizer, "param_groups")):
        hint = " (a GradScaler goes in `scaler`)" if hasattr(optimizer, "unscale_") else ""
        raise UsageError(f"`optimizer` must be a torch.optim.Optimizer; got {type(optimizer).__name__}{hint}")
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in owned for p in params):
        raise UsageError("the optimizer holds none of the monitored parameters; pass the optimizer that trains "
                         "this model")


def check_setting(config: MonitorConfig, mode: str, has_optimizer: bool) -> None:
    """UsageError for options that ``mode`` (``dist_utils.resolve_mode``'s) or a monitor without an optimizer
    cannot honour."""
    if config.update_ratios and not has_optimizer:
        raise UsageError("`update_ratios=True` needs the optimizer (GradientMonitor(model, optimizer, "
                         "update_ratios=True), or GradientMonitor(model, updates_from=optimizer, ...) where "
                         "monitor.step() records): the update is W_after - W_before of its step, and between two "
                         "monitor.step() calls the weights change by more than it; `weight_norms=True` records "
                         "the weight norms without it")
    if config.on_nonfinite == "skip" and mode != "none":
        raise UsageError(f"`on_nonfinite='skip'` needs every process to skip the same steps, which the monitor "
                         f"cannot promise in {mode} mode; use `on_nonfinite='raise'`, or a GradScaler")
