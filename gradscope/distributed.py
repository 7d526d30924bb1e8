"""Statistics that are right under DDP, FSDP and DeepSpeed ZeRO.

- **DDP** (replicated parameters): after the backward pass every rank holds the
  same reduced gradients, so one rank (rank 0) computes the statistics and the
  others skip the work.
- **FSDP2 / DTensor** (sharded parameters): each rank sees its own shard. The
  fused op runs on the local shards and, once per flush, one collective
  (``all_gather`` of the buffered steps: each parameter's statistics, element
  count and presence, then the monitor's other sums of squares) brings every
  rank's rows together; sums and counts are added, ``maxabs`` takes the max.
  The result equals the unsharded model's statistics on every rank. (Shard-local
  norms, as some tools log them, are low by about sqrt(number of shards).)

  A dimension of the device mesh on which a gradient is ``Replicate`` (HSDP,
  tensor-parallel replicated weights) would be counted once per replica; only
  the replica at coordinate 0 contributes. Plain (non-DTensor) parameters of a
  sharded model are replicated, so only rank 0 counts them. ``Partial``
  gradients are refused: they are not reduced yet.

- **FSDP1** (``FullyShardedDataParallel``) with ``use_orig_params=True`` (the
  Hugging Face Trainer's default): each parameter's gradient is a flat view of
  the part of it in this rank's shard (or ``None`` when none is), so it is
  combined as a DTensor shard is. Under ``HYBRID_SHARD`` only the first replica
  group counts; ``NO_SHARD`` is replicated, as DDP. With flat parameters
  (``use_orig_params=False``) the gradients of single parameters do not exist:
  refused, with what to change.

- **DeepSpeed ZeRO** (stages 1, 2, 3): each rank reads its own partition of
  every gradient and fp32 master weight (:mod:`gradscope.zero`) and the flush
  combines them as FSDP shards; dL/dh is scaled as under FSDP below (DeepSpeed
  averages the gradients over the data-parallel ranks too).

- **Weights and updates under FSDP** (the monitor's ``weight_norms``,
  ``update_ratios``): each rank reads the part of each weight it counts, as
  for gradients (:func:`local_weights`), and the sums of squares of its
  weights and of its optimizer update travel in the flush's one collective
  (no other): a weight norm, or an update ratio ``sqrt(sum of the update's
  sums of squares) / sqrt(sum of the weights')`` taken after adding, is the
  unsharded model's.

- **dL/dh under FSDP** (``activation_grads``): activations are not sharded;
  each rank holds those of its own micro-batch. Assumed, as FSDP's training
  does: every rank of the process group is a data-parallel rank with a local
  batch of the same size, its loss is the mean over that batch, and FSDP
  averages the gradients over the ranks, so the loss trained is the mean of
  the ranks' losses, ``L = (1/W) sum_r L_r`` (``W`` ranks). On rank ``r``'s
  examples dL/dh is then ``dL_r/dh / W``, and over the global batch
  ``||dL/dh||**2 = (1/W**2) sum_r ||dL_r/dh||**2``: each rank scales its sum of
  squares by :func:`activation_sumsq_scale` and the collective adds them. The
  value is what one process computing the mean loss over the whole global
  batch would record. Whatever each ``L_r`` is, the value is that of
  ``(1/W) sum_r L_r``, the loss FSDP's averaged gradients belong to. (Under DDP
  rank 0 records its own micro-batch's dL_0/dh.)

Nothing here is imported by ``import gradscope``; ``torch.distributed`` is only
touched when it is initialized.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import zero
from .errors import UsageError
from .stats import Stat

MODES = ("auto", "none", "replicated", "sharded")


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else 0


def _dtensor_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(t) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def _fsdp1_units(model: nn.Module) -> list[nn.Module]:
    """The model's FSDP1 ``FullyShardedDataParallel`` modules (by name: nothing is imported for a plain model)."""
    units = [m for m in model.modules() if type(m).__name__ == "FullyShardedDataParallel"]
    if any(not unit._use_orig_params for unit in units):
        raise UsageError(
            "FSDP1 with `use_orig_params=False` keeps gradients in flat buffers, not per parameter; wrap the model "
            "with FullyShardedDataParallel(..., use_orig_params=True) (the Hugging Face Trainer's default: "
            "fsdp_config use_orig_params) or shard it with FSDP2 (torch.distributed.fsdp.fully_shard)"
        )
    return units


def fsdp1_counted(model: nn.Module) -> dict[int, bool]:
    """For each parameter an FSDP1 unit manages (by ``id``): whether this rank counts its local part.

    Every rank counts its shard, except that under ``HYBRID_SHARD`` (shards
    replicated across groups) only the first replica group does, and under
    ``NO_SHARD`` (whole gradients on every rank) only the unit's rank 0 does.
    """
    counted: dict[int, bool] = {}
    for unit in _fsdp1_units(model):
        if unit._handle is None:  # a unit without parameters of its own
            continue
        strategy = unit.sharding_strategy.name
        if strategy == "NO_SHARD":
            counts = unit.rank == 0
        elif "HYBRID" in strategy:
            counts = unit._inter_node_pg.rank() == 0
        else:
            counts = True
        for p in unit._handle.flat_param._params:
            counted[id(p)] = counts
    return counted


def is_sharded(model: nn.Module) -> bool:
    """Whether each rank holds only part of the gradients (FSDP2/DTensor, FSDP1 other than NO_SHARD,
    DeepSpeed ZeRO)."""
    return (any(is_dtensor(p) for p in model.parameters())
            or any(unit.sharding_strategy.name != "NO_SHARD" for unit in _fsdp1_units(model))
            or zero.manages(model))


def resolve_mode(model: nn.Module, requested: str, *, zero_engine: bool = False) -> str:
    """``none``, ``replicated`` (DDP: rank 0 computes) or ``sharded`` (FSDP, DTensor, DeepSpeed ZeRO:
    combine at flush).

    A model whose parameters DeepSpeed ZeRO manages is read through its engine (``zero_engine``: the
    monitor has it); without it, UsageError rather than a run of NaN.
    """
    if requested not in MODES:
        raise UsageError(f"`distributed` must be one of {', '.join(MODES)}; got {requested!r}")
    if zero.manages(model) and not zero_engine:
        raise UsageError(zero.NEEDS_ENGINE)
    sharded = is_sharded(model)
    if requested == "auto":
        if sharded:
            return "sharded"
        return "replicated" if world_size() > 1 else "none"
    if requested == "sharded" and not sharded:
        raise UsageError(
            "`distributed='sharded'` but the model is not sharded (no DTensor parameter, no sharding FSDP1 unit); "
            "shard the model (fully_shard) before making the monitor, or use `distributed='replicated'` for DDP"
        )
    if requested != "none" and world_size() == 1 and requested != "sharded":
        return "none"
    return requested


def _owns_replicas(t) -> bool:
    """False when this rank is a non-first replica on some mesh dimension (its values are counted elsewhere)."""
    from torch.distributed.tensor import Partial, Replicate

    coordinate = t.device_mesh.get_coordinate()
    for dim, placement in enumerate(t.placements):
        if isinstance(placement, Partial):
            raise UsageError(
                "a gradient is a DTensor with a Partial placement (not reduced yet); measure after the "
                "gradient reduction, e.g. in the optimizer's step"
            )
        if isinstance(placement, Replicate) and coordinate is not None and coordinate[dim] != 0:
            return False
    return True


def _counted_part(t: torch.Tensor, counts_plain: bool) -> torch.Tensor:
    """The part of ``t`` this rank counts: a DTensor's local shard (empty on a non-first replica), a plain
    tensor whole where ``counts_plain``, else an empty tensor (it adds nothing)."""
    if is_dtensor(t):
        local = t.to_local()
        return local if _owns_replicas(t) else local.new_empty(0)
    return t if counts_plain else t.new_empty(0)


def local_grads(params: list[nn.Parameter], fsdp1: dict[int, bool]) -> list[Optional[torch.Tensor]]:
    """The part of each gradient this rank counts: its DTensor shard, its FSDP1 shard (``fsdp1``: see
    :func:`fsdp1_counted`), or the whole tensor on rank 0 only.

    A gradient this rank must not count becomes an empty tensor (it adds nothing);
    ``None`` stays ``None`` (no gradient on this rank).
    """
    me = rank()
    return [None if p.grad is None else _counted_part(p.grad, fsdp1.get(id(p), me == 0)) for p in params]


def local_weights(params: list[nn.Parameter], fsdp1: dict[int, bool]) -> list[torch.Tensor]:
    """The part of each weight this rank counts, detached, as :func:`local_grads` counts gradients: a
    DTensor's local shard, FSDP1's flat view of the part in this rank's shard (empty where none is; read
    between the backward pass and the next forward, when FSDP1 holds its parameters sharded), or the whole
    tensor on rank 0 only. Views, not copies: an in-place optimizer step shows in them."""
    me = rank()
    return [_counted_part(p.detach(), fsdp1.get(id(p), me == 0)) for p in params]


def activation_sumsq_scale(mode: str) -> float:
    """The factor that makes a rank's sum of squares of dL_r/dh at a block's output its share of the global
    loss's, so that the collective's sum is ``||dL/dh||**2`` over the global batch: ``1/W**2`` in sharded
    mode (see this module's docstring for the assumption), 1 otherwise (one process's own loss and batch;
    under DDP, rank 0's)."""
    return 1.0 / world_size() ** 2 if mode == "sharded" else 1.0


def combine(table: torch.Tensor, numel: torch.Tensor, present: torch.Tensor,
            sums: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """Sum rows over ranks (max for ``maxabs``) with one ``all_gather``: the unsharded statistics on every rank.

    ``table`` is ``[steps, params, 6]`` float64 (columns ``STAT_NAMES``), ``numel``
    ``[steps, params]`` int64 (local elements), ``present`` ``[steps, params]`` bool;
    ``sums`` ``[steps, K]`` float64 (default ``K = 0``): other per-step values each rank holds a part of
    (the sums of squares of weights, updates and dL/dh), added over the ranks in the same collective (NaN,
    "not recorded" or non-finite on a rank, stays NaN). Returns the combined ``table``, ``numel``,
    ``present`` and ``sums``.
    """
    steps, params = numel.shape
    if sums is None:
        sums = table.new_zeros((steps, 0))
    n = len(Stat)
    per_param = torch.cat([table, numel.unsqueeze(-1).to(table), present.unsqueeze(-1).to(table)], dim=-1)
    width = params * (n + 2)  # the per-parameter columns of a payload row; the sums follow them
    payload = torch.cat([per_param.reshape(steps, width), sums.to(table)], dim=-1).contiguous()
    world = world_size()
    flat = torch.empty((world * steps, payload.shape[1]), dtype=payload.dtype, device=payload.device)
    # torch >= 2.13 names it all_gather_single and deprecates the older name
    gather = getattr(torch.distributed, "all_gather_single", None) or torch.distributed.all_gather_into_tensor
    gather(flat, payload)
    gathered = flat.view(world, steps, -1)
    summed = gathered.sum(dim=0)
    combined = summed[:, :width].reshape(steps, params, n + 2)
    combined[..., Stat.MAXABS] = gathered[:, :, :width].reshape(world, steps, params, n + 2)[..., Stat.MAXABS].amax(0)
    return combined[..., :n], combined[..., n].round().to(torch.int64), combined[..., n + 1] > 0, summed[:, width:]
