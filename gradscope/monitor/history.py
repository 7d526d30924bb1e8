"""The host history of a monitor: the chunks each flush brings back (:class:`HistoryChunk`), where they are kept
(:class:`HistoryStore`), and :class:`MonitorHistory`, what a reader gets: the recorded steps with their blocks, and
the per-block and global values derived from them (blocks as :mod:`gradscope.blocks` defines them, in execution
order)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch

from ..blocks import block_of
from ..stats import Stat


def _nan_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b``, NaN where ``b`` is zero or NaN (counts of finite values, norms)."""
    return torch.where(b > 0, a / b, torch.full_like(a, math.nan))


@dataclass(frozen=True)
class HistoryChunk:
    """Recorded steps on the host, as the device buffer held them: ``T`` steps of ``N`` monitored parameters.

    The optional records are NaN where not recorded (the option off, a step without it) or non-finite.
    """

    steps: torch.Tensor  # [T] int64, optimizer step numbers (1-based)
    table: torch.Tensor  # [T, N, 6] float64, columns Stat
    numel: torch.Tensor  # [T, N] int64, elements counted (0 without a gradient)
    present: torch.Tensor  # [T, N] bool
    post_clip_l2: torch.Tensor  # [T] float64, global norm after the step's clipping; NaN where not clipped
    clip_max_norm: torch.Tensor  # [T] float64, the clipping's max_norm; NaN where not clipped
    weight_sumsq: torch.Tensor  # [T, N] float64, each weight's sum of squares before the optimizer step
    update_sumsq: torch.Tensor  # [T, N] float64, the sum of squares of the optimizer step's W_after - W_before
    act_grad_sumsq: torch.Tensor  # [T, R] float64, dL/dh's at the output of each block the model registers

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    @classmethod
    def empty(cls, params: int, registered_blocks: int) -> "HistoryChunk":
        """No step, with the shapes of ``params`` parameters and ``registered_blocks`` blocks."""
        f64, n = torch.float64, params
        return cls(steps=torch.zeros(0, dtype=torch.int64), table=torch.zeros((0, n, len(Stat)), dtype=f64),
                   numel=torch.zeros((0, n), dtype=torch.int64), present=torch.zeros((0, n), dtype=torch.bool),
                   post_clip_l2=torch.zeros(0, dtype=f64), clip_max_norm=torch.zeros(0, dtype=f64),
                   weight_sumsq=torch.zeros((0, n), dtype=f64), update_sumsq=torch.zeros((0, n), dtype=f64),
                   act_grad_sumsq=torch.zeros((0, registered_blocks), dtype=f64))

    @classmethod
    def cat(cls, chunks: Sequence["HistoryChunk"]) -> "HistoryChunk":
        """The steps of ``chunks``, one after the other (they must have the same parameter rows)."""
        return cls(**{f.name: torch.cat([getattr(c, f.name) for c in chunks]) for f in fields(cls)})

    def tail(self, count: int) -> "HistoryChunk":
        """The last ``count`` steps (all of them where there are fewer)."""
        return HistoryChunk(**{f.name: getattr(self, f.name)[-count:] for f in fields(self)})

    def widened(self, source: Sequence[int]) -> "HistoryChunk":
        """The steps re-indexed to new parameter rows: row ``j`` is old row ``source[j]``, or a row without a
        gradient (nothing recorded) where ``source[j]`` is -1."""
        index = torch.tensor(source, dtype=torch.int64)
        known = index >= 0

        def widen(column: torch.Tensor, fill) -> torch.Tensor:
            out = torch.full((column.shape[0], len(source), *column.shape[2:]), fill, dtype=column.dtype)
            out[:, known] = column[:, index[known]]
            return out

        return replace(self, table=widen(self.table, 0), numel=widen(self.numel, 0),
                       present=widen(self.present, False), weight_sumsq=widen(self.weight_sumsq, math.nan),
                       update_sumsq=widen(self.update_sumsq, math.nan))


class HistoryStore:
    """The chunks on the host, in the order they came: appended at each flush, joined into one when the whole
    history is read (so that later reads do not join again), the oldest dropped beyond ``keep_last`` steps."""

    def __init__(self, keep_last: Optional[int]):
        self.keep_last = keep_last
        self.steps_recorded = 0  # steps that reached the host, keep_last's dropped ones included
        self._chunks: list[HistoryChunk] = []

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def append(self, chunk: HistoryChunk) -> None:
        self._chunks.append(chunk)
        self.steps_recorded += len(chunk)

    def last(self) -> Optional[HistoryChunk]:
        """The chunk appended last (one flush's steps, unless they were joined with earlier ones meanwhile)."""
        return self._chunks[-1] if self._chunks else None

    def whole(self) -> Optional[HistoryChunk]:
        """Every step kept, as one chunk."""
        if len(self._chunks) > 1:
            self._chunks = [HistoryChunk.cat(self._chunks)]
        return self._chunks[0] if self._chunks else None

    def trim(self) -> None:
        """Drop the oldest steps beyond ``keep_last``."""
        keep = self.keep_last
        if keep is None or sum(len(c) for c in self._chunks) <= keep:
            return
        self._chunks = [HistoryChunk.cat(self._chunks).tail(keep)]

    def widen(self, source: Sequence[int]) -> None:
        """Re-index every chunk to new parameter rows (see :meth:`HistoryChunk.widened`)."""
        self._chunks = [chunk.widened(source) for chunk in self._chunks]


@dataclass(frozen=True)
class BlockLayout:
    """Which blocks a history shows and where each parameter sits: the blocks that hold a monitored parameter,
    in execution order; ``param_block[i]``, the index of parameter ``i``'s block (-1 outside every block); and
    for each block shown, its column among the model's registered blocks (where dL/dh was recorded)."""

    blocks: tuple[str, ...]
    param_block: tuple[int, ...]
    registered_column: tuple[int, ...]

    @classmethod
    def of(cls, param_names: Sequence[str], order: Sequence[str], registered: Sequence[str]) -> "BlockLayout":
        """The layout of ``param_names`` over the blocks in ``order`` (execution order, where known) of the
        model's ``registered`` blocks."""
        held = {block_of(n, order) for n in param_names}
        blocks = [b for b in order if b in held]  # a block without monitored parameters has nothing to show
        index = {b: i for i, b in enumerate(blocks)}
        return cls(blocks=tuple(blocks), param_block=tuple(index.get(block_of(n, blocks), -1) for n in param_names),
                   registered_column=tuple(registered.index(b) for b in blocks))


@dataclass(frozen=True)
class MonitorHistory:
    """Recorded steps on the host. ``table[t, i]`` holds parameter ``i``'s six statistics at ``steps[t]``.

    Parameters without a gradient at a step have ``present == False`` and an
    all-zero row; their derived values are NaN, never zero.
    """

    steps: torch.Tensor  # [T] int64, optimizer step numbers (1-based)
    param_names: tuple[str, ...]
    table: torch.Tensor  # [T, N, 6] float64, columns STAT_NAMES (Stat)
    numel: torch.Tensor  # [T, N] int64, elements counted (0 without a gradient)
    present: torch.Tensor  # [T, N] bool
    post_clip_l2: torch.Tensor  # [T] float64, global norm after the step's clipping; NaN where not clipped
    clip_max_norm: torch.Tensor  # [T] float64, the clipping's max_norm; NaN where not clipped
    blocks: tuple[str, ...]  # execution order
    param_block: torch.Tensor  # [N] int64 index into blocks, -1 outside every block
    order_known: bool  # False: no forward pass was seen, blocks are in registration order
    # NaN where not recorded (the option off, a step without it) or non-finite:
    weight_sumsq: torch.Tensor  # [T, N] float64, sum of squares of each weight before the optimizer step
    update_sumsq: torch.Tensor  # [T, N] float64, sum of squares of the optimizer step's W_after - W_before
    act_grad_sumsq: torch.Tensor  # [T, B] float64, sum of squares of dL/dh at each block's output

    @classmethod
    def of(cls, chunk: HistoryChunk, param_names: tuple[str, ...], layout: BlockLayout,
           order_known: bool) -> "MonitorHistory":
        """The steps of ``chunk`` (rows ``param_names``) seen through ``layout``."""
        return cls(steps=chunk.steps, param_names=param_names, table=chunk.table, numel=chunk.numel,
                   present=chunk.present, post_clip_l2=chunk.post_clip_l2, clip_max_norm=chunk.clip_max_norm,
                   blocks=layout.blocks, param_block=torch.tensor(layout.param_block, dtype=torch.int64),
                   order_known=order_known, weight_sumsq=chunk.weight_sumsq, update_sumsq=chunk.update_sumsq,
                   act_grad_sumsq=chunk.act_grad_sumsq[:, list(layout.registered_column)])

    def _block_sum(self, per_param: torch.Tensor) -> torch.Tensor:
        """[T, B] sums over each block's parameters of a [T, N] column (NaN stays NaN)."""
        inside = self.param_block >= 0
        out = torch.zeros((per_param.shape[0], len(self.blocks)), dtype=torch.float64)
        return out.index_add_(1, self.param_block[inside], per_param[:, inside])

    def block_weight_l2(self) -> torch.Tensor:
        """[T, B] weight L2 per block (before the optimizer step); NaN where not recorded."""
        return self._block_sum(self.weight_sumsq).sqrt()

    def global_weight_l2(self) -> torch.Tensor:
        """[T] weight L2 over all monitored parameters; NaN where not recorded."""
        return self.weight_sumsq.sum(-1).sqrt()

    def block_update_ratio(self) -> torch.Tensor:
        """[T, B] ``||W_after - W_before|| / ||W_before||`` per block of the optimizer step; NaN where not
        recorded (and where the block's weights are all zero)."""
        return _nan_div(self._block_sum(self.update_sumsq).sqrt(), self.block_weight_l2())

    def global_update_ratio(self) -> torch.Tensor:
        """[T] the update-to-weight ratio over all monitored parameters."""
        return _nan_div(self.update_sumsq.sum(-1).sqrt(), self.global_weight_l2())

    def block_act_grad_l2(self) -> torch.Tensor:
        """[T, B] ``||dL/dh||`` at each block's output (summed over the block's runs and micro-batches of the
        step; under FSDP over the global batch, of the mean of the ranks' losses: see
        :mod:`gradscope.distributed`); NaN where not recorded."""
        return self.act_grad_sumsq.sqrt()

    def __len__(self) -> int:
        return int(self.steps.numel())

    def param_l2(self) -> torch.Tensor:
        """[T, N] gradient L2 per parameter; NaN where the parameter had no gradient or a non-finite value
        (as torch's norm). ``table`` keeps the sums over the finite elements."""
        l2 = self.table[..., Stat.SUMSQ].sqrt()
        return torch.where(self.present & (self.nonfinite() == 0), l2, torch.full_like(l2, math.nan))

    def global_l2(self) -> torch.Tensor:
        """[T] L2 norm over all monitored gradients; NaN at steps with non-finite values (as torch's norm)
        and at steps where no monitored parameter had a gradient."""
        l2 = self.table[..., Stat.SUMSQ].sum(-1).sqrt()
        valid = (self.nonfinite().sum(-1) == 0) & self.present.any(-1)
        return torch.where(valid, l2, torch.full_like(l2, math.nan))

    def nonfinite(self) -> torch.Tensor:
        """[T, N] non-finite elements per parameter."""
        return self.table[..., Stat.NONFINITE].round().to(torch.int64)

    def block_table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """([T, B, 6] statistics, [T, B] elements, [T, B] parameters with a gradient) per block."""
        steps, n_blocks = self.table.shape[0], len(self.blocks)
        inside = self.param_block >= 0
        index = self.param_block[inside]
        rows = self.table[:, inside]
        out = torch.zeros((steps, n_blocks, len(Stat)), dtype=torch.float64)
        out.index_add_(1, index, rows)
        out[..., Stat.MAXABS] = torch.zeros((steps, n_blocks), dtype=torch.float64).scatter_reduce_(
            1, index.expand(steps, -1), rows[..., Stat.MAXABS], "amax")
        numel = torch.zeros((steps, n_blocks), dtype=torch.int64).index_add_(1, index, self.numel[:, inside])
        with_grad = torch.zeros((steps, n_blocks), dtype=torch.int64).index_add_(
            1, index, self.present[:, inside].to(torch.int64))
        return out, numel, with_grad

    def block_l2(self) -> torch.Tensor:
        """[T, B] gradient L2 per block; NaN where no parameter of the block had a gradient, or where the
        block had a non-finite value (as torch's norm)."""
        table, _, with_grad = self.block_table()
        l2 = table[..., Stat.SUMSQ].sqrt()
        return torch.where((with_grad > 0) & (table[..., Stat.NONFINITE] == 0), l2, torch.full_like(l2, math.nan))

    def nonfinite_blocks(self, t: int) -> list[str]:
        """Blocks with non-finite gradient values at step index ``t``, in execution order."""
        table, _, _ = self.block_table()
        return [b for b, n in zip(self.blocks, table[t, :, Stat.NONFINITE].tolist()) if n > 0]

    def rows(self) -> list[dict]:
        """The time series as tidy rows: per step, one row per block and one global row (``block`` None)."""
        table, numel, with_grad = self.block_table()
        finite = numel - table[..., Stat.NONFINITE].round().to(torch.int64)
        mean = _nan_div(table[..., Stat.SUM], finite.to(torch.float64))
        var = (_nan_div(table[..., Stat.SUMSQ], finite.to(torch.float64)) - mean ** 2).clamp_min(0)
        l2 = self.block_l2()
        block_counts = torch.bincount(self.param_block[self.param_block >= 0], minlength=len(self.blocks)).tolist()
        glob, nonfinite = self.global_l2().tolist(), self.nonfinite().sum(-1).tolist()
        post, max_norm = self.post_clip_l2.tolist(), self.clip_max_norm.tolist()
        cols = {name: t.tolist() for name, t in (
            ("l2", l2), ("mean", mean), ("std", var.sqrt()), ("maxabs", table[..., Stat.MAXABS]),
            ("nonfinite", table[..., Stat.NONFINITE].round().to(torch.int64)), ("zeros", table[..., Stat.ZEROS]),
            ("numel", numel), ("with_grad", with_grad))}
        extra = self._recorded_series()
        out = []
        for t, step in enumerate(self.steps.tolist()):
            for b, block in enumerate(self.blocks):
                has = cols["with_grad"][t][b] > 0
                nan = math.nan
                out.append({
                    "step": step, "block": block, "depth": b,
                    "grad_l2": cols["l2"][t][b],  # NaN with a non-finite value; the rest are over finite values
                    "grad_mean": cols["mean"][t][b] if has else nan,
                    "grad_std": cols["std"][t][b] if has else nan,
                    "grad_maxabs": cols["maxabs"][t][b] if has else nan,
                    "grad_zero_frac": cols["zeros"][t][b] / cols["numel"][t][b] if cols["numel"][t][b] else nan,
                    "grad_nonfinite": cols["nonfinite"][t][b],
                    "params_no_grad": block_counts[b] - cols["with_grad"][t][b],
                    **{key: per_block[t][b] for key, (per_block, _) in extra.items()},
                })
            out.append({"step": step, "block": None, "depth": None, "grad_l2": glob[t],  # pre-clip
                        "grad_l2_post_clip": post[t], "clip_max_norm": max_norm[t], "grad_nonfinite": nonfinite[t],
                        **{key: whole[t] for key, (_, whole) in extra.items() if whole is not None}})
        return out

    def _recorded_series(self) -> dict[str, tuple[list, Optional[list]]]:
        """The optional series the history holds any value of: {row key: ([T][B] per block, [T] global or None)}."""
        series = {"weight_l2": (self.block_weight_l2(), self.global_weight_l2()),
                  "update_ratio": (self.block_update_ratio(), self.global_update_ratio()),
                  "act_grad_l2": (self.block_act_grad_l2(), None)}
        return {key: (per_block.tolist(), None if whole is None else whole.tolist())
                for key, (per_block, whole) in series.items() if not per_block.isnan().all()}

    def select(self, index) -> "MonitorHistory":
        """The steps in ``index`` (a slice, or an int64 tensor of positions, over recorded steps)."""
        return replace(self, steps=self.steps[index], table=self.table[index], numel=self.numel[index],
                       present=self.present[index], post_clip_l2=self.post_clip_l2[index],
                       clip_max_norm=self.clip_max_norm[index], weight_sumsq=self.weight_sumsq[index],
                       update_sumsq=self.update_sumsq[index], act_grad_sumsq=self.act_grad_sumsq[index])

    def last_values(self) -> dict:
        """The last step as plain numbers (the keys of :meth:`GradientMonitor.latest
        <gradscope.monitor.GradientMonitor.latest>`)."""
        last = self.select(slice(-1, None))
        return {
            "step": int(last.steps[0]),
            "global": float(last.global_l2()[0]),
            "post_clip": float(last.post_clip_l2[0]),
            "clip_max_norm": float(last.clip_max_norm[0]),
            "nonfinite": int(last.nonfinite().sum()),
            "blocks": dict(zip(last.blocks, last.block_l2()[0].tolist())),
            # NaN unless recorded (weight_norms, update_ratios, activation_grads)
            "global_weight_l2": float(last.global_weight_l2()[0]),
            "weight_l2": dict(zip(last.blocks, last.block_weight_l2()[0].tolist())),
            "global_update_ratio": float(last.global_update_ratio()[0]),
            "update_ratio": dict(zip(last.blocks, last.block_update_ratio()[0].tolist())),
            "act_grad_l2": dict(zip(last.blocks, last.block_act_grad_l2()[0].tolist())),
        }
