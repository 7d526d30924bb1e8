"""DeepSpeed ZeRO (stages 1, 2 and 3): where this rank's part of every gradient and weight lies.

Between ``engine.backward`` and ``engine.step``, ``param.grad`` is None at every ZeRO stage: the reduced,
averaged gradient lives in the ZeRO optimizer's partitions, each rank holding its own contiguous part of
the flattened parameters. The monitor reads those parts as it reads FSDP shards (:mod:`gradscope.distributed`):
the fused op runs on this rank's parts and the flush's one collective adds the ranks' rows, so the values
are the unsharded model's. No gradient is gathered.

- **ZeRO-1 and 2**: a parameter's ``_hp_mapping`` (None where this rank holds none of it) names its
  fragment: the gradient (``get_lp_grad_fragment``) and the fp32 master weights (``hp_fragment``).
- **ZeRO-3**: the optimizer's ``get_fp32_grad_partitions()`` (one call a step, one stream sync) holds each
  parameter's partition of the gradient, ``fp32_partitioned_groups_flat`` its fp32 master weights
  (``grad_position`` says where). The last rank's partition is padded: only the parameter's own elements
  are read.
- **Precision**: the statistics are of the gradient the optimizer applies. Under fp16 DeepSpeed's loss
  scale (``optimizer.loss_scale``, read before the step) is divided out of the statistics on the device;
  bf16 and fp32 gradients are read as DeepSpeed accumulates them. Weights are the fp32 master copy the
  optimizer updates, so an update ratio is that of the master weights.
- **ZeRO-Offload** (``offload_optimizer`` on the CPU, and ZeRO-3's ``offload_param``): the parts are read
  where DeepSpeed keeps them, in its CPU buffers (the compiled CPU kernel reads them there).
- **Not read**: the optimizer swapped out to NVMe (ZeRO-Infinity) and partitions smaller than the
  data-parallel group (ZeRO++ hpZ, MiCS), where one part is held by several ranks: refused, with what to
  change.

Nothing here imports deepspeed: the engine and its optimizer are read through their attributes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .errors import UsageError

# Attributes DeepSpeed puts on the parameters it manages: ZeRO-3's partitioned ones (ds_id, ds_tensor), and
# ZeRO-1/2's, whose gradients live in the optimizer's flat buffers (_hp_mapping).
_MARKS = ("ds_id", "ds_tensor", "_hp_mapping")

NEEDS_ENGINE = (
    "the model's parameters are managed by DeepSpeed ZeRO, whose gradients are not in param.grad: pass the "
    "engine deepspeed.initialize returned (GradientMonitor(engine)), or, with the Hugging Face Trainer, "
    "add_gradscope_callback(trainer)")


def manages(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO manages the model's parameters: their gradients are then not in ``.grad``."""
    return any(hasattr(p, mark) for p in model.parameters() for mark in _MARKS)


def is_engine(obj) -> bool:
    """Whether ``obj`` is a ``DeepSpeedEngine`` (or a subclass), by class name: deepspeed is not imported."""
    return any(cls.__name__ == "DeepSpeedEngine" for cls in type(obj).__mro__)


class ZeroParts:
    """This rank's parts of the monitored parameters' gradients and fp32 weights under ZeRO ``stage`` 1-3.

    ``ZeroParts.of(engine, params)`` checks what can be read; :meth:`grads` is valid between the backward
    pass that ends an accumulation cycle and ``engine.step``, :meth:`weights` at any time (views of the
    master weights: an optimizer step shows in them).
    """

    def __init__(self, optimizer, params: list[nn.Parameter], stage: int, where: Optional[list] = None,
                 parts_device: Optional[torch.device] = None):
        self.optimizer = optimizer
        self.params = params
        self.stage = stage
        self._parts_device = parts_device  # None: each parameter's own device
        self._where = where  # ZeRO-3: each parameter's (group, index) in the optimizer's fp16_groups
        self._valid = [self._own_elements(p) for p in params] if stage == 3 else None

    @classmethod
    def of(cls, engine, params: list[nn.Parameter]) -> "ZeroParts":
        """The parts of ``params`` under ``engine``; UsageError where gradscope cannot read them."""
        stage = engine.zero_optimization_stage()
        if stage == 0:
            raise UsageError("this DeepSpeed engine keeps its gradients in its bf16 optimizer's buffers without "
                             "ZeRO, which gradscope does not read; run with ZeRO stage 1, 2 or 3 "
                             "(`zero_optimization.stage`)")
        if engine.zero_use_cpu_optimizer() and not engine.zero_cpu_offload():
            raise UsageError("DeepSpeed ZeRO-Infinity swaps the optimizer's fp32 partitions out to NVMe, where "
                             "gradscope cannot read them; monitor with `offload_optimizer` on the CPU or none")
        optimizer = engine.optimizer
        if stage == 3:
            where = {id(p): (g, i) for g, group in enumerate(optimizer.fp16_groups) for i, p in enumerate(group)}
            trained = [id(p) in where for p in params]
            groups = [p.ds_process_group for p in params if id(p) in where]
        else:
            trained = [hasattr(p, "_hp_mapping") for p in params]
            groups = [p._dp_group for p in params if getattr(p, "_hp_mapping", None) is not None]
        if not all(trained):
            raise UsageError("a monitored parameter is not trained by the DeepSpeed optimizer (frozen when the "
                             "engine was made?); monitor the parameters the engine trains (`params`)")
        world = torch.distributed.get_world_size()
        if any(torch.distributed.get_world_size(group=group) != world for group in groups):
            raise UsageError("DeepSpeed partitions these parameters over fewer ranks than the run has "
                             "(ZeRO++ hpZ or MiCS), so each part is held more than once; gradscope reads "
                             "ZeRO partitioned over all ranks: monitor without `zero_hpz_partition_size` or "
                             "`mics_shard_size`")
        # ZeRO-Offload keeps the gradient and weight parts with the optimizer on the CPU: the empty part of a
        # parameter this rank holds none of lies there too, so that every part is on one device
        parts_device = torch.device("cpu") if engine.zero_cpu_offload() else None
        return cls(optimizer, params, stage, [where[id(p)] for p in params] if stage == 3 else None, parts_device)

    @staticmethod
    def _own_elements(p: nn.Parameter) -> int:
        """ZeRO-3: how many of this rank's partition of ``p`` are ``p``'s elements (the rest is padding)."""
        size = p.partition_numel()
        start = torch.distributed.get_rank(group=p.ds_process_group) * size
        return max(0, min(size, p.ds_numel - start))

    def grads(self) -> list[torch.Tensor]:
        """This rank's part of each gradient, flat (empty where it holds none), as DeepSpeed keeps it: under
        fp16 still multiplied by the loss scale (:func:`loss_scale`)."""
        if self.stage == 3:
            partitions = self.optimizer.get_fp32_grad_partitions()
            return [partitions[g][i].narrow(0, 0, n) for (g, i), n in zip(self._where, self._valid)]
        return [self._fragment_grad(p) for p in self.params]

    def _nothing(self, p: nn.Parameter) -> torch.Tensor:
        """The part of a parameter this rank holds none of: empty, where the other parts are."""
        return torch.empty(0, dtype=torch.float32, device=self._parts_device or p.device)

    def _fragment_grad(self, p: nn.Parameter) -> torch.Tensor:
        mapping = p._hp_mapping
        if mapping is None:
            return self._nothing(p)
        try:
            grad = mapping.get_lp_grad_fragment(p._index_in_param_group).reshape(-1)
        except ValueError as exc:  # DeepSpeed's own: no gradient outside backward..step
            raise UsageError("the DeepSpeed gradients are read between the backward pass that ends an "
                             "accumulation cycle and engine.step(); GradientMonitor(engine) records there "
                             "by itself") from exc
        address = mapping.lp_fragment_address
        if grad.numel() == p.numel() and address.numel != p.numel():  # a whole accumulation buffer (bf16)
            grad = grad.narrow(0, address.start, address.numel)
        return grad

    def weights(self) -> list[torch.Tensor]:
        """This rank's part of each fp32 master weight, flat (empty where it holds none): detached views (the
        master weights are parameters of DeepSpeed's optimizer, which autograd would otherwise follow)."""
        if self.stage == 3:
            flat, position = self.optimizer.fp32_partitioned_groups_flat, self.optimizer.grad_position
            out = []
            for p, n in zip(self.params, self._valid):
                group, offset, _ = position[self.optimizer.get_param_id(p)]
                out.append(flat[group].detach().narrow(0, offset, n))
            return out
        return [self._nothing(p) if p._hp_mapping is None else p._hp_mapping.hp_fragment.detach()
                for p in self.params]


def loss_scale(engine, device: torch.device) -> Optional[torch.Tensor]:
    """The fp16 loss scale the engine's gradients still carry before its step, as a 0-dim float64 tensor on
    ``device``, or None where they carry none (bf16, fp32). DeepSpeed's fp16 optimizers (ZeRO's and the one
    without ZeRO) name it ``loss_scale`` (None where it scales nothing); a client optimizer has none."""
    scale = getattr(engine.optimizer, "loss_scale", None)
    if scale is None or (not torch.is_tensor(scale) and float(scale) == 1.0):
        return None
    return torch.as_tensor(scale, dtype=torch.float64).to(device)
