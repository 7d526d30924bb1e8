"""``grad_stats``: statistics of many gradients in one fused pass.

>>> import torch, gradscope
>>> model = torch.nn.Linear(4, 2)
>>> model(torch.randn(3, 4)).sum().backward()
>>> stats = gradscope.grad_stats([p.grad for p in model.parameters()])
>>> stats.l2.shape
torch.Size([2])

Every field is a tensor of shape ``[N]`` left on the input device: nothing here
waits for the device. Call ``stats.cpu()`` once to bring them all to the host.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Iterable, Optional, Sequence

import torch

from . import _ext
from ._reference import STAT_NAMES, Stat, grad_stats_reference

BACKENDS = ("auto", "fused", "reference")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class GradStats:
    """Per-tensor gradient statistics; row ``i`` describes input ``i``.

    ``sumsq``, ``sum``, ``sumabs`` and ``maxabs`` are taken over the finite
    elements; ``nonfinite`` counts NaN and +-Inf, ``zeros`` counts exact zeros.
    Rows of ``None`` inputs (parameters without a gradient) have
    ``present == False`` and ``numel == 0``. Derived values (``mean``, ``rms``,
    ``std``) are over the finite elements and NaN where there are none.

    Read-only: every field is a property without a setter.
    """

    def __init__(self, table: torch.Tensor, numel_host: Sequence[int], present_host: Sequence[bool], backend: str):
        self._table = table  # [N, 6] float64, columns in Stat order
        self._numel: tuple[int, ...] | bytes = tuple(numel_host)  # elements of each dense tensor (0 for None)
        self._present: Optional[tuple[bool, ...]] = tuple(present_host)  # False for None inputs
        self._backend = backend  # "fused", "reference" or "mixed"

    @classmethod
    def from_packed(cls, table: torch.Tensor, numel_packed: bytes) -> "GradStats":
        """The compiled fast entry's result: every input present, the element counts packed as native int64s.

        They are unpacked on first read: most callers never read them, and a tuple would cost a Python int per
        tensor on every call.
        """
        stats = cls.__new__(cls)
        stats._table, stats._numel, stats._present, stats._backend = table, numel_packed, None, "fused"
        return stats

    @property
    def table(self) -> torch.Tensor:
        """[N, 6] float64 on the inputs' device, columns in :class:`Stat` order."""
        return self._table

    @property
    def backend(self) -> str:
        """``"fused"``, ``"reference"`` or ``"mixed"``."""
        return self._backend

    @property
    def numel_host(self) -> tuple[int, ...]:
        """Elements of each input (0 for ``None``), on the host."""
        if isinstance(self._numel, bytes):
            self._numel = unpack_numel(self._numel)
        return self._numel

    @property
    def present_host(self) -> tuple[bool, ...]:
        """False for ``None`` inputs, on the host."""
        if self._present is None:
            self._present = (True,) * self._table.shape[0]
        return self._present

    # numel and present are known on the host; their device copies are made
    # on first use only, so a caller that never reads them pays nothing.
    @cached_property
    def numel(self) -> torch.Tensor:
        """[N] int64 on the device of ``table``."""
        if isinstance(self._numel, bytes):  # straight from the packed counts
            return _host_to(torch.frombuffer(bytearray(self._numel), dtype=torch.int64), self._table.device)
        return _to_device(self._numel, torch.int64, self._table.device)

    @cached_property
    def present(self) -> torch.Tensor:
        """[N] bool on the device of ``table``: False for ``None`` inputs."""
        return _to_device(self.present_host, torch.bool, self.table.device)

    def __repr__(self) -> str:
        return f"GradStats(rows={len(self)}, device={self.device}, backend={self.backend!r})"

    def __len__(self) -> int:
        return self.table.shape[0]

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def sumsq(self) -> torch.Tensor:
        return self.table[:, Stat.SUMSQ]

    @property
    def sum(self) -> torch.Tensor:
        return self.table[:, Stat.SUM]

    @property
    def sumabs(self) -> torch.Tensor:
        return self.table[:, Stat.SUMABS]

    @property
    def maxabs(self) -> torch.Tensor:
        return self.table[:, Stat.MAXABS]

    @property
    def nonfinite(self) -> torch.Tensor:
        return self.table[:, Stat.NONFINITE].to(torch.int64)

    @property
    def zeros(self) -> torch.Tensor:
        return self.table[:, Stat.ZEROS].to(torch.int64)

    @property
    def finite(self) -> torch.Tensor:
        """Number of finite elements per tensor."""
        return self.numel - self.nonfinite

    @property
    def l2(self) -> torch.Tensor:
        return self.sumsq.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.finite

    @property
    def rms(self) -> torch.Tensor:
        return (self.sumsq / self.finite).sqrt()

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (ddof=0) of the finite elements."""
        n = self.finite
        return (self.sumsq / n - (self.sum / n) ** 2).clamp_min(0).sqrt()

    @property
    def zero_frac(self) -> torch.Tensor:
        return self.zeros / self.numel

    def total_l2(self) -> torch.Tensor:
        """L2 norm of all finite elements of all tensors, as a 0-dim tensor."""
        return self.sumsq.sum().sqrt()

    def to(self, device) -> "GradStats":
        return GradStats(self.table.to(device), self.numel_host, self.present_host, self.backend)

    def cpu(self) -> "GradStats":
        """All fields on the host (one device-to-host copy of the table)."""
        return self.to("cpu")

    def to_dict(self) -> dict[str, list]:
        """Plain Python lists, one per field (copies to the host)."""
        host = self.cpu()
        out = {name: getattr(host, name).tolist() for name in (*STAT_NAMES, "numel", "present")}
        return out


def unpack_numel(packed: bytes) -> tuple[int, ...]:
    """The element counts the compiled fast entry returns packed, as a tuple."""
    return tuple(memoryview(packed).cast("q"))


def _unusual_item(i: int, t):
    """Checks an item off the fast path; returns the dense tensor to read and its implicit zeros."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"grad_stats: item {i} is a {type(t).__name__}; expected a floating-point torch.Tensor or None"
        )
    if t.layout not in (torch.strided, torch.sparse_coo):
        raise TypeError(
            f"grad_stats: item {i} has layout {t.layout}; pass a dense or sparse COO tensor "
            "(convert with .to_dense() or .to_sparse_coo())"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"grad_stats: item {i} has dtype {t.dtype}; gradscope reads float32, float16, bfloat16 "
            "and float64 tensors (convert with .float())"
        )
    if t.layout is torch.strided:
        return t, 0
    # Sparse COO: the statistics of its values, plus the zeros it leaves implicit.
    values = t.detach().coalesce().values()
    return values, t.numel() - values.numel()


def _repeated(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """An expanded view (stride 0 along a dimension longer than 1) as the tensor it repeats, read without
    materializing it, and how many times it repeats each element; any other tensor as it is, once."""
    if t.is_contiguous():  # a cached flag: the common case costs nothing more
        return t, 1
    shape, strides = t.shape, t.stride()
    expanded = [d for d in range(t.dim()) if strides[d] == 0 and shape[d] > 1]
    if not expanded:
        return t, 1
    repeat = math.prod(shape[d] for d in expanded)
    return t[tuple(0 if d in expanded else slice(None) for d in range(t.dim()))], repeat


# The columns that count every element, which an element repeated k times contributes to k times.
_PER_ELEMENT = [column for column in Stat if column != Stat.MAXABS]


def _to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _host_to(torch.tensor(values, dtype=dtype), device)


# Pinned sources of copies captured into CUDA graphs: a replay reads them again, so they must
# never be freed and reused. A few bytes per row, once per capture.
_CAPTURED_SOURCES: list[torch.Tensor] = []


def _host_to(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return host.to(device)
    # Pinned + non_blocking: the host does not wait for the device.
    pinned = host.pin_memory()
    if torch.cuda.is_current_stream_capturing():
        _CAPTURED_SOURCES.append(pinned)
    return pinned.to(device, non_blocking=True)


def _run_group(tensors: list[torch.Tensor], device: torch.device, backend: str) -> tuple[torch.Tensor, str]:
    """Statistics of dense tensors on one device, with the backend asked for."""
    # Weights require grad, and the statistics belong to no graph: autograd off
    # (the plain switch: the no_grad context manager costs more than a small call).
    grad_was_enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        if backend == "reference":
            return grad_stats_reference(tensors), "reference"
        reason = _ext.STATUS.reason_for(device.type)
        if not reason:
            return torch.ops.gradscope.grad_stats(tensors), "fused"
        if backend == "fused":
            raise RuntimeError(f"grad_stats: the fused backend cannot run on {device.type} tensors: {reason}")
        _ext.warn_fallback_once(device.type)
        return grad_stats_reference(tensors), "reference"
    finally:
        torch._C._set_grad_enabled(grad_was_enabled)


def grad_stats(tensors: Iterable[Optional[torch.Tensor]], *, backend: str = "auto") -> GradStats:
    """Statistics of every tensor in ``tensors``, in one fused pass per device.

    ``tensors`` may mix float32/float16/bfloat16/float64, dense (contiguous or
    not; dense layouts such as channels_last are read without a copy) and sparse
    COO tensors (statistics of the dense equivalent: implicit zeros count), on
    several devices, and ``None`` for parameters without a gradient. The result
    lives on the device of the first tensor; rows follow the input order.

    ``backend``: ``"auto"`` uses the compiled op where it can run and the
    reference path elsewhere; ``"fused"`` raises, with the reason, where the
    compiled op cannot run; ``"reference"`` forces the PyTorch reference path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"grad_stats: backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if isinstance(tensors, torch.Tensor):  # iterable too, by rows: each row would be read as a tensor of its own
        raise TypeError("grad_stats takes a list of tensors, not one tensor: pass [tensor]")
    if backend != "reference" and _ext.STATUS.cpu and _ext.dense_call and not torch.compiler.is_compiling():
        # The common call (dense float tensors on one CPU or CUDA device) is read
        # in C++; None hands anything else to the general path below.
        result = _ext.dense_call(tensors, _ext.STATUS.cuda)
        if result is not None:
            return GradStats.from_packed(*result)
    items: Sequence = tensors if isinstance(tensors, (list, tuple)) else list(tensors)

    dense: list[Optional[torch.Tensor]] = [None] * len(items)
    numel = [0] * len(items)
    implicit_zeros: dict[int, int] = {}
    repeats: dict[int, int] = {}  # expanded views: read once, counted as often as they repeat
    out_device: Optional[torch.device] = None
    one_dense_group = True  # one device, no None: the op's result is the table as it is
    for i, t in enumerate(items):
        if t is None:
            one_dense_group = False
            continue
        if isinstance(t, torch.Tensor) and t.layout is torch.strided and t.dtype in FLOAT_DTYPES:
            numel[i] = t.numel()  # the fast path: a dense float tensor
            t, repeat = _repeated(t)
            if repeat > 1:
                repeats[i] = repeat
        else:
            t, zeros = _unusual_item(i, t)
            numel[i] = t.numel() + zeros
            if zeros:
                implicit_zeros[i] = zeros
        dense[i] = t
        if out_device is None:
            out_device = t.device
        elif one_dense_group and t.device != out_device:
            one_dense_group = False
    if out_device is None:
        out_device = torch.device("cpu")

    names: set[str] = set()
    if one_dense_group and items:
        table, name = _run_group(dense, out_device, backend)  # type: ignore[arg-type]
        names.add(name)
    else:
        groups: dict[torch.device, list[int]] = {}
        for i, t in enumerate(dense):
            if t is not None:
                groups.setdefault(t.device, []).append(i)
        table = torch.zeros((len(items), len(STAT_NAMES)), dtype=torch.float64, device=out_device)
        for device, index in groups.items():
            rows, name = _run_group([dense[i] for i in index], device, backend)  # type: ignore[misc]
            names.add(name)
            # A device-to-host copy must block: the host reads the rows next.
            rows = rows.to(out_device, non_blocking=out_device.type == "cuda")
            table.index_copy_(0, _to_device(index, torch.int64, out_device), rows)
    if repeats:
        factor = _to_device([repeats.get(i, 1) for i in range(len(items))], torch.float64, out_device)
        table[:, _PER_ELEMENT] *= factor[:, None]
    if implicit_zeros:
        zeros = [implicit_zeros.get(i, 0) for i in range(len(items))]
        table[:, Stat.ZEROS] += _to_device(zeros, torch.float64, out_device)

    backend_used = names.pop() if len(names) == 1 else ("mixed" if names else "fused" if _ext.STATUS.cpu else "reference")
    return GradStats(table, tuple(numel), tuple(t is not None for t in items), backend_used)
