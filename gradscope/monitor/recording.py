"""The device side of a monitor: one step's fused ``grad_stats`` call, the buffer the steps wait in on the
gradients' device, and the flush that brings them to the host in one copy.

A buffer row holds one recorded step (:class:`RowLayout`): the ``[params, 6]`` gradient table, then the optional
records (each weight's and each update's sum of squares, dL/dh's per registered block) and the post-clip global
norm, NaN until written. The host keeps a :class:`StepRecord` per buffered step (what ``grad_stats`` knew on the
host: which gradients were present, of what size, and the clip level). Nothing here waits for the device except
the flush's copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from .. import _ext
from .. import distributed as dist_utils
from ..stats import Stat, grad_stats
from .history import HistoryChunk


# Stat's columns as plain ints on the per-step path: reading an enum member is a lookup each time (Python 3.11).
_SUMSQ, _NONFINITE = int(Stat.SUMSQ), int(Stat.NONFINITE)


def finite_sumsq(table: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squares from a ``grad_stats`` table; NaN where the row has a non-finite value."""
    sumsq = table[:, _SUMSQ]
    return torch.where(table[:, _NONFINITE] > 0, torch.full_like(sumsq, math.nan), sumsq)


def has_nonfinite(table: torch.Tensor) -> bool:
    """Whether a ``grad_stats`` table counts a non-finite value (a host sync)."""
    return bool(table[:, _NONFINITE].any())


def total_norm(table: torch.Tensor) -> torch.Tensor:
    """The L2 norm over all rows of a ``grad_stats`` table, as a 0-dim tensor on its device (no sync); NaN
    where a row has a non-finite value, as torch's norm."""
    total = table[:, _SUMSQ].sum().sqrt()
    return torch.where(table[:, _NONFINITE].sum() > 0, torch.full_like(total, math.nan), total)


class StepStats(NamedTuple):
    """One step's statistics on the monitor's device, from one fused call over the gradients and the weights."""

    table: torch.Tensor  # [N, 6] float64, the gradients'
    weight_table: torch.Tensor  # [N, 6] float64 with weight norms, else [0, 6]
    present: Sequence[bool]  # [N] whether each gradient exists
    numel: Sequence[int]  # [N] elements of each gradient (this rank's part, when sharded)


def read_step(grads: list, weights: list, *, backend: str, device: torch.device) -> StepStats:
    """The statistics of ``grads`` and ``weights`` (empty without weight norms) in one ``grad_stats`` call: one
    table, rows ``N..`` are the weights (the usual step, all dense on one device, is read in C++)."""
    stats = grad_stats(grads + weights, backend=backend)
    table, n = stats.table.to(device), len(grads)
    return StepStats(table[:n], table[n:], stats.present_host[:n], stats.numel_host[:n])


class StepRecord(NamedTuple):
    """What the host holds of a buffered step; its statistics wait on the device."""

    step: int  # the optimizer step number
    present: Sequence[bool]  # per parameter: whether it had a gradient
    numel: Sequence[int]  # per parameter: elements counted (this rank's part, when sharded)
    clip_max_norm: float = math.nan  # the clipping's max_norm; NaN where the step was not clipped


@dataclass(frozen=True)
class RowLayout:
    """Where each record lies in a buffer row: the ``[params, 6]`` gradient table, the weights' and the update's
    sums of squares per parameter, dL/dh's per registered block, and the post-clip global norm last."""

    params: int
    table: slice
    weight: slice
    update: slice
    act: slice
    post: int  # the column of the post-clip global norm
    width: int

    @classmethod
    def of(cls, params: int, blocks: int) -> "RowLayout":
        table = slice(0, params * len(Stat))
        weight = slice(table.stop, table.stop + params)
        update = slice(weight.stop, weight.stop + params)
        act = slice(update.stop, update.stop + blocks)
        return cls(params=params, table=table, weight=weight, update=update, act=act, post=act.stop,
                   width=act.stop + 1)

    @property
    def optional(self) -> slice:
        """The records that start unrecorded (NaN) at every step: all but the gradient table."""
        return slice(self.weight.start, self.width)


class StepBuffer:
    """Up to ``capacity`` recorded steps on the gradients' device, and the host's :class:`StepRecord` of each.

    The rows are allocated at the first step (on the device and for the parameters of that step) and reused
    after each flush; :meth:`release` lets them go when the device or the monitored parameters change (after a
    flush: the buffer must be empty then).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.pending: list[StepRecord] = []
        self.layout: Optional[RowLayout] = None
        self._rows: Optional[torch.Tensor] = None  # [capacity, layout.width] float64

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def full(self) -> bool:
        return len(self.pending) == self.capacity

    @property
    def device(self) -> torch.device:
        """Where the rows are (allocated at the first step)."""
        return self._rows.device

    def release(self) -> None:
        self._rows = None

    def next_slot(self, params: int, blocks: int, device: torch.device) -> int:
        """The row the next step goes in, allocating the rows for ``params`` parameters and ``blocks``
        registered blocks on ``device`` where there are none."""
        if self._rows is None:
            self.layout = RowLayout.of(params, blocks)
            self._rows = torch.full((self.capacity, self.layout.width), math.nan, dtype=torch.float64,
                                    device=device)
        return len(self.pending)

    def table(self, slot: int) -> torch.Tensor:
        """[params, 6] view of the gradient table in row ``slot``."""
        return self._rows[slot, self.layout.table].view(self.layout.params, len(Stat))

    def act(self, slot: int) -> torch.Tensor:
        """[blocks] view of dL/dh's sums of squares in row ``slot``."""
        return self._rows[slot, self.layout.act]

    def put_weights(self, slot: int, sumsq: torch.Tensor) -> None:
        self._rows[slot, self.layout.weight] = sumsq

    def put_update(self, slot: int, sumsq: torch.Tensor) -> None:
        self._rows[slot, self.layout.update] = sumsq

    def append(self, record: StepRecord) -> None:
        """Record the step just written into row ``len(self)``."""
        self.pending.append(record)

    def holds(self, slot: int, step: int) -> bool:
        """Whether row ``slot`` still holds step ``step`` (no flush took it to the host meanwhile)."""
        return slot < len(self.pending) and self.pending[slot].step == step

    def last_table(self) -> torch.Tensor:
        """The gradient table of the step recorded last."""
        return self.table(len(self.pending) - 1)

    def mark_clipped(self, max_norm: float, post_clip_l2: torch.Tensor) -> None:
        """Note that the step recorded last was clipped to ``max_norm``, leaving a global norm ``post_clip_l2``
        (a 0-dim tensor on the device: no sync)."""
        slot = len(self.pending) - 1
        self._rows[slot, self.layout.post] = post_clip_l2.to(self._rows.device)
        self.pending[slot] = self.pending[slot]._replace(clip_max_norm=float(max_norm))

    def drop(self) -> int:
        """Forget the buffered steps; return how many."""
        count, self.pending = len(self.pending), []
        return count

    def take(self, *, sharded: bool) -> HistoryChunk:
        """The buffered steps as a host chunk, in one device-to-host copy, and the buffer emptied. ``sharded``:
        each rank holds its shards' sums, combined over the ranks on the device first (a collective)."""
        pending, layout, count = self.pending, self.layout, len(self.pending)
        present = torch.tensor([r.present for r in pending], dtype=torch.bool)
        numel = torch.tensor([r.numel for r in pending], dtype=torch.int64)
        shape = (count, layout.params, len(Stat))
        rows = self._rows[:count]
        if sharded:  # combined on the device, where the collective runs
            # the weights', updates' and dL/dh's sums of squares are each rank's part: added in the same
            # collective; the post-clip norm is no part (note_clip's total is the clip's global one) and stays
            parts = slice(layout.weight.start, layout.act.stop)
            combined = dist_utils.combine(rows[:, layout.table].view(shape), numel.to(rows.device),
                                          present.to(rows.device), rows[:, parts])
            table, numel, present, summed = (t.cpu() for t in combined)
            host = rows.to("cpu", copy=True)
            host[:, parts] = summed
        else:  # one device-to-host copy; copy=True because on CPU .cpu() would alias the reused buffer
            host = rows.to("cpu", copy=True)
            table = host[:, layout.table].reshape(shape)
        rows[:, layout.optional].fill_(math.nan)  # the optional records of the next steps start unrecorded
        max_norm = torch.tensor([r.clip_max_norm for r in pending], dtype=torch.float64)
        post = torch.where(max_norm.isnan(), torch.tensor(math.nan, dtype=torch.float64), host[:, layout.post])
        chunk = HistoryChunk(steps=torch.tensor([r.step for r in pending], dtype=torch.int64), table=table,
                             numel=numel, present=present, post_clip_l2=post, clip_max_norm=max_norm,
                             weight_sumsq=host[:, layout.weight], update_sumsq=host[:, layout.update],
                             act_grad_sumsq=host[:, layout.act])
        self.pending = []
        return chunk


class UpdateTracker:
    """``update_ratios``: ``W_after - W_before`` of a sampled optimizer step, from one kept copy of the monitored
    weights: :meth:`keep` copies them before the step; :meth:`finish` takes the sum of squares of the difference
    into the step's buffer row. On the CPU the compiled op does both in one pass each: ``copy_sumsq`` copies
    the weights and reads their norms on the way (the step's weight norms then need no other read), and
    ``diff_sumsq`` reads both copies and writes nothing; elsewhere the copy is torch's, and :meth:`finish`
    subtracts the new weights from it in place (no second copy) and reduces the difference with the fused op."""

    def __init__(self, backend: str):
        self._backend = backend
        # the CPU kernel's one pass where the compiled op runs and the reference path was not asked for
        self._fused_cpu = backend != "reference" and _ext.STATUS.fused_for("cpu")
        self._before: Optional[list[torch.Tensor]] = None  # the weights before the optimizer step
        self._slot: Optional[tuple[int, int]] = None  # (buffer row, step) whose update is pending

    def reads_norms(self, weights: Sequence[torch.Tensor]) -> bool:
        """Whether :meth:`keep` reads the sums of squares of ``weights`` as it copies them (the CPU kernel)."""
        return self._fused_cpu and bool(weights) and weights[0].device.type == "cpu"

    def keep(self, weights: Sequence[torch.Tensor], slot: int, step: int) -> Optional[torch.Tensor]:
        """Copy ``weights`` (detached) before the optimizer step of the step in row ``slot``. Where
        :meth:`reads_norms`, returns their sums of squares (float64, NaN where a weight is not finite), else
        None."""
        if self._before is None:
            self._before = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
        self._slot = (slot, step)
        if self.reads_norms(weights):
            sums = torch.ops.gradscope.copy_sumsq(list(weights), self._before)
            return torch.where(torch.isfinite(sums), sums, torch.full_like(sums, math.nan))
        torch._foreach_copy_(self._before, list(weights))
        return None

    @property
    def pending(self) -> bool:
        """Whether a step's update waits for :meth:`finish` (its weights were kept before the optimizer step)."""
        return self._slot is not None

    def forget(self) -> None:
        """No update for the step kept (it was recorded after its optimizer step)."""
        self._slot = None

    def release(self) -> None:
        """Let the copy go (the device or the monitored parameters changed, or the monitor closed), and with it
        the update still pending."""
        self._before = None
        self._slot = None

    def finish(self, params: Sequence[nn.Parameter], buffer: StepBuffer) -> None:
        """After the optimizer step: the sums of squares of its update into the step's row (dropped when a
        flush took the step to the host meanwhile); nothing when no update is pending. Also called where the
        optimizer may not have stepped (a GradScaler skipped it): the difference is then that of the weights as
        they are, zero when nothing changed them."""
        if self._slot is None:
            return
        slot, step = self._slot
        self._slot = None
        if not buffer.holds(slot, step):
            return
        after = [p.detach() for p in params]
        if self._before and self._before[0].device.type == "cpu" and self._fused_cpu:
            # one pass that reads both copies and writes nothing (csrc/grad_stats_cpu.cpp, diff_sumsq)
            sums = torch.ops.gradscope.diff_sumsq(self._before, after)
            sums = torch.where(torch.isfinite(sums), sums, torch.full_like(sums, math.nan))
        else:
            torch._foreach_sub_(self._before, after)  # in place: no second copy
            sums = finite_sumsq(grad_stats(self._before, backend=self._backend).table)
        buffer.put_update(slot, sums.to(buffer.device))
