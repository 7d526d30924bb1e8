"""Pure-PyTorch reference of the ``gradscope::grad_stats`` op.

Same semantics as the compiled kernels, computed in float64 with plain tensor
ops. It serves machines where nothing could be compiled, and it is the twin the
tests hold the kernels against. It never synchronizes with the device.
"""

from __future__ import annotations

import enum
from typing import Sequence

import torch


class Stat(enum.IntEnum):
    """Column of the op's ``[N, 6]`` float64 result (``csrc/grad_stats.h`` mirrors it): ``table[:, Stat.MAXABS]``."""

    SUMSQ = 0
    SUM = 1
    SUMABS = 2
    MAXABS = 3
    NONFINITE = 4
    ZEROS = 5


STAT_NAMES = tuple(column.name.lower() for column in Stat)  # ("sumsq", "sum", "sumabs", "maxabs", "nonfinite", "zeros")


def _row(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().reshape(-1).to(torch.float64)
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, 0.0)
    absf = xf.abs()
    # amax of an empty tensor is an error; 0 is the documented max of no elements.
    maxabs = torch.cat([absf, absf.new_zeros(1)]).amax()
    return torch.stack(
        [
            (xf * xf).sum(),
            xf.sum(),
            absf.sum(),
            maxabs,
            (~finite).sum().to(torch.float64),
            (x == 0).sum().to(torch.float64),
        ]
    )


def grad_stats_reference(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Statistics of each dense floating tensor as a float64 ``[N, 6]`` tensor.

    All tensors must be on one device; the result is on that device.
    """
    if len(tensors) == 0:
        return torch.zeros((0, len(STAT_NAMES)), dtype=torch.float64)
    return torch.stack([_row(t) for t in tensors])
