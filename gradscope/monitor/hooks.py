"""What a monitor hangs on the model's blocks: forward pre-hooks that see the order in which the blocks run
(:class:`ExecutionOrder`), and, with ``activation_grads``, the gradient hooks that reduce dL/dh at each block's
output (:class:`OutputGradients`; see "dL/dh" in :mod:`gradscope.monitor`); and what it, or a training callback,
puts in place of one instance's method (:class:`InstanceWrap`: a DeepSpeed engine's ``step``, a trainer's clip)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..blocks import submodule
from ..measure import first_tensor
from ..stats import grad_stats
from .recording import finite_sumsq


class ExecutionOrder:
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


class OutputGradients:
    """``activation_grads``: forward hooks that hang, while ``armed()``, a gradient hook on each block's output
    (the first tensor, as :mod:`gradscope.measure` reads it); the hook reduces dL/dh to its sum of squares on
    the device and adds it to the block's entry (several runs of a block, micro-batches of one step): no
    activation is kept, nothing waits for the device. A block run again in the backward pass (activation
    checkpointing) gets its hook there too, on the run whose output the gradient reaches.

    ``sumsq_scale`` multiplies each sum of squares as it arrives: under FSDP ``1/W**2``
    (:func:`gradscope.distributed.activation_sumsq_scale`), which turns this rank's ``||dL_r/dh||**2`` of its
    own loss and micro-batch into its share of ``||dL/dh||**2`` of the global (mean over the ranks) loss over
    the global batch; the flush's collective adds the shares."""

    def __init__(self, model: nn.Module, blocks: list[str], armed: Callable[[], bool], backend: str,
                 sumsq_scale: float = 1.0):
        # armed() is read at every forward of a block (the monitor's active flag and its sampling)
        self._armed, self._backend, self._sumsq_scale = armed, backend, sumsq_scale
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
            value = finite_sumsq(grad_stats([grad], backend=self._backend).table)[0]
            if self._sumsq_scale != 1.0:
                value = value * self._sumsq_scale
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


class InstanceWrap:
    """``owner.name = wrapper`` on the instance, undone by :meth:`remove` (as a hook handle is): what was there
    before comes back, unless something replaced the wrapper meanwhile."""

    def __init__(self, owner, name: str, wrapper: Callable):
        self._owner, self._name, self._wrapper = owner, name, wrapper
        self._had = name in vars(owner)
        self._before = vars(owner).get(name)
        setattr(owner, name, wrapper)

    def remove(self) -> None:
        if vars(self._owner).get(self._name) is not self._wrapper:
            return
        if self._had:
            setattr(self._owner, self._name, self._before)
        else:
            delattr(self._owner, self._name)
