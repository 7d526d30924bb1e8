"""Mixed precision: whether the gradients a monitor reads are still multiplied by a ``torch.amp.GradScaler``'s
scale, and what undoes it (see "Mixed precision" in :mod:`gradscope.monitor`)."""

from __future__ import annotations

from typing import Optional

import torch
from torch.amp.grad_scaler import OptState

from ..errors import UsageError
from ..stats import Stat


def check_scaler(scaler) -> None:
    """UsageError unless ``scaler`` is ``None`` or a GradScaler."""
    if scaler is not None and not (hasattr(scaler, "unscale_") and hasattr(scaler, "is_enabled")):
        raise UsageError(f"`scaler` must be a torch.amp.GradScaler; got {type(scaler).__name__}")


def still_scaled(scaler, optimizer: Optional[torch.optim.Optimizer]) -> bool:
    """True when the gradients are still multiplied by ``scaler``'s scale (``unscale_`` not run yet for
    ``optimizer``, or, without one, for the optimizers the scaler has seen this step); UsageError when some
    optimizers' gradients are unscaled and others not. The scaler's per-optimizer stage is private to torch:
    read here only."""
    if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
        return False
    if optimizer is not None:
        unscaled = [scaler._per_optimizer_states.get(id(optimizer), {}).get("stage") == OptState.UNSCALED]
    else:  # the optimizers the scaler has seen this step
        unscaled = [state.get("stage") == OptState.UNSCALED for state in scaler._per_optimizer_states.values()]
    if unscaled and all(unscaled):
        return False  # scaler.unscale_ already ran: the gradients are true values
    if any(unscaled):
        raise UsageError("the GradScaler has unscaled the gradients of some optimizers but not of others; "
                         "pass the optimizer to the monitor (GradientMonitor(model, optimizer, scaler=scaler)) "
                         "so it knows which gradients it reads")
    return True


# The power of the scale each statistic carries, in Stat order: a sum of squares its square, counts none.
_SCALE_POWER = tuple({Stat.SUMSQ: 2, Stat.SUM: 1, Stat.SUMABS: 1, Stat.MAXABS: 1}.get(stat, 0) for stat in Stat)


def unscale_factors(scaler, device: torch.device) -> torch.Tensor:
    """[6] float64 on ``device``: what each statistic (``Stat`` order) is multiplied by to undo ``scaler``'s
    scale (exact: the scale is a power of two); counts stay as they are. Computed on the device: no sync."""
    return factors_undoing(scaler._scale, device)


def factors_undoing(scale: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[6] float64 on ``device``: what each statistic is multiplied by to undo a loss scale ``scale`` (a
    tensor, of any dtype or device: no sync)."""
    inv = scale.to(device=device, dtype=torch.float64).reciprocal().reshape(())
    powers = (torch.ones((), dtype=torch.float64, device=device), inv, inv * inv)
    return torch.stack([powers[p] for p in _SCALE_POWER])
