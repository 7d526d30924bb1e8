"""One forward and backward pass, and the statistics it leaves behind.

For a model, a list of batches and a loss function, :func:`measure` runs one
forward/backward per batch (gradients of the mean loss accumulate), then makes
one ``grad_stats`` call over all parameter gradients and one over all weights:
no per-parameter host sync. Hooks on each block (see :mod:`gradscope.blocks`)
record the execution order and reduce dL/dh, the gradient of the loss with
respect to the block's output, to its six statistics inside the hook, so no
activation is kept beyond what autograd itself holds.

The model is measured in eval mode, so that dropout is off (dropout modules,
and the functional dropout attention layers apply when ``training`` is set)
and variants differ only by their weights and architecture. BatchNorm layers
are the exception: they run in train mode, on batch statistics, as in
training. Modes, buffers and existing ``.grad`` are restored afterwards:
measuring a user's model leaves it as it was.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .blocks import clean_name, find_blocks, named_parameters, submodule
from .errors import GradscopeError
from .stats import GradStats, grad_stats

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class Measurement:
    """What one variant's forward/backward produced, on the host."""

    loss: float
    param_names: list[str]
    param_shapes: list[list[int]]
    grad: GradStats  # one row per trainable parameter; present False: no gradient
    weight: GradStats  # one row per trainable parameter
    blocks: list[str]  # in execution order; blocks the forward never reached are left out
    act_grad: GradStats  # dL/dh, one row per block in ``blocks``; present False: no gradient reached it
    act_nonfinite: list[int]  # non-finite elements in each block's forward output, per block in ``blocks``
    seconds: float
    norm_values: dict[str, int] = field(default_factory=dict)  # batch norm: fewest values per channel, by module


def first_tensor(output: Any) -> torch.Tensor | None:
    """The hidden state in a block's output: the tensor itself, or the first tensor of a tuple or dict."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):  # also transformers' ModelOutput
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


@contextlib.contextmanager
def _measurement_mode(model: nn.Module, params: Sequence[nn.Parameter]):
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    saved_grads = [p.grad for p in params]
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for name, value in buffers.items():
                model.get_buffer(name).copy_(value)
        for p, g in zip(params, saved_grads):
            p.grad = g


class _BlockRecorder:
    """Forward hooks that note execution order and hang a reducing hook on each block's output."""

    def __init__(self, model: nn.Module, blocks: list[str]):
        self.order: list[str] = []
        self.rows: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
        self.numel: dict[str, int] = {b: 0 for b in blocks}
        self.forward_nonfinite: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
        self.backend = "reference"  # of the grad_stats calls in the hooks; none ran when no gradient arrived
        self.handles = [submodule(model, b).register_forward_hook(self._forward_hook(b)) for b in blocks]

    def _forward_hook(self, block: str):
        def hook(module, inputs, output):
            if block not in self.order:
                self.order.append(block)
            hidden = first_tensor(output)
            if hidden is not None and hidden.is_floating_point():
                # A device-side count, read with everything else after the backward pass.
                self.forward_nonfinite[block].append((~torch.isfinite(hidden.detach())).sum())
            if hidden is not None and hidden.requires_grad and hidden.is_floating_point():
                hidden.register_hook(self._grad_hook(block))

        return hook

    def _grad_hook(self, block: str):
        def hook(grad: torch.Tensor):
            # Reduced here: the [6] row is all that outlives the backward pass.
            stats = grad_stats([grad])
            self.backend = stats.backend
            self.rows[block].append(stats.table[0])
            self.numel[block] += grad.numel()

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _device(self) -> torch.device:
        for rows in self.rows.values():
            if rows:
                return rows[0].device
        return torch.device("cpu")

    def result(self) -> GradStats:
        """dL/dh statistics per block in execution order, copied to the host once."""
        device = self._device()
        table, present = [], []
        for block in self.order:
            rows = self.rows[block]
            if rows:
                stacked = torch.stack([r.to(device) for r in rows])
                # Several calls (shared blocks, several batches): sums add, the max is the max.
                sums = stacked.sum(dim=0)
                sums[3] = stacked[:, 3].amax()
                table.append(sums)
            else:
                table.append(torch.zeros(6, dtype=torch.float64, device=device))
            present.append(bool(rows))
        host = torch.stack(table).cpu() if table else torch.zeros((0, 6), dtype=torch.float64)
        return GradStats(table=host, numel_host=tuple(self.numel[b] for b in self.order),
                         present_host=tuple(present), backend=self.backend)

    def forward_nonfinite_counts(self) -> list[int]:
        device = self._device()
        counts = [
            torch.stack([c.to(device) for c in self.forward_nonfinite[b]]).sum()
            if self.forward_nonfinite[b] else torch.zeros((), dtype=torch.int64, device=device)
            for b in self.order
        ]
        return torch.stack(counts).cpu().tolist() if counts else []


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters that require gradients; an error when there are none."""
    named = [(n, p) for n, p in named_parameters(model) if p.requires_grad]
    if not named:
        raise GradscopeError(
            "the model has no trainable parameters (all have requires_grad=False); "
            "unfreeze them (p.requires_grad_(True)) to analyze their gradients"
        )
    return named


def measure(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn, *, seed: int = 0,
            blocks: Optional[list[str]] = None) -> Measurement:
    """Forward and backward over ``batches``; statistics of the gradients of their mean loss.

    ``blocks`` names the modules that make the depth axis (default: :func:`gradscope.blocks.find_blocks`).
    ``loss_fn(model, batch)`` returns a scalar loss. Raises :class:`GradscopeError`
    when the model has no trainable parameters or the loss is not a scalar that
    depends on them. A NaN or infinite loss is measured as it is.
    """
    named = trainable_parameters(model)
    params = [p for _, p in named]
    blocks = find_blocks(model) if blocks is None else blocks
    start = time.perf_counter()
    recorder = _BlockRecorder(model, blocks)
    norm_values: dict[str, int] = {}
    recorder.handles += [  # removed with the recorder's own hooks
        module.register_forward_pre_hook(_count_norm_values(clean_name(name), norm_values))
        for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    try:
        with _measurement_mode(model, params):
            losses = []
            for batch in batches:
                torch.manual_seed(seed)  # anything random in the forward repeats exactly
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise GradscopeError("the loss function must return a scalar tensor")
                if not loss.requires_grad:
                    raise GradscopeError(
                        "the loss does not depend on any trainable parameter (it has no grad_fn); "
                        "check that the loss function runs the model"
                    )
                (loss / len(batches)).backward()
                losses.append(loss.detach())
            # A non-finite loss is measured, not refused: the analysis names where it began.
            mean_loss = float(torch.stack(losses).float().mean())  # the one sync of the loss
            grad = grad_stats([p.grad for p in params]).cpu()
            weight = grad_stats([p.detach() for p in params]).cpu()
    finally:
        recorder.close()
    act_grad = recorder.result()
    return Measurement(
        loss=mean_loss,
        param_names=[n for n, _ in named],
        param_shapes=[list(p.shape) for p in params],
        grad=grad,
        weight=weight,
        blocks=list(recorder.order),
        act_grad=act_grad,
        act_nonfinite=recorder.forward_nonfinite_counts(),
        seconds=time.perf_counter() - start,
        norm_values=norm_values,
    )


def _count_norm_values(name: str, counts: dict[str, int]):
    """A pre-hook noting how many values a batch norm averages per channel (batch x positions; shapes only)."""
    def hook(module, inputs):
        x = inputs[0]
        if x.dim() >= 2 and x.shape[1]:
            counts[name] = min(counts.get(name, x.numel()), x.numel() // x.shape[1])

    return hook
