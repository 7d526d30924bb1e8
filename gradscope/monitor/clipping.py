"""Clipping by the global L2 norm as torch clips (see "Clipping" in :mod:`gradscope.monitor`): the coefficient,
and the gradients scaled by it, from statistics already taken (no second pass over the gradients)."""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s epsilon, so the coefficient is the same


def clip_coefficient(max_norm: float, total: torch.Tensor) -> torch.Tensor:
    """torch's clipping coefficient ``max_norm / (total + 1e-6)``, at most 1, on ``total``'s device."""
    return (max_norm / (total + CLIP_EPS)).clamp(max=1.0)


def post_clip_norm(max_norm: float, total: torch.Tensor) -> torch.Tensor:
    """The global norm after clipping a total norm of ``total`` to ``max_norm``."""
    return total * clip_coefficient(max_norm, total)


def scale_gradients_(params: Sequence[nn.Parameter], coef: torch.Tensor) -> torch.dtype:
    """Multiply every gradient of ``params`` in place by ``coef`` (a 0-dim tensor), one ``foreach`` call per
    device and dtype as torch does; returns the dtype torch's ``clip_grad_norm_`` gives its total norm."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for (device, dtype), grads in groups.items():
        torch._foreach_mul_(grads, coef.to(device=device, dtype=dtype if dtype == torch.float64 else torch.float32))
    dtypes = [dtype for _, dtype in groups]
    return functools.reduce(torch.promote_types, dtypes) if dtypes else torch.float32
