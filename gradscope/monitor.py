"""``GradientMonitor``: gradient statistics of every training step, nearly for free.

Each monitored step makes **one** fused ``grad_stats`` call over all monitored
parameter gradients and copies its ``[params, 6]`` table into a preallocated
buffer on the gradients' device: nothing waits for the device. Every
``flush_every`` steps (or when you read the history) the buffer is copied to the
host in one transfer and appended to a per-step, per-parameter history, from
which per-block and global values are derived (blocks as :mod:`gradscope.blocks`
defines them, in execution order).

Two ways to drive it, once per optimizer step::

    monitor = gradscope.GradientMonitor(model)
    for batch in loader:
        loss = model(batch).loss
        loss.backward()
        monitor.step()                          # or: monitor.clip_grad_norm_(1.0)
        optimizer.step(); optimizer.zero_grad()

    monitor = gradscope.GradientMonitor(model, optimizer)   # hooks optimizer.step: no call needed

With the optimizer hook and a closure (``optimizer.step(closure)``, LBFGS), the
closure runs the backward inside the step, so the step is recorded when
``step()`` returns: the gradient of the closure's last evaluation.

**Gradient accumulation.** The monitor reads the gradient the optimizer is about
to consume: call ``step()`` at the optimizer step, after the last micro-batch's
backward (the optimizer hook does exactly that).

**Clipping.** ``monitor.clip_grad_norm_(max_norm)`` replaces
``torch.nn.utils.clip_grad_norm_``: it records the step, clips with the same
coefficient as torch (``max_norm / (total + 1e-6)``, at most 1) computed from
the statistics it just took (no second pass over the gradients), returns the
pre-clip total norm, and records both the pre-clip and the post-clip global
norm, and the clip level (``max_norm``). The per-step statistics are pre-clip.
Where something else clips (torch's ``clip_grad_norm_``, a trainer), call
``step()`` before the clip and :meth:`GradientMonitor.note_clip` after it: the
same three records. With the optimizer hook and torch's own clipping, the hook
sees (and records) post-clip gradients.

**Spikes.** The report has a finding for each spike of the pre-clip global
norm: a recorded step above ``SPIKE_FACTOR`` (5) times the median of the
``SPIKE_WINDOW`` (20) finite recorded steps before it, judged once there are
``SPIKE_MIN_HISTORY`` (10) of them; it names the block with the largest share of
that step's sum of squares. It is computed from the host history when the
report is made: no per-step cost.

**Weights and updates.** ``weight_norms=True`` adds the weights to the step's fused
``grad_stats`` call (one table, gradients then weights; no extra sync), so the
history has the weight L2 per parameter, block and in all, read before the
optimizer step. ``update_ratios=True`` (or ``N``: every N recorded steps; needs the
optimizer) also records ``||W_after - W_before|| / ||W_before||`` of the optimizer step itself, for any
optimizer: the step pre-hook copies the monitored weights into one kept copy
(memory: one more copy of them), the post-hook subtracts the new weights from it
in place and reduces the difference with the fused op. A step
``on_nonfinite="skip"`` skipped has a ratio of 0; a step taken with a closure
(LBFGS) is recorded after the step, so its weight norm is the new one and it has
no ratio (NaN). Without an optimizer nothing tells the monitor where the update
begins and ends (between two ``step()`` calls the weights change by whatever ran),
so ``update_ratios`` is refused there; weight norms are still recorded.

**dL/dh.** ``activation_grads=N`` hangs, on the steps it samples, a gradient hook on
each block's output (the first tensor of it, as :func:`gradscope.analyze` reads it)
that reduces dL/dh to its sum of squares on the device: no activation is kept and
nothing syncs. Several runs of a block and the micro-batches of one step add up
(the norm over all of the step's examples). Under ``torch.compile`` (monitor made
on the compiled model or its original) the hooks sit on the original module's
blocks and dynamo keeps them: the values are those of the eager model (tested with
the eager and aot_eager backends; inductor agrees). Under activation checkpointing
(``torch.utils.checkpoint``, ``use_reentrant`` True or False, so also the Hugging
Face ``gradient_checkpointing_enable()``) the values are exact too: with
``use_reentrant=True`` the first run has no gradient and the hook is hung on the
run repeated in the backward pass; with ``False`` the gradient reaches the first
run's output and the repeated run's hook never fires.

**Mixed precision (``torch.amp.GradScaler``).** Either call ``monitor.step()``
after ``scaler.unscale_(optimizer)`` (recommended; it also sees the steps the
scaler is about to skip), or pass ``scaler=scaler`` and call ``step()`` before
unscaling: the monitor then divides the statistics by the current scale on the
device (exact: the scale is a power of two); non-finite counts are those of the
scaled gradients, which is what the scaler checks. When the scaler has already
unscaled the attached optimizer's gradients it does not divide again. With the
optimizer hook, steps the scaler skips (inf/NaN found) never reach the hook.

**Non-finite gradients.** ``on_nonfinite="warn"`` warns at the next flush,
``"raise"`` raises :class:`~gradscope.errors.GradscopeError` at the step itself
(one host sync per monitored step: that is the price of stopping before the
optimizer applies NaN), ``"ignore"`` only records. ``"skip"`` (same sync)
skips the optimizer step of a step with non-finite values and training goes on:
the monitor sets every trainable gradient to ``None`` (as ``zero_grad()``
does), and torch's optimizers leave a parameter without a gradient untouched,
so the weights **and the optimizer state** (Adam's moments and step count,
weight decay) stay as they were; zeroing the gradients in place would not do
that (Adam would still decay its moments and count the step). The step number
is kept in :attr:`GradientMonitor.skipped_steps` and the report's finding names
it with the first block. It needs every optimizer to skip a parameter without a
gradient (all of ``torch.optim`` do), checks only the steps ``every`` samples
(keep ``every=1`` for it), and is refused under DDP and FSDP, where every process would have to agree. With ``scaler=``
and still-scaled gradients the GradScaler skips such a step itself, so the
gradients are left for it. The message names the blocks
with non-finite values in execution order, the first of them, and the deepest:
non-finite values born in the backward pass enter at the deepest block and flow
toward the input.

**Distributed.** See :mod:`gradscope.distributed`: under DDP rank 0 computes;
under FSDP (FSDP2/DTensor, FSDP1 with ``use_orig_params=True``) every rank
computes on its shards and one collective per flush combines them (call
``flush()``/``report()`` on every rank).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import math
import warnings
import weakref
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import distributed as dist_utils
from ._reference import STAT_NAMES
from .analysis import training_flow_findings
from .blocks import block_of, find_blocks, named_parameters, submodule, unwrap
from .errors import GradscopeError, UsageError
from .measure import first_tensor
from .stats import grad_stats
from .variants import describe_architecture

ON_NONFINITE = ("warn", "raise", "skip", "ignore")
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s epsilon, so the coefficient is the same
_SUMSQ, _SUM, _SUMABS, _MAXABS, _NONFINITE, _ZEROS = range(len(STAT_NAMES))

# model -> its live monitor: a second monitor on the same model is refused.
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MonitorConfig:
    """How a :class:`GradientMonitor` samples and keeps gradient statistics.

    - ``every``: record optimizer steps whose number (1-based) is a multiple of it;
    - ``params``: ``None`` for every trainable parameter, or names and ``fnmatch``
      patterns (``"encoder.layer.*.attention.*"``);
    - ``on_nonfinite``: ``"warn"``, ``"raise"``, ``"skip"`` or ``"ignore"`` (module docstring);
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
      device (BERT-base fp32: 440 MB) and costs about six passes over them per
      such step, hence opt-in and sampled;
    - ``activation_grads``: ``N`` > 0 records ``||dL/dh||`` at each block's output
      on the steps whose number (the monitor's own count) is a multiple of
      ``every * N`` (``True``: 1); reduced inside a gradient hook, nothing kept.
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
            raise UsageError(f"unknown GradientMonitor option(s) {', '.join(sorted(unknown))}; the options are "
                             f"{', '.join(f.name for f in fields(cls))}")
        return replace(config or cls(), **options)

    def __post_init__(self):
        if isinstance(self.params, str):
            object.__setattr__(self, "params", (self.params,))
        elif self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))
        if not isinstance(self.every, int) or self.every < 1:
            raise UsageError(f"every must be a positive integer; got {self.every!r}")
        if not isinstance(self.flush_every, int) or self.flush_every < 1:
            raise UsageError(f"flush_every must be a positive integer; got {self.flush_every!r}")
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or self.keep_last < 1):
            raise UsageError(f"keep_last must be None or a positive integer; got {self.keep_last!r}")
        for name in ("update_ratios", "activation_grads"):
            value = getattr(self, name)
            if isinstance(value, bool):
                object.__setattr__(self, name, int(value))
            elif not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be True, False or a non-negative integer (every N recorded steps); "
                                 f"got {value!r}")
        if self.update_ratios:
            object.__setattr__(self, "weight_norms", True)  # a ratio needs the weight norm it divides by
        if self.on_nonfinite not in ON_NONFINITE:
            raise UsageError(f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}; got {self.on_nonfinite!r}")
        if self.distributed not in dist_utils.MODES:
            raise UsageError(f"distributed must be one of {', '.join(dist_utils.MODES)}; got {self.distributed!r}")


NamedParams = list[tuple[str, nn.Parameter]]


class _Registrations:
    """Counts parameters and submodules registered on any module of the process (torch's global hooks,
    installed with the first monitor). A monitor compares the count with the one it last saw: a model can
    only gain a parameter through such a registration, so the common step never walks the model."""

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        from torch.nn.modules import module

        module.register_module_parameter_registration_hook(cls._seen)
        module.register_module_module_registration_hook(cls._seen)
        cls._installed = True

    @classmethod
    def _seen(cls, *args) -> None:
        cls.count += 1


def _matches(name: str, pattern: str) -> bool:
    """Whether a ``params`` entry (a name or an ``fnmatch`` pattern) selects the parameter ``name``."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def select_parameters(model: nn.Module, patterns: Optional[Sequence[str]]) -> tuple[NamedParams, list[str]]:
    """(selected trainable named parameters, names of frozen parameters left out).

    UsageError when nothing is trainable, or when a name or pattern selects no
    trainable parameter (with the close matches, or the frozen ones it matched).
    """
    named = named_parameters(model)
    trainable = [(n, p) for n, p in named if p.requires_grad]
    frozen = [n for n, p in named if not p.requires_grad]
    if not trainable:
        raise UsageError(
            "the model has no trainable parameters (all have requires_grad=False); unfreeze the ones to monitor "
            "(p.requires_grad_(True)) before making the monitor"
        )
    if patterns is None:
        return trainable, frozen
    chosen: dict[str, nn.Parameter] = {}
    for pattern in patterns:
        hits = [(n, p) for n, p in trainable if _matches(n, pattern)]
        if not hits:
            frozen_hits = [n for n in frozen if _matches(n, pattern)]
            if frozen_hits:
                raise UsageError(f"params: {pattern!r} matches only frozen parameters ({frozen_hits[0]}, ...); "
                                 "unfreeze them first or leave the pattern out")
            close = difflib.get_close_matches(pattern, [n for n, _ in trainable], n=3)
            # the names as gradscope reads them: a wrapper's prefix (DDP, PEFT, torch.compile) is not part of them
            examples = ", ".join(n for n, _ in trainable[:3]) + (", ..." if len(trainable) > 3 else "")
            hint = f"; close matches: {', '.join(close)}" if close else f"; the trainable names are {examples}"
            raise UsageError(f"params: {pattern!r} matches no trainable parameter{hint}")
        chosen.update(hits)
    selected = [(n, p) for n, p in trainable if n in chosen]  # model order, no duplicates
    return selected, frozen


class _ExecutionOrder:
    """Forward pre-hooks that note the order in which blocks first run, removed after one forward pass."""

    def __init__(self, model: nn.Module, blocks: list[str]):
        self._blocks = blocks
        self._seen: list[str] = []
        self._handles = [submodule(model, b).register_forward_pre_hook(self._hook(b)) for b in blocks]
        if blocks:
            self._handles.append(model.register_forward_hook(lambda *_: self.close()))

    def _hook(self, block: str):
        def hook(module, inputs):
            if block not in self._seen:
                self._seen.append(block)
            if len(self._seen) == len(self._blocks):
                self.close()

        return hook

    @property
    def known(self) -> bool:
        """True once a forward pass has shown the order."""
        return bool(self._seen)

    def order(self) -> list[str]:
        """Blocks in execution order; blocks not seen yet follow in registration order."""
        return self._seen + [b for b in self._blocks if b not in self._seen]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _nan_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b``, NaN where ``b`` is zero or NaN (counts of finite values, norms)."""
    return torch.where(b > 0, a / b, torch.full_like(a, math.nan))


@dataclass(frozen=True)
class MonitorHistory:
    """Recorded steps on the host. ``table[t, i]`` holds parameter ``i``'s six statistics at ``steps[t]``.

    Parameters without a gradient at a step have ``present == False`` and an
    all-zero row; their derived values are NaN, never zero.
    """

    steps: torch.Tensor  # [T] int64, optimizer step numbers (1-based)
    param_names: tuple[str, ...]
    table: torch.Tensor  # [T, N, 6] float64, columns STAT_NAMES
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
        step); NaN where not recorded."""
        return self.act_grad_sumsq.sqrt()

    def __len__(self) -> int:
        return int(self.steps.numel())

    def param_l2(self) -> torch.Tensor:
        """[T, N] gradient L2 per parameter; NaN where the parameter had no gradient or a non-finite value
        (as torch's norm). ``table`` keeps the sums over the finite elements."""
        l2 = self.table[..., _SUMSQ].sqrt()
        return torch.where(self.present & (self.nonfinite() == 0), l2, torch.full_like(l2, math.nan))

    def global_l2(self) -> torch.Tensor:
        """[T] L2 norm over all monitored gradients; NaN at steps with non-finite values (as torch's norm)
        and at steps where no monitored parameter had a gradient."""
        l2 = self.table[..., _SUMSQ].sum(-1).sqrt()
        valid = (self.nonfinite().sum(-1) == 0) & self.present.any(-1)
        return torch.where(valid, l2, torch.full_like(l2, math.nan))

    def nonfinite(self) -> torch.Tensor:
        """[T, N] non-finite elements per parameter."""
        return self.table[..., _NONFINITE].round().to(torch.int64)

    def block_table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """([T, B, 6] statistics, [T, B] elements, [T, B] parameters with a gradient) per block."""
        steps, n_blocks = self.table.shape[0], len(self.blocks)
        inside = self.param_block >= 0
        index = self.param_block[inside]
        rows = self.table[:, inside]
        out = torch.zeros((steps, n_blocks, len(STAT_NAMES)), dtype=torch.float64)
        out.index_add_(1, index, rows)
        out[..., _MAXABS] = torch.zeros((steps, n_blocks), dtype=torch.float64).scatter_reduce_(
            1, index.expand(steps, -1), rows[..., _MAXABS], "amax")
        numel = torch.zeros((steps, n_blocks), dtype=torch.int64).index_add_(1, index, self.numel[:, inside])
        with_grad = torch.zeros((steps, n_blocks), dtype=torch.int64).index_add_(
            1, index, self.present[:, inside].to(torch.int64))
        return out, numel, with_grad

    def block_l2(self) -> torch.Tensor:
        """[T, B] gradient L2 per block; NaN where no parameter of the block had a gradient, or where the
        block had a non-finite value (as torch's norm)."""
        table, _, with_grad = self.block_table()
        l2 = table[..., _SUMSQ].sqrt()
        return torch.where((with_grad > 0) & (table[..., _NONFINITE] == 0), l2, torch.full_like(l2, math.nan))

    def nonfinite_blocks(self, t: int) -> list[str]:
        """Blocks with non-finite gradient values at step index ``t``, in execution order."""
        table, _, _ = self.block_table()
        return [b for b, n in zip(self.blocks, table[t, :, _NONFINITE].tolist()) if n > 0]

    def rows(self) -> list[dict]:
        """The time series as tidy rows: per step, one row per block and one global row (``block`` None)."""
        table, numel, with_grad = self.block_table()
        finite = numel - table[..., _NONFINITE].round().to(torch.int64)
        mean = _nan_div(table[..., _SUM], finite.to(torch.float64))
        var = (_nan_div(table[..., _SUMSQ], finite.to(torch.float64)) - mean ** 2).clamp_min(0)
        l2 = self.block_l2()
        block_counts = torch.bincount(self.param_block[self.param_block >= 0], minlength=len(self.blocks)).tolist()
        glob, nonfinite = self.global_l2().tolist(), self.nonfinite().sum(-1).tolist()
        post, max_norm = self.post_clip_l2.tolist(), self.clip_max_norm.tolist()
        cols = {name: t.tolist() for name, t in (
            ("l2", l2), ("mean", mean), ("std", var.sqrt()), ("maxabs", table[..., _MAXABS]),
            ("nonfinite", table[..., _NONFINITE].round().to(torch.int64)), ("zeros", table[..., _ZEROS]),
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


MAX_SERIES_STEPS = 2000  # steps a monitor report's time series keeps by default


def series_positions(history: MonitorHistory, limit: Optional[int]) -> torch.Tensor:
    """Positions of the recorded steps a report's series keeps: all of them up to ``limit`` (None: no
    limit); beyond it evenly spaced ones, plus the last, the largest global norm and every step with
    non-finite values (incidents are what a reader looks for)."""
    count = len(history)
    if limit is None or count <= limit:
        return torch.arange(count)
    stride = -(-count // limit)  # ceil: at most `limit` evenly spaced steps
    glob = history.global_l2()
    incidents = (history.nonfinite().sum(-1) > 0).nonzero().flatten()
    largest = torch.nan_to_num(glob, nan=-1.0).argmax().reshape(1)
    return torch.cat([torch.arange(0, count, stride), incidents, largest, torch.tensor([count - 1])]).unique()


NONFINITE_FIX = ("Check the inputs and the loss for NaN/Inf, lower the learning rate, or, in float16 training, use a "
                 "GradScaler (it skips such steps) or bfloat16")


def describe_nonfinite(history: MonitorHistory, t: int) -> str:
    """One message about the non-finite gradient values at step index ``t``."""
    count, where, _ = _nonfinite_where(history, t)
    return (f"gradscope: {count} non-finite gradient value(s) at step {int(history.steps[t])}; {where}. "
            f"{NONFINITE_FIX}")


def _nonfinite_where(history: MonitorHistory, t: int) -> tuple[int, str, Optional[str]]:
    """How many non-finite values step index ``t`` has; where, in words: the first and the deepest block
    holding one, parameters outside every block, or why the step cannot tell; and the first block, None
    where no block holds one or the step cannot tell."""
    per_param = history.nonfinite()[t].tolist()
    count = sum(per_param)
    blocks = history.nonfinite_blocks(t)
    outside = [name for name, block, n in zip(history.param_names, history.param_block.tolist(), per_param)
               if block < 0 and n > 0]
    order = "execution order" if history.order_known else "registration order: no forward pass seen yet"
    if count == int(history.numel[t].sum()):
        where = ("every gradient value is non-finite, so where it began cannot be read from this step: clipping "
                 "with a non-finite total norm multiplies every gradient by NaN (torch's clip_grad_norm_, and the "
                 "Hugging Face Trainer's clipping and grad_norm); record before clipping (monitor.step() or "
                 "monitor.clip_grad_norm_ in your loop) to see the blocks it entered by")
        outside, blocks = [], []
    elif blocks:
        where = f"first block ({order}): {blocks[0]}"
        if len(blocks) > 1:
            where += (f"; {len(blocks)} blocks affected, the deepest is {blocks[-1]} (values born in the backward "
                      f"pass enter there and flow toward the input)")
    else:
        where = "no block affected"
    if outside:
        where += f"; outside blocks: {', '.join(outside[:3])}" + (" ..." if len(outside) > 3 else "")
    return count, where, (blocks[0] if blocks else None)


def nonfinite_findings(history: MonitorHistory, recorded: int, skipped: Sequence[int] = ()) -> list[dict]:
    """The report's finding about the steps with non-finite gradient values (none without any), shaped as
    ``analyze``'s: it names the first such step and the first block affected there, and the optimizer steps
    ``on_nonfinite="skip"`` skipped (``skipped``). An error when the last step still has them and was not
    skipped (the run did not recover), else a warning (e.g. overflows a GradScaler skipped)."""
    bad = (history.nonfinite().sum(-1) > 0).nonzero().flatten().tolist()
    if not bad:
        return []
    skipped = sorted(set(skipped))
    first, step = bad[0], int(history.steps[bad[0]])
    count, where, block = _nonfinite_where(history, first)
    recovered = bad[-1] != len(history) - 1 or int(history.steps[-1]) in skipped
    shown = ", ".join(str(s) for s in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    of = str(len(history)) if recorded == len(history) else f"the last {len(history)} (of {recorded})"
    return [{
        "variant": "training", "severity": "warning" if recovered else "error", "kind": "non-finite",
        "block": block,
        "message": f"non-finite gradient values at {len(bad)} of {of} recorded step(s), first at step {step}"
                   + (f" in block {block}" if block else "")
                   + ("" if recovered else "; the last recorded step has them too")
                   + (f"; the optimizer step was skipped at {len(skipped)} step(s): {shown}" if skipped else ""),
        "evidence": f"{count} non-finite value(s) at step {step}; {where}",
        "fix": NONFINITE_FIX,
    }]


# A spike: a recorded step whose pre-clip global norm exceeds SPIKE_FACTOR times the median of the
# SPIKE_WINDOW finite global norms recorded before it, judged once SPIKE_MIN_HISTORY of them exist.
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_HISTORY = 5.0, 20, 10
SPIKE_FINDINGS_MAX = 20  # findings for the first spikes; the last of them counts the rest


def spike_steps(history: MonitorHistory) -> list[tuple[int, float, float, int]]:
    """(step index, global norm, running median, steps the median is of) of each spike of the pre-clip
    global norm (rule above)."""
    spikes, window = [], []
    for t, value in enumerate(history.global_l2().tolist()):
        if not math.isfinite(value):
            continue  # non-finite steps have findings of their own and no place in the baseline
        if len(window) >= SPIKE_MIN_HISTORY:
            ordered = sorted(window)
            median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
            if value > SPIKE_FACTOR * median:
                spikes.append((t, value, median, len(window)))
        window = (window + [value])[-SPIKE_WINDOW:]
    return spikes


def spike_findings(history: MonitorHistory) -> list[dict]:
    """One warning per spike of the pre-clip global gradient norm, naming its step and the block with the
    largest share of that step's sum of squares (computed from the host history: no per-step cost)."""
    spikes = spike_steps(history)
    if not spikes:
        return []
    table, _, _ = history.block_table()
    findings = []
    for t, value, median, count in spikes[:SPIKE_FINDINGS_MAX]:
        sumsq = table[t, :, _SUMSQ]
        total = float(history.table[t, :, _SUMSQ].sum())
        block = history.blocks[int(sumsq.argmax())] if len(history.blocks) else None
        share = float(sumsq.max()) / total if block is not None and total > 0 else math.nan
        step = int(history.steps[t])
        findings.append({
            "variant": "training", "severity": "warning", "kind": "grad-spike", "block": block,
            "message": f"gradient norm spike at step {step}: {value:.3g}, {value / median:.1f}x the running median"
                       + (f"; block {block} carried {share:.0%} of it" if block is not None else ""),
            "evidence": f"pre-clip global L2 {value:.4g} > {SPIKE_FACTOR:g} x {median:.4g}, the median of the "
                        f"{count} finite recorded steps before it (rule: > {SPIKE_FACTOR:g}x the median of up to "
                        f"{SPIKE_WINDOW} earlier steps, from the {SPIKE_MIN_HISTORY + 1}th finite step on)",
            "fix": "Look at the batch of that step and at the block named; lower the learning rate or use warmup "
                   "if spikes recur; clipping (max_norm) bounds the update but not the cause",
        })
    if len(spikes) > SPIKE_FINDINGS_MAX:
        findings[-1]["evidence"] += f"; {len(spikes) - SPIKE_FINDINGS_MAX} later spike(s) not listed"
    return findings


def attached_monitor(model: nn.Module) -> Optional["GradientMonitor"]:
    """The open monitor attached to ``model`` (or to the model it wraps), if any."""
    ref = _ATTACHED.get(unwrap(model))
    monitor = ref() if ref is not None else None
    return monitor if monitor is not None and not monitor._closed else None


def _check_optimizer(optimizer, params: list[nn.Parameter]) -> None:
    """UsageError unless ``optimizer`` is an optimizer that trains at least one of ``params``."""
    if not (hasattr(optimizer, "register_step_pre_hook") and hasattr(optimizer, "param_groups")):
        hint = " (a GradScaler goes in scaler=...)" if hasattr(optimizer, "unscale_") else ""
        raise UsageError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}{hint}")
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in owned for p in params):
        raise UsageError("the optimizer holds none of the monitored parameters; pass the optimizer that trains "
                         "this model")


def _buffer_columns(params: int, blocks: int) -> dict[str, slice]:
    """Where each record lies in a buffer row: the [params, 6] gradient table, the weights' and the update's
    sums of squares per parameter, dL/dh's per registered block, and the post-clip global norm last."""
    widths = {"table": params * len(STAT_NAMES), "weight": params, "update": params, "act": blocks, "post": 1}
    columns, start = {}, 0
    for key, width in widths.items():
        columns[key] = slice(start, start + width)
        start += width
    return columns


def _finite_sumsq(table: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squares from a ``grad_stats`` table; NaN where the row has a non-finite value."""
    return torch.where(table[:, _NONFINITE] > 0, torch.full_like(table[:, _SUMSQ], math.nan), table[:, _SUMSQ])


class _OutputGradients:
    """``activation_grads``: forward hooks that hang, while ``armed()``, a gradient hook on each block's output
    (the first tensor, as :mod:`gradscope.measure` reads it); the hook reduces dL/dh to its sum of squares on
    the device and adds it to the block's entry (several runs of a block, micro-batches of one step): no
    activation is kept, nothing waits for the device. A block run again in the backward pass (activation
    checkpointing) gets its hook there too, on the run whose output the gradient reaches."""

    def __init__(self, model: nn.Module, blocks: list[str], armed: Callable[[], bool], backend: str):
        self._armed, self._backend = armed, backend
        self._sumsq: Optional[torch.Tensor] = None  # [B] float64, NaN for a block no gradient reached yet
        self._seen: set[int] = set()
        self._handles = [submodule(model, b).register_forward_hook(self._forward_hook(i))
                         for i, b in enumerate(blocks)]
        self._blocks = len(blocks)

    def _forward_hook(self, index: int):
        def hook(module, args, output):
            if not self._armed():
                return
            hidden = first_tensor(output)
            if hidden is not None and hidden.is_floating_point() and hidden.requires_grad:
                hidden.register_hook(self._grad_hook(index))

        return hook

    def _grad_hook(self, index: int):
        def hook(grad: torch.Tensor) -> None:
            value = _finite_sumsq(grad_stats([grad], backend=self._backend).table)[0]
            if self._sumsq is None:
                self._sumsq = torch.full((self._blocks,), math.nan, dtype=torch.float64, device=value.device)
            value = value.to(self._sumsq.device)
            if index in self._seen:
                self._sumsq[index] += value
            else:
                self._sumsq[index] = value
                self._seen.add(index)

        return hook

    def take(self, out: torch.Tensor) -> None:
        """Write the step's sums of squares into ``out`` (left as it is where nothing arrived) and start over."""
        if self._seen:
            out.copy_(self._sumsq.to(out.device))
        self.clear()

    def clear(self) -> None:
        if self._seen:
            self._sumsq.fill_(math.nan)
            self._seen.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _check_scaler(scaler) -> None:
    if scaler is not None and not (hasattr(scaler, "unscale_") and hasattr(scaler, "is_enabled")):
        raise UsageError(f"scaler must be a torch.amp.GradScaler; got {type(scaler).__name__}")


def _widen(chunk: tuple, source: list[int]) -> tuple:
    """A host history chunk re-indexed to new parameter rows: row j is old row ``source[j]``, or a
    row without a gradient where ``source[j]`` is -1."""
    steps, table, numel, present, post, max_norm, weight_sumsq, update_sumsq, act_sumsq = chunk
    index = torch.tensor(source, dtype=torch.int64)
    known = index >= 0

    def widen(column: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((column.shape[0], len(source), *column.shape[2:]), fill, dtype=column.dtype)
        out[:, known] = column[:, index[known]]
        return out

    return (steps, widen(table, 0), widen(numel, 0), widen(present, False), post, max_norm,
            widen(weight_sumsq, math.nan), widen(update_sumsq, math.nan), act_sumsq)


class GradientMonitor:
    """Per-step gradient statistics of a model during training (see the module docstring).

    ``GradientMonitor(model, optimizer=None, *, scaler=None, config=None, **options)``:
    ``options`` are :class:`MonitorConfig` fields (``every``, ``params``,
    ``on_nonfinite``, ``flush_every``, ``distributed``, ``backend``,
    ``keep_last``, ``weight_norms``, ``update_ratios``, ``activation_grads``).
    Parameters unfrozen later join the monitor at their first step (earlier
    steps read as "no gradient"). With an
    ``optimizer`` the monitor records from its step pre-hook; without one, call
    :meth:`step` (or :meth:`clip_grad_norm_`) once per optimizer step.

    >>> import torch, gradscope
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    >>> monitor = gradscope.GradientMonitor(net)
    >>> net(torch.randn(2, 4)).sum().backward()
    >>> monitor.step()
    True
    >>> monitor.history.block_l2().shape
    torch.Size([1, 2])
    >>> monitor.close()
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                 scaler=None, config: Optional[MonitorConfig] = None, **options):
        if not isinstance(model, nn.Module):
            raise UsageError(f"GradientMonitor needs an nn.Module; got {type(model).__name__}")
        model = unwrap(model)  # torch.compile, DDP, PEFT: the model's own names, without the wrapper's prefix
        self.config = MonitorConfig.with_options(config, options)
        if attached_monitor(model) is not None:
            raise UsageError("a GradientMonitor is already attached to this model; reuse it, or call close() on it "
                             "before making another")
        named, frozen = select_parameters(model, self.config.params)
        _check_scaler(scaler)
        if optimizer is not None:
            _check_optimizer(optimizer, [p for _, p in named])
        # Every check is done: from here on the monitor registers hooks.
        self.model = model
        self.param_names = tuple(n for n, _ in named)
        self._params = [p for _, p in named]
        frozen = set(frozen)
        self._frozen = {n: p for n, p in named_parameters(model) if n in frozen}  # may be unfrozen later
        _Registrations.install()
        self._registrations = _Registrations.count  # a parameter added to the model later joins at its next step
        self._left_out = {n for n, p in named_parameters(model) if p.requires_grad} - set(self.param_names)
        self._registered_blocks = find_blocks(model)
        self._order = _ExecutionOrder(model, self._registered_blocks)
        self.mode = dist_utils.resolve_mode(model, self.config.distributed)
        self._fsdp1 = dist_utils.fsdp1_counted(model) if self.mode == "sharded" else {}
        if self.mode == "sharded" and (self.config.weight_norms or self.config.activation_grads):
            raise UsageError("weight_norms, update_ratios and activation_grads read local weights and activations, "
                             "which sharded mode (FSDP) does not combine yet; leave them off under FSDP")
        if self.config.update_ratios and optimizer is None:
            raise UsageError("update_ratios=True needs the optimizer (GradientMonitor(model, optimizer, "
                             "update_ratios=True)): the update is W_after - W_before of its step, and between two "
                             "monitor.step() calls the weights change by more than it; weight_norms=True records "
                             "the weight norms without it")
        if self.config.on_nonfinite == "skip" and self.mode != "none":
            raise UsageError(f'on_nonfinite="skip" needs every process to skip the same steps, which the '
                             f'monitor cannot promise in {self.mode} mode; use "raise", or a GradScaler')
        self.active = not (self.mode == "replicated" and dist_utils.rank() != 0)
        self._scaler = scaler
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._hooks: list = []
        self._recorded_by_clip = False
        self._closure_step = False
        self._step_count = 0
        self._device = self._params[0].device
        # [flush_every, N * 6 + 1] float64 on the gradients' device: each row is one step's [N, 6] table
        # followed by its post-clip norm, so a flush is one device-to-host copy.
        self._buffer: Optional[torch.Tensor] = None
        # (step, present, local numel, the clipping's max_norm: NaN where the step was not clipped)
        self._pending: list[tuple[int, list[bool], list[int], float]] = []
        self._chunks: list[tuple] = []  # host history, one tuple of tensors per flush
        self._steps_recorded = 0  # steps that reached the host history, keep_last's dropped ones included
        self.skipped_steps: list[int] = []  # optimizer steps on_nonfinite="skip" skipped
        self._sinks: list[Callable[[MonitorHistory], None]] = []
        self._record_hooks: list[Callable[["GradientMonitor", int], None]] = []
        self._before: Optional[list[torch.Tensor]] = None  # update_ratios: the weights before the optimizer step
        self._update_slot: Optional[tuple[int, int]] = None  # (buffer slot, step) whose update is pending
        self._act = (_OutputGradients(model, self._registered_blocks, self._act_armed, self.config.backend)
                     if self.config.activation_grads else None)
        self._closed = False
        _ATTACHED[model] = weakref.ref(self)
        if optimizer is not None:
            self._attach(optimizer)  # checked above, before any hook was registered

    # --- driving -------------------------------------------------------------------

    def attach(self, optimizer: torch.optim.Optimizer) -> "GradientMonitor":
        """Record from ``optimizer``'s step pre-hook (after clipping and unscaling, before the update)."""
        self._check_open()
        if self._optimizer is not None:
            raise UsageError("this monitor is already attached to an optimizer; one monitor follows one optimizer")
        _check_optimizer(optimizer, self._params)
        self._attach(optimizer)
        return self

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        self._hooks = [optimizer.register_step_pre_hook(self._before_optimizer_step),
                       optimizer.register_step_post_hook(self._after_optimizer_step)]

    @property
    def frozen(self) -> list[str]:
        """Names of the model's frozen parameters, which the monitor leaves out until they are unfrozen."""
        return list(self._frozen)

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        # args[0] is the optimizer. Set at every step: a closure that raised leaves no stale mark behind.
        self._closure_step = kwargs.get("closure", args[1] if len(args) > 1 else None) is not None
        if self._closure_step:
            return  # the closure runs the backward inside step(): record when step() returns
        self._on_optimizer_step()

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._closure_step:  # recorded after the step: no copy of the weights before it, no update ratio
            self._closure_step = False
            self._on_optimizer_step()
            self._update_slot = None
        else:
            self._finish_update()

    def _on_optimizer_step(self) -> None:
        if self._recorded_by_clip:  # clip_grad_norm_ already took this step
            self._recorded_by_clip = False
            return
        self._optimizer_step(None)

    def step(self, step: Optional[int] = None) -> bool:
        """Record the current gradients as one optimizer step; True if this step was sampled.

        Call it once per optimizer step, after backward (and after
        ``scaler.unscale_``), before ``optimizer.step()``. ``step`` overrides the
        monitor's own 1-based step counter (e.g. a trainer's global step).
        """
        self._check_open()
        if self._optimizer is not None:
            raise UsageError("this monitor records from the optimizer's step hook; do not call step() as well "
                             "(or make the monitor without an optimizer)")
        return self._optimizer_step(step)

    def _optimizer_step(self, step: Optional[int]) -> bool:
        self._pick_up_joining()
        scaled = self._still_scaled()  # before counting: a refused step is not a step
        self._step_count += 1
        number = self._step_count if step is None else int(step)
        if number % self.config.every or not self.active:
            if self._act is not None:
                self._act.clear()  # a step not sampled: what its backward pass left is no step's record
            return False
        self._record(number, scaled)
        return True

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Record this step and clip the gradients of every trainable parameter in place, as
        ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)`` would (L2 norm).

        Returns the pre-clip total norm as a 0-dim tensor of the gradients' dtype, as torch does. When any
        gradient value is non-finite the total is NaN (torch gives inf when
        the non-finite values are all infinite) and the gradients become NaN
        or zero, as with torch: skip such steps. Use it instead of
        :meth:`step` for this optimizer step. The coefficient comes from the
        statistics just taken (no second pass over the gradients), except on
        steps the monitor does not sample, under DDP (so that every replica
        applies the very same coefficient) and when ``params`` monitors a
        subset: torch's clipping of all trainable parameters runs then.
        """
        self._check_open()
        if self.mode == "sharded":
            raise UsageError("clip_grad_norm_ needs the global norm of sharded gradients; use "
                             "torch.nn.utils.clip_grad_norm_ (it handles DTensor), or the FSDP1 model's own "
                             "model.clip_grad_norm_, and monitor.step()")
        if self._optimizer is not None:
            self._recorded_by_clip = True
        recorded = self._optimizer_step(None)
        subset = self.config.params is not None
        if not recorded or self.mode == "replicated" or subset:
            trainable = [p for p in self.model.parameters() if p.requires_grad] if subset else self._params
            total = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            if recorded:
                total64 = total.to(device=self._device, dtype=torch.float64)
                coef = (max_norm / (total64 + CLIP_EPS)).clamp(max=1.0)
                self._mark_clipped(max_norm, (self._monitored_total() if subset else total64) * coef)
            return total
        total = self._monitored_total()
        coef = (max_norm / (total + CLIP_EPS)).clamp(max=1.0)
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in self._params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for (device, dtype), grads in groups.items():
            torch._foreach_mul_(grads, coef.to(device=device, dtype=dtype if dtype == torch.float64 else torch.float32))
        self._mark_clipped(max_norm, total * coef)
        dtypes = [dtype for _, dtype in groups]
        return total.to(functools.reduce(torch.promote_types, dtypes) if dtypes else torch.float32)  # as torch's

    def _monitored_total(self) -> torch.Tensor:
        """The L2 norm of the monitored gradients at the step just recorded (NaN with a non-finite value)."""
        table = self._slot_table(len(self._pending) - 1)
        total = table[:, _SUMSQ].sum().sqrt()
        return torch.where(table[:, _NONFINITE].sum() > 0, torch.full_like(total, math.nan), total)

    def note_clip(self, max_norm: float, total_norm: Optional[torch.Tensor] = None) -> None:
        """Note that the step just recorded was then clipped elsewhere (a trainer's own clipping) to
        ``max_norm``, its pre-clip total norm being ``total_norm`` (what torch's ``clip_grad_norm_`` returns;
        ``None``: the monitored gradients' norm, right where the clip covers exactly them): the post-clip
        global norm is derived on the device with torch's coefficient, without a sync. Call it only after a
        :meth:`step` that returned True, before the next flush; nothing is noted when no step is pending."""
        if not self._pending:
            return
        total = self._monitored_total() if total_norm is None else total_norm
        total = torch.as_tensor(total).to(device=self._device, dtype=torch.float64)
        self._mark_clipped(max_norm, total * (max_norm / (total + CLIP_EPS)).clamp(max=1.0))

    def _mark_clipped(self, max_norm: float, post_clip_l2: torch.Tensor) -> None:
        slot = len(self._pending) - 1
        self._buffer[slot, -1] = post_clip_l2.to(self._device)
        step, present, numel, _ = self._pending[slot]
        self._pending[slot] = (step, present, numel, float(max_norm))

    # --- recording -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this monitor is closed; make a new GradientMonitor")

    def _follow_device(self) -> None:
        """A model moved after the monitor was made: flush what the old buffer holds, continue on the new device."""
        device = self._params[0].device
        if device != self._device:
            self.flush()
            self._device, self._buffer, self._before = device, None, None

    def _pick_up_joining(self) -> None:
        """Parameters unfrozen, or added to the model, since the monitor was made join it (those ``params``
        selects, if given): their earlier steps read as "no gradient". Costs one ``requires_grad`` read per
        frozen parameter, and a walk over the model's parameters only after a parameter or module was
        registered somewhere."""
        unfrozen = [n for n, p in self._frozen.items() if p.requires_grad]
        added: list[str] = []
        if _Registrations.count != self._registrations:
            self._registrations = _Registrations.count
            known = set(self.param_names) | set(self._frozen) | self._left_out
            for name, p in named_parameters(self.model):
                if name not in known:
                    if p.requires_grad:
                        added.append(name)
                    else:
                        self._frozen[name] = p
        if not unfrozen and not added:
            return
        patterns = self.config.params
        joining = {n for n in (*unfrozen, *added) if patterns is None or any(_matches(n, pat) for pat in patterns)}
        if joining:
            self.flush()  # the buffered steps keep the old rows; if it raises, nothing has changed yet
        for name in unfrozen:
            del self._frozen[name]
        self._left_out |= {n for n in (*unfrozen, *added) if n not in joining}
        if not joining:
            return
        monitored = set(self.param_names) | joining
        named = [(n, p) for n, p in named_parameters(self.model) if n in monitored]  # model order
        old = {n: i for i, n in enumerate(self.param_names)}
        self._chunks = [_widen(chunk, [old.get(n, -1) for n, _ in named]) for chunk in self._chunks]
        self.param_names = tuple(n for n, _ in named)
        self._params = [p for _, p in named]
        self._buffer, self._before = None, None

    def _still_scaled(self) -> bool:
        """True when the gradients are still multiplied by the GradScaler's scale (``scaler=`` given and
        ``unscale_`` not run yet); UsageError when some optimizers' gradients are unscaled and others not."""
        scaler = self._scaler
        if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
            return False
        from torch.amp.grad_scaler import OptState

        if self._optimizer is not None:
            unscaled = [scaler._per_optimizer_states.get(id(self._optimizer), {}).get("stage") == OptState.UNSCALED]
        else:  # the optimizers the scaler has seen this step
            unscaled = [state.get("stage") == OptState.UNSCALED for state in scaler._per_optimizer_states.values()]
        if unscaled and all(unscaled):
            return False  # scaler.unscale_ already ran: the gradients are true values
        if any(unscaled):
            raise UsageError("the GradScaler has unscaled the gradients of some optimizers but not of others; "
                             "pass the optimizer to the monitor (GradientMonitor(model, optimizer, scaler=scaler)) "
                             "so it knows which gradients it reads")
        return True

    def _unscale_factors(self) -> torch.Tensor:
        """What each statistic is multiplied by to undo the scale (exact: the scale is a power of two)."""
        inv = self._scaler._scale.to(device=self._device, dtype=torch.float64).reciprocal().reshape(())
        one = torch.ones((), dtype=torch.float64, device=self._device)
        return torch.stack([inv * inv, inv, inv, inv, one, one])

    def _stats(self, grads: list) -> tuple[torch.Tensor, Sequence[bool], Sequence[int]]:
        """The step's statistics table on the monitor's device, and which gradients were present, of what size."""
        stats = grad_stats(grads, backend=self.config.backend)  # the usual step (all dense, one device) is read in C++
        return stats.table.to(self._device), stats.present_host, stats.numel_host

    def _record(self, step: int, scaled: bool) -> None:
        self._follow_device()
        if self.mode == "sharded":
            grads = dist_utils.local_grads(self._params, self._fsdp1)
        else:
            grads = [p.grad for p in self._params]
        n = len(self._params)
        # the weights go through the same fused call as the gradients: one table, rows N.. are the weights
        weights = [p.detach() for p in self._params] if self.config.weight_norms else []
        table, present, numel = self._stats(grads + weights)
        table, weight_table, present, numel = table[:n], table[n:], present[:n], numel[:n]
        if scaled:
            table = table * self._unscale_factors()
        if len(self._pending) == self.config.flush_every:
            self.flush()  # before this step, so that clip_grad_norm_ finds the step in the buffer
        if self._buffer is None:
            self._columns = _buffer_columns(n, len(self._registered_blocks))
            shape = (self.config.flush_every, self._columns["post"].stop)
            self._buffer = torch.full(shape, math.nan, dtype=torch.float64, device=self._device)
        slot = len(self._pending)
        self._slot_table(slot).copy_(table)
        if weights:
            self._buffer[slot, self._columns["weight"]] = _finite_sumsq(weight_table)
        if self.config.update_ratios and self._optimizer is not None and self._sampled(self.config.update_ratios):
            self._keep_weights_before(slot, step)
        if self._act is not None:
            self._act.take(self._buffer[slot, self._columns["act"]])
        self._pending.append((step, present, numel, math.nan))
        for hook in self._record_hooks:
            hook(self, step)
        stops = self.config.on_nonfinite in ("raise", "skip") and self.mode != "sharded"
        if stops and bool(table[:, _NONFINITE].any()):  # the one host sync, paid only when asked for
            if self.config.on_nonfinite == "skip":
                self._skip(step, scaled)
                return
            self.flush(check=False)
            history = self._history()
            raise GradscopeError(describe_nonfinite(history, len(history) - 1))

    def _keep_weights_before(self, slot: int, step: int) -> None:
        """Copy the weights before the optimizer step (into the one copy kept) for the step's update ratio."""
        weights = [p.detach() for p in self._params]
        if self._before is None:
            self._before = [w.clone() for w in weights]
        else:
            torch._foreach_copy_(self._before, weights)
        self._update_slot = (slot, step)

    def _finish_update(self) -> None:
        """After the optimizer step: the sums of squares of W_after - W_before, from the copy kept, into the
        step's slot (dropped when a flush took the step to the host meanwhile)."""
        if self._update_slot is None:
            return
        slot, step = self._update_slot
        self._update_slot = None
        if slot >= len(self._pending) or self._pending[slot][0] != step:
            return
        torch._foreach_sub_(self._before, [p.detach() for p in self._params])  # in place: no second copy
        stats = grad_stats(self._before, backend=self.config.backend)
        self._buffer[slot, self._columns["update"]] = _finite_sumsq(stats.table.to(self._device))

    def _sampled(self, n: int, ahead: int = 0) -> bool:
        """Whether the monitor's step ``ahead`` of its count is one of every ``n`` recorded steps."""
        return (self._step_count + ahead) % (self.config.every * n) == 0

    def _act_armed(self) -> bool:
        """Whether the coming backward pass belongs to a step whose dL/dh is recorded."""
        return self.active and self._sampled(self.config.activation_grads, ahead=1)

    def _skip(self, step: int, scaled: bool) -> None:
        """Make the coming optimizer step a no-op: no gradient, no update (module docstring)."""
        self.skipped_steps.append(step)
        if scaled:
            return  # the GradScaler finds the same non-finite values and skips the step; it needs the gradients
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self._optimizer is not None:
            params += [p for group in self._optimizer.param_groups for p in group["params"]]
        for p in params:
            p.grad = None

    def _slot_table(self, slot: int) -> torch.Tensor:
        return self._buffer[slot, self._columns["table"]].view(len(self._params), len(STAT_NAMES))

    def flush(self, *, check: bool = True) -> int:
        """Copy the buffered steps to the host history (one transfer); return how many. 0 on an empty buffer.

        In sharded mode this is a collective: call it on every rank.
        """
        count = len(self._pending)
        if count == 0:
            return 0
        self._check_parameters()
        present = torch.tensor([p for _, p, _, _ in self._pending], dtype=torch.bool)
        numel = torch.tensor([n for _, _, n, _ in self._pending], dtype=torch.int64)
        shape = (count, len(self._params), len(STAT_NAMES))
        rows = self._buffer[:count]
        cols = self._columns
        if self.mode == "sharded":  # combined on the device, where the collective runs
            combined = dist_utils.combine(rows[:, cols["table"]].view(shape), numel.to(self._device),
                                          present.to(self._device))
            table, numel, present = (t.cpu() for t in combined)
            host = rows.to("cpu", copy=True)  # the other columns are NaN: no weights or activations when sharded
        else:  # one device-to-host copy; copy=True because on CPU .cpu() would alias the reused buffer
            host = rows.to("cpu", copy=True)
            table = host[:, cols["table"]].reshape(shape)
        post_col = host[:, -1]
        rows[:, cols["weight"].start:].fill_(math.nan)  # the optional records of the next steps start unrecorded
        max_norm = torch.tensor([c for _, _, _, c in self._pending], dtype=torch.float64)
        post = torch.where(max_norm.isnan(), torch.tensor(math.nan, dtype=torch.float64), post_col)
        steps = torch.tensor([s for s, _, _, _ in self._pending], dtype=torch.int64)
        self._chunks.append((steps, table, numel, present, post, max_norm, host[:, cols["weight"]],
                             host[:, cols["update"]], host[:, cols["act"]]))
        self._steps_recorded += count
        self._pending = []
        new = self._history(last_chunk=True)
        if check and self.config.on_nonfinite != "ignore":
            bad = (new.nonfinite().sum(-1) > 0).nonzero().flatten().tolist()
            if bad and self.config.on_nonfinite == "raise":
                raise GradscopeError(describe_nonfinite(new, bad[0]))
            skipped = set(self.skipped_steps)
            for t in bad:
                note = " The optimizer step was skipped." if int(new.steps[t]) in skipped else ""
                warnings.warn(describe_nonfinite(new, t) + note, RuntimeWarning, stacklevel=3)
        for sink in self._sinks:
            sink(new)
        self._trim()
        return count

    def _trim(self) -> None:
        """Drop the oldest host steps beyond ``keep_last``."""
        keep = self.config.keep_last
        if keep is None or sum(len(c[0]) for c in self._chunks) <= keep:
            return
        self._chunks = [tuple(torch.cat(column)[-keep:] for column in zip(*self._chunks))]

    def _check_parameters(self) -> None:
        current = dict(named_parameters(self.model))
        if any(current.get(n) is not p for n, p in zip(self.param_names, self._params)):
            self._pending = []
            raise UsageError(
                "the model's parameters were replaced after the monitor was made (FSDP wrapping, parameter "
                "surgery or load_state_dict(assign=True)); close this monitor and make a new one after the change"
            )

    # --- reading -------------------------------------------------------------------

    def _history(self, last_chunk: bool = False) -> MonitorHistory:
        if len(self._chunks) > 1 and not last_chunk:  # consolidate once, so later reads do not concatenate again
            self._chunks = [tuple(torch.cat(column) for column in zip(*self._chunks))]
        chunks = self._chunks[-1:] if last_chunk else self._chunks
        order = self._order.order()
        held = {block_of(n, order) for n in self.param_names}
        blocks = [b for b in order if b in held]  # a block without monitored parameters has nothing to show
        index = {b: i for i, b in enumerate(blocks)}
        param_block = [index.get(block_of(n, blocks), -1) for n in self.param_names]
        n = len(self.param_names)
        cat = lambda i, empty: chunks[0][i] if chunks else empty  # noqa: E731
        numel = cat(2, torch.zeros((0, n), dtype=torch.int64))
        present = cat(3, torch.zeros((0, n), dtype=torch.bool))
        return MonitorHistory(
            steps=cat(0, torch.zeros(0, dtype=torch.int64)),
            param_names=self.param_names,
            table=cat(1, torch.zeros((0, n, len(STAT_NAMES)), dtype=torch.float64)),
            numel=numel,
            present=present,
            post_clip_l2=cat(4, torch.zeros(0, dtype=torch.float64)),
            clip_max_norm=cat(5, torch.zeros(0, dtype=torch.float64)),
            blocks=tuple(blocks),
            param_block=torch.tensor(param_block, dtype=torch.int64),
            order_known=self._order.known,
            weight_sumsq=cat(6, torch.zeros((0, n), dtype=torch.float64)),
            update_sumsq=cat(7, torch.zeros((0, n), dtype=torch.float64)),
            act_grad_sumsq=cat(8, torch.zeros((0, len(self._registered_blocks)), dtype=torch.float64))[
                :, [self._registered_blocks.index(b) for b in blocks]],
        )

    @property
    def history(self) -> MonitorHistory:
        """Every recorded step (flushes the buffer first). UsageError when nothing was recorded yet."""
        self.flush()
        if not self._chunks:
            raise UsageError(self._empty_message())
        return self._history()

    def _empty_message(self) -> str:
        if not self.active:
            return "this rank does not record (DDP: rank 0 computes the statistics); read the history on rank 0"
        if self._step_count:
            return (f"no step recorded yet: {self._step_count} step(s) seen, every={self.config.every} "
                    "samples steps whose number is a multiple of it")
        if self._optimizer is not None:
            return ("no step recorded yet: the monitor records at each optimizer.step(); read it after the first "
                    "optimizer.step()")
        return ("no step recorded yet: call monitor.step() after loss.backward(), or pass the optimizer to the "
                "monitor so its step records automatically")

    def latest(self) -> dict:
        """The last recorded step as plain numbers.

        Keys: ``step``, ``global`` (L2 of all monitored gradients, before any clipping), ``post_clip`` and
        ``clip_max_norm`` (NaN unless the step was clipped: :meth:`clip_grad_norm_` or :meth:`note_clip`),
        ``nonfinite``, ``blocks`` ({block: L2, before any clipping}); ``global_weight_l2`` and ``weight_l2``
        ({block: L2 of the weights before the optimizer step}), ``global_update_ratio`` and ``update_ratio``
        ({block: ||W_after - W_before|| / ||W_before||}), ``act_grad_l2`` ({block: ||dL/dh|| at its output}):
        NaN unless ``weight_norms``, ``update_ratios``, ``activation_grads`` recorded them at that step.
        """
        self.flush()
        if not self._chunks:
            raise UsageError(self._empty_message())
        last = self._history(last_chunk=True).select(slice(-1, None))
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

    def report(self, meta: Optional[dict] = None, *, max_series_steps: Optional[int] = MAX_SERIES_STEPS):
        """A :class:`~gradscope.report.Report` with the time series (``series``) and the last step's tables.

        A long run's series keeps at most ``max_series_steps`` evenly spaced steps (``None``: all), plus the
        last, the one with the largest global norm and every one with non-finite values, so the report
        stays small (a 10,000-step run in full is about 40 MB of JSON) without hiding an incident.
        ``meta["series_steps"]`` says how many were kept; :attr:`history` holds them all. ``meta["steps_recorded"]``
        counts every recorded step, ``meta["steps_kept"]`` those ``keep_last`` left in :attr:`history`.
        """
        from .report import Report

        if max_series_steps is not None and (not isinstance(max_series_steps, int) or max_series_steps < 1):
            raise UsageError(f"max_series_steps must be None or a positive integer; got {max_series_steps!r}")

        history = self.history
        last = history.select(slice(-1, None))
        kept = series_positions(history, max_series_steps)
        rows = history.select(kept).rows()
        step = int(last.steps[0])
        param_l2 = last.param_l2()[0].tolist()
        nonfinite = last.nonfinite()[0].tolist()
        weight_l2 = last.weight_sumsq[0].sqrt().tolist()  # NaN: not recorded (weight_norms off)
        params = [{"name": n, "depth": int(last.param_block[i]) if last.param_block[i] >= 0 else None,
                   "variant": "training", "step": step,
                   "block": last.blocks[last.param_block[i]] if last.param_block[i] >= 0 else None,
                   "has_grad": bool(last.present[0, i]), "grad_l2": param_l2[i], "grad_nonfinite": nonfinite[i],
                   **({} if math.isnan(weight_l2[i]) else {"weight_l2": weight_l2[i]})}
                  for i, n in enumerate(history.param_names)]
        blocks = [{**{k: v for k, v in r.items() if k != "step"}, "variant": "training", "step": step}
                  for r in rows if r["step"] == step and r["block"] is not None]
        from . import __version__

        info = {"kind": "monitor", "gradscope": __version__, "torch": torch.__version__,
                "model": type(self.model).__name__, "steps_recorded": self._steps_recorded,
                "steps_kept": len(history), "series_steps": len(kept),
                "every": self.config.every, "distributed": self.mode, "block_order":
                "execution" if history.order_known else "registration",
                "frozen_params": len(self.frozen), **(meta or {})}
        return Report(meta=info, variants=[{"name": "training", "description": "gradients during training"}],
                      findings=nonfinite_findings(history, self._steps_recorded, self.skipped_steps)
                      + spike_findings(history) + training_flow_findings(rows, describe_architecture(self.model)),
                      blocks=blocks, params=params,
                      series=rows)

    # --- outputs -------------------------------------------------------------------

    def add_sink(self, sink: Callable[[MonitorHistory], None]) -> None:
        """Call ``sink(new_steps)`` with each flush's new steps (a :class:`MonitorHistory`)."""
        self._sinks.append(sink)

    def log_to(self, writer, *, histograms: bool = False, prefix: str = "gradscope") -> None:
        """Write per-block and global gradient norms at each flush to ``writer``: a TensorBoard
        ``SummaryWriter`` (anything with ``add_scalar``), or any callable ``writer(step, {key: value})``,
        called once per recorded step (keys: :mod:`gradscope.integrations.tensorboard`)::

            monitor.log_to(lambda step, d: wandb.log(d, step=step))

        ``histograms=True`` (SummaryWriter only) also writes one histogram per
        block at each recorded step; it copies those gradients to the host, so
        it costs what any histogram costs.
        """
        from .integrations.tensorboard import CallableSink, TensorBoardSink

        writes_scalars = hasattr(writer, "add_scalar")
        if not writes_scalars and not callable(writer):
            raise UsageError(f"log_to needs a SummaryWriter (with add_scalar) or a callable (step, dict); "
                             f"got {type(writer).__name__}")
        if histograms and not hasattr(writer, "add_histogram"):
            raise UsageError("histograms=True needs a writer with add_histogram (a TensorBoard SummaryWriter)")
        if histograms and self.mode == "sharded":
            raise UsageError("histograms of sharded gradients would show one rank's shards only; "
                             "use log_to(writer) without histograms under FSDP")
        sink = TensorBoardSink(writer, prefix=prefix) if writes_scalars else CallableSink(writer, prefix=prefix)
        self.add_sink(sink)
        if histograms:
            self._record_hooks.append(sink.write_histograms)

    def block_gradients(self) -> dict[str, list[torch.Tensor]]:
        """Current gradients grouped by block (execution order): what histograms are drawn from."""
        blocks = self._order.order()
        out: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
        for name, p in zip(self.param_names, self._params):
            block = block_of(name, blocks)
            if block is not None and p.grad is not None:
                out[block].append(p.grad)
        return out

    def drop_unflushed(self) -> int:
        """Drop the recorded steps not flushed yet; return how many. After an error in sharded mode, where
        the flush's collective may never be joined by the other processes, the history stops at the last flush."""
        count, self._pending = len(self._pending), []
        return count

    def close(self, *, flush: bool = True) -> None:
        """Flush, remove the hooks and release the model (a new monitor may then be attached).

        ``flush=False`` drops the steps not flushed yet (see :meth:`drop_unflushed`).
        """
        if self._closed:
            return
        try:
            if not flush:
                self.drop_unflushed()
            elif self.active or self.mode == "sharded":
                self.flush()
        finally:
            self._closed = True
            self._order.close()
            if self._act is not None:
                self._act.close()
            self._before = None
            for hook in self._hooks:
                hook.remove()
            if _ATTACHED.get(self.model) is not None and _ATTACHED[self.model]() is self:
                del _ATTACHED[self.model]

    def __enter__(self) -> "GradientMonitor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None or self.mode != "sharded")
