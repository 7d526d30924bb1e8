"""One forward and backward pass, and the statistics it leaves behind.

For a model, a list of batches and a loss function, :func:`measure` runs one
forward/backward per batch (gradients of the mean loss accumulate), then makes
one ``grad_stats`` call over all parameter gradients and one over all weights:
no per-parameter host sync. Hooks on each block (see :mod:`gradscope.blocks`)
record the execution order and reduce dL/dh, the gradient of the loss with
respect to the block's output, to its six statistics inside the hook, so no
activation is kept beyond what autograd itself holds. A block that runs
several times in one forward pass, each run on the output before it (a layer
whose weights are shared across depth), gives one depth position per run.

The model is measured in eval mode, so that dropout is off (dropout modules,
and the functional dropout attention layers apply when ``training`` is set)
and variants differ only by their weights and architecture. BatchNorm layers
are the exception: they run in train mode, on batch statistics, as in
training. Modes, buffers and existing ``.grad`` are restored afterwards:
measuring a user's model leaves it as it was.

Two more reductions follow the backward pass, each one batched reduction per
tensor on its device and one copy to the host: the *dead units* of each Linear
and convolution weight (output units whose gradient row, or output channel, is
exactly zero: :func:`dead_units`), and each weight's smallest and largest entry
(a tensor that is constant, as a fresh normalization weight or bias is, has the
two equal).
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .blocks import clean_name, find_blocks, has_parameters, is_norm, named_parameters, submodule
from .errors import GradscopeError
from .stats import GradStats, Stat, grad_stats

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class Measurement:
    """What one variant's forward/backward produced, on the host."""

    loss: float
    param_names: list[str]
    param_shapes: list[list[int]]
    grad: GradStats  # one row per trainable parameter; present False: no gradient
    weight: GradStats  # one row per trainable parameter
    blocks: list[str]  # in execution order, those the forward reached; block#k: run k of a repeated one
    act_grad: GradStats  # dL/dh, one row per block in ``blocks``; present False: no gradient reached it
    act_nonfinite: list[int]  # non-finite elements in each block's forward output, per block in ``blocks``
    seconds: float
    norm_values: dict[str, int] = field(default_factory=dict)  # batch norm: fewest values per channel, by module
    repeated: dict[str, int] = field(default_factory=dict)  # unrolled blocks: runs per forward pass (block#k in blocks)
    # per trainable parameter: output units of a Linear/convolution weight, None for any other parameter ...
    units: list[Optional[int]] = field(default_factory=list)
    # ... of which got an all-zero gradient (see dead_units); None for other parameters and those without a gradient
    dead_units: list[Optional[int]] = field(default_factory=list)
    weight_range: list[tuple[float, float]] = field(default_factory=list)  # per parameter: (min, max) of its entries


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
    """Forward hooks that note execution order and hang a reducing hook on each block's output.

    A block that runs several times in one forward pass, each run on the output
    of the block that ran just before it (itself: ALBERT's shared layer group, a
    recurrent cell; or the other layers of a repeated group), or on a value a
    few operations from it (``norm(h + cell(h))``), is *unrolled*: each run is a
    depth position of its own, named ``block#k`` (``#0`` nearest the input).
    Runs that are not chained so (one encoder applied to two inputs) are summed
    into one position, as several batches are. With ``record`` False only the
    runs are followed (no statistics: the search of :func:`repeated_blocks`).
    """

    RECOMPUTED = -1  # the run of a block re-run in the backward pass (reentrant activation checkpointing)

    def __init__(self, model: nn.Module, blocks: list[str], record: bool = True):
        self.record = record
        self.order: list[tuple[str, int]] = []  # (block, run) in execution order
        self.rows: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.numel: dict[tuple[str, int], int] = {}
        self.forward_nonfinite: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.runs: dict[str, int] = {}  # runs in the current forward pass
        self.chained = {b: True for b in blocks}  # every later run took the output of the block run before it
        self._previous: Optional[torch.Tensor] = None  # the output of the block run that ended last
        self._before: dict[str, Optional[torch.Tensor]] = {}  # ... when each running block started
        self._in_forward = False
        self.backend = "reference"  # of the grad_stats calls in the hooks; none ran when no gradient arrived
        self.handles = []
        for block in blocks:
            module = submodule(model, block)
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(block)))
            self.handles.append(module.register_forward_hook(self._forward_hook(block), with_kwargs=True))

    def start_forward(self) -> None:
        self.runs, self._previous, self._before = {}, None, {}
        self._in_forward = True

    def end_forward(self) -> None:
        self._previous, self._before = None, {}  # hold no activation into the backward pass
        self._in_forward = False

    def _pre_hook(self, block: str):
        def hook(module, args):
            if self._in_forward:  # blocks nest: what ran before this one is fixed when it starts
                self._before[block] = self._previous

        return hook

    def _forward_hook(self, block: str):
        def hook(module, args, kwargs, output):
            if not self._in_forward:  # re-run in the backward pass: its output is where dL/dh arrives
                self._recomputed(block, output)
                return
            run = self.runs.get(block, 0)
            self.runs[block] = run + 1
            if run and not _takes(self._before.pop(block, None), args, kwargs):
                self.chained[block] = False
            key = (block, run)
            if key not in self.rows:
                self.order.append(key)
                self.rows[key], self.numel[key], self.forward_nonfinite[key] = [], 0, []
            hidden = first_tensor(output)
            if hidden is None or not hidden.is_floating_point():
                return
            self._previous = hidden
            if not self.record:
                return
            # A device-side count, read with everything else after the backward pass.
            self.forward_nonfinite[key].append((~torch.isfinite(hidden.detach())).sum())
            if hidden.requires_grad:
                hidden.register_hook(self._grad_hook(key))

        return hook

    def _recomputed(self, block: str, output) -> None:
        """A block run again in the backward pass (reentrant checkpointing ran it without gradients before):
        its dL/dh counts toward the block, but not toward any one run of a repeated block."""
        hidden = first_tensor(output)
        key = (block, self.RECOMPUTED)
        self.rows.setdefault(key, [])
        self.numel.setdefault(key, 0)
        if hidden is not None and hidden.is_floating_point() and hidden.requires_grad:
            hidden.register_hook(self._grad_hook(key))

    def _grad_hook(self, key: tuple[str, int]):
        def hook(grad: torch.Tensor):
            # Reduced here: the [6] row is all that outlives the backward pass.
            stats = grad_stats([grad])
            self.backend = stats.backend
            self.rows[key].append(stats.table[0])
            self.numel[key] += grad.numel()

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def unrolled(self) -> dict[str, int]:
        """The blocks whose runs are depth positions, with their number of runs in one forward pass.

        The outermost blocks that run more than once (those inside them run with them) are unrolled when
        every one of them is chained: in a siamese encoder the first layer's second run starts afresh, so
        the second runs of the layers after it, though each takes the output before it, are no deeper.
        """
        runs: dict[str, int] = {}
        for block, run in self.order:
            runs[block] = max(runs.get(block, 0), run + 1)
        repeated = [b for b, n in runs.items() if n > 1]
        outermost = [b for b in repeated if not any(b.startswith(outer + ".") for outer in repeated)]
        if not all(self.chained[b] for b in outermost):
            return {}
        return {b: runs[b] for b in outermost}

    def positions(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """The depth axis: (name, the recorded (block, run) keys it sums), in execution order."""
        unrolled = self.unrolled()
        merged: dict[str, list[tuple[str, int]]] = {}
        for block, run in self.order:
            name = f"{block}#{run}" if block in unrolled else block
            merged.setdefault(name, []).append((block, run))
            if block not in unrolled and run == 0 and (block, self.RECOMPUTED) in self.rows:
                merged[name].append((block, self.RECOMPUTED))
        return list(merged.items())

    def _device(self) -> torch.device:
        for rows in self.rows.values():
            if rows:
                return rows[0].device
        return torch.device("cpu")

    def result(self) -> tuple[list[str], GradStats, list[int]]:
        """The depth axis in execution order, dL/dh statistics per position and the non-finite elements
        of each position's forward output, copied to the host once each."""
        device = self._device()
        names, table, present, numel, nonfinite = [], [], [], [], []
        for name, keys in self.positions():
            names.append(name)
            rows = [r.to(device) for key in keys for r in self.rows[key]]
            if rows:
                stacked = torch.stack(rows)
                # Several runs (a repeated block's summed runs, several batches): sums add, the max is the max.
                sums = stacked.sum(dim=0)
                sums[Stat.MAXABS] = stacked[:, Stat.MAXABS].amax()
                table.append(sums)
            else:
                table.append(torch.zeros(len(Stat), dtype=torch.float64, device=device))
            present.append(bool(rows))
            numel.append(sum(self.numel[key] for key in keys))
            found = [c.to(device) for key in keys for c in self.forward_nonfinite.get(key, [])]
            nonfinite.append(torch.stack(found).sum() if found else torch.zeros((), dtype=torch.int64, device=device))
        host = torch.stack(table).cpu() if table else torch.zeros((0, len(Stat)), dtype=torch.float64)
        act_grad = GradStats(table=host, numel_host=tuple(numel), present_host=tuple(present), backend=self.backend)
        return names, act_grad, torch.stack(nonfinite).cpu().tolist() if nonfinite else []


_GRAPH_NODES = 16  # autograd nodes searched back from an input: a residual add and a norm, not another branch


def _takes(previous: Optional[torch.Tensor], args: tuple, kwargs: dict) -> bool:
    """Whether a call's arguments (or the tuples, lists and dicts among them) are ``previous``, or were
    computed from it a few operations back (``h + cell(h)``: a residual around the repeated block)."""
    if previous is None:
        return False
    tensors = []
    for value in (*args, *kwargs.values()):
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (value,)
        tensors += [item for item in items if isinstance(item, torch.Tensor)]
    if any(t is previous for t in tensors):
        return True
    target = previous.grad_fn
    if target is None:  # no graph (a forward without gradients): only the tensor itself
        return False
    queue = collections.deque(t.grad_fn for t in tensors if t.grad_fn is not None)
    seen: set = set()
    while queue and len(seen) < _GRAPH_NODES:  # breadth first: the nearest operations before the call
        node = queue.popleft()
        if node is target:
            return True
        if node not in seen:
            seen.add(node)
            queue.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False


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

    ``blocks`` names the modules that make the depth axis (default: :func:`depth_axis`
    on the first batch). ``loss_fn(model, batch)`` returns a scalar loss. Raises
    :class:`GradscopeError` when the model has no trainable parameters or the loss
    is not a scalar that depends on them. A NaN or infinite loss is measured as it is.
    """
    named = trainable_parameters(model)
    params = [p for _, p in named]
    blocks = depth_axis(model, batches[0], loss_fn, seed) if blocks is None else blocks
    start = time.perf_counter()
    norm_values: dict[str, int] = {}
    with _measurement_mode(model, params):
        recorder = _BlockRecorder(model, blocks)
        recorder.handles += [  # removed with the recorder's own hooks
            module.register_forward_pre_hook(_count_norm_values(clean_name(name), norm_values))
            for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
        try:
            losses = []
            for batch in batches:
                torch.manual_seed(seed)  # anything random in the forward repeats exactly
                recorder.start_forward()
                loss = loss_fn(model, batch)
                recorder.end_forward()
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
            # the one sync of the loss, in float64: a float64 loss beyond float32's range stays finite
            mean_loss = float(torch.stack(losses).double().mean())
            grad = grad_stats([p.grad for p in params]).cpu()
            weight = grad_stats([p.detach() for p in params]).cpu()
            unit_weights = unit_weight_flags(model, [name for name, _ in named])
            dead = dead_units([p.grad for p in params], unit_weights)
            weight_range = weight_ranges(params)
        finally:
            recorder.close()
    positions, act_grad, act_nonfinite = recorder.result()
    return Measurement(
        loss=mean_loss,
        param_names=[n for n, _ in named],
        param_shapes=[list(p.shape) for p in params],
        grad=grad,
        weight=weight,
        blocks=positions,
        act_grad=act_grad,
        act_nonfinite=act_nonfinite,
        seconds=time.perf_counter() - start,
        norm_values=norm_values,
        repeated=recorder.unrolled(),
        units=[p.shape[0] if unit else None for p, unit in zip(params, unit_weights)],
        dead_units=dead,
        weight_range=weight_range,
    )


# Layers whose weight holds one row per output unit: [out, in] and [out, in/groups, *kernel]. A transposed
# convolution's weight is [in, out/groups, *kernel], and GPT-style Conv1D's [in, out]: they are not counted.
_UNIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unit_weight_flags(model: nn.Module, names: Sequence[str]) -> list[bool]:
    """For each clean parameter name: whether it is the weight of a Linear or (not transposed) convolution."""
    layers = {clean_name(n): m for n, m in model.named_modules()}  # a wrapped layer: the layer itself, named last
    flags = []
    for name in names:
        owner, _, leaf = name.rpartition(".")
        flags.append(leaf == "weight" and isinstance(layers.get(owner), _UNIT_LAYERS))
    return flags


def dead_units(grads: Sequence[Optional[torch.Tensor]], unit_weights: Sequence[bool]) -> list[Optional[int]]:
    """Per gradient: how many output units have an all-zero gradient row (a Linear weight's row, a
    convolution weight's output channel); None where ``unit_weights`` is False or there is no gradient.

    For a Linear or convolution followed (through a norm, if any) by a ReLU, such a unit is one whose
    activation was zero for every sample of the batch: the ReLU passed it no gradient, so its weights learn
    nothing from this batch. Counted on the devices of the gradients, copied to the host once.

    >>> dead_units([torch.tensor([[0.0, 0.0], [1.0, 0.0]]), None], [True, True])
    [1, None]
    """
    counted = [i for i, (g, unit) in enumerate(zip(grads, unit_weights)) if unit and g is not None]
    result: list[Optional[int]] = [None] * len(grads)
    if not counted:
        return result
    device = grads[counted[0]].device
    counts = [(torch.count_nonzero(grads[i], dim=tuple(range(1, grads[i].dim()))) == 0).sum().to(device)
              for i in counted]
    for i, count in zip(counted, torch.stack(counts).cpu().tolist()):
        result[i] = count
    return result


def weight_ranges(params: Sequence[torch.Tensor]) -> list[tuple[float, float]]:
    """(smallest, largest) entry of each tensor, (nan, nan) for an empty one; one copy to the host."""
    if not params:
        return []
    device = params[0].device
    nan = torch.full((2,), math.nan, dtype=torch.float64, device=device)
    ranges = [torch.stack(torch.aminmax(p.detach())).to(device, torch.float64) if p.numel() else nan for p in params]
    return [tuple(pair) for pair in torch.stack(ranges).cpu().tolist()]


def depth_axis(model: nn.Module, batch: Any, loss_fn: LossFn, seed: int = 0,
               repeated: Optional[dict[str, int]] = None) -> list[str]:
    """The blocks that make a model's depth axis: :func:`gradscope.blocks.find_blocks`, or, where that finds
    fewer than two, the modules :func:`repeated_blocks` finds (ALBERT's shared layer group), if any.

    ``repeated``: what :func:`repeated_blocks` found on this model and batch, when the caller has it already.
    """
    blocks = find_blocks(model)
    if len(blocks) < 2:
        runs = repeated_blocks(model, batch, loss_fn, seed) if repeated is None else repeated
        blocks = list(runs) or blocks
    return blocks


def needs_repeated_blocks(model: nn.Module) -> bool:
    """Whether :func:`depth_axis` looks for repeated blocks: where the model's numbered blocks are fewer than two."""
    return len(find_blocks(model)) < 2


def repeated_blocks(model: nn.Module, batch: Any, loss_fn: LossFn, seed: int = 0) -> dict[str, int]:
    """The outermost modules that run several times in one forward pass, each run on the output of the one
    run before it (see :class:`_BlockRecorder`).

    A model whose layers share their weights (ALBERT runs one layer group
    ``num_hidden_layers`` times) has no numbered stack, but its depth is the
    runs of that module. One forward pass of ``loss_fn(model, batch)`` in the
    measurement's modes, with no backward pass, watches every module with
    parameters; the result maps each such module's clean name to its number of
    runs (the outermost ones: those inside run with them). A forward that fails
    finds none: the measured pass runs it again and says what failed.
    """
    # a norm is no block of its own (see gradscope.blocks); a scripted module takes no hooks
    names = list(dict.fromkeys(clean_name(n) for n, m in model.named_modules() if n and has_parameters(m)
                               and not is_norm(m) and not isinstance(m, torch.jit.ScriptModule)))
    watcher = _BlockRecorder(model, names, record=False)
    try:
        with _measurement_mode(model, []), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what the forward warns about, the measured pass warns about once
            torch.manual_seed(seed)
            watcher.start_forward()
            loss_fn(model, batch)
            watcher.end_forward()
    except Exception:  # the measured pass runs the forward again and reports what fails there
        return {}
    finally:
        watcher.close()
    return watcher.unrolled()


def _count_norm_values(name: str, counts: dict[str, int]):
    """A pre-hook noting how many values a batch norm averages per channel (batch x positions; shapes only)."""
    def hook(module, inputs):
        x = inputs[0]
        if x.dim() >= 2 and x.shape[1]:
            counts[name] = min(counts.get(name, x.numel()), x.numel() // x.shape[1])

    return hook
