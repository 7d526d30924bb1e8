"""Variants of one architecture: baselines and what-if surgery.

Baselines:

- ``pretrained``: the model as loaded;
- ``scratch``: the same architecture with the library's own initialization
  (``from_config`` for Hugging Face, ``weights=None`` for torchvision; a Hugging Face model given from
  Python as an ``nn.Module`` is built again from its config, any other module re-initialized by its
  modules' ``reset_parameters``);
- ``shallow``: the pretrained model with fewer blocks: each block container
  (see :mod:`gradscope.blocks`) keeps its first half, with its pretrained weights,
  cut in place (the container keeps its class, its forward and its children's names).
  A shallow model must keep the model's contract: given a probe of the batch, a container
  whose cut breaks the forward or changes the output's shape (a numbered head, the layers
  inside one block) is left whole, and with none left to cut there is no ``shallow``.

What-if variants reproduce the classic causes and fixes of vanishing gradients
on the real architecture. They start from ``scratch``, because vanishing
gradients are a property of an architecture at initialization and pretrained
weights are tuned to the architecture they were trained in:

- ``sigmoid`` / ``tanh``: every ReLU-family activation module (ReLU, GELU, SiLU, ...) replaced;
- ``no-norm``: every normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm) replaced by identity;
- ``no-residual``: the skip connection removed from torchvision ``BasicBlock``/``Bottleneck`` and
  Hugging Face ResNet layers,
  from BERT-style sublayer outputs (``LayerNorm(dense(h) + input)`` becomes ``LayerNorm(dense(h))``)
  from pre-norm decoder blocks (GPT-2, LLaMA-family, GPT-NeoX with a sequential residual:
  ``h + attn(norm(h))`` becomes ``attn(norm(h))``, and the same for the MLP) and from DistilBERT's
  post-norm blocks (``norm(h + attn(h))`` becomes ``norm(attn(h))``);
- ``xavier`` / ``he``: every Linear (GPT-style ``Conv1D`` included) and convolution weight re-drawn
  (Xavier uniform; He normal, fan-in, ReLU gain), biases zero; a head whose weight is an input
  embedding's (tied) is left as it is, and counted apart.

Surgery works on a copy; it counts what it changed and refuses, with the
reason, when there is nothing to change.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from .blocks import block_containers, find_blocks, has_inner_stack, is_norm, module_names, submodule
from .errors import UsageError, did_you_mean
from .models.failures import with_type

BASELINES = ("pretrained", "scratch", "shallow")
WHAT_IFS = ("sigmoid", "tanh", "no-norm", "no-residual", "xavier", "he")
DEFAULT_BASELINES = BASELINES

_RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardswish,
                nn.Softplus)
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Variant:
    """One model to measure, and how it came about."""

    name: str
    description: str
    model: nn.Module
    base: Optional[str] = None  # the variant it was derived from
    changes: dict = field(default_factory=dict)  # what surgery changed, counted
    blocks: Optional[list[str]] = None  # the depth axis; None: found from the model (gradscope.blocks)


# --- what the architecture holds ---------------------------------------------------


def is_activation(module: nn.Module) -> bool:
    """A ReLU-family activation module, from torch or from transformers.activations."""
    if isinstance(module, _RELU_FAMILY):
        return True
    name = type(module).__name__.lower()
    return type(module).__module__.startswith("transformers.activations") and any(
        key in name for key in ("gelu", "relu", "silu", "swish", "mish")
    )


def _is_attention(module: nn.Module) -> bool:
    """An attention layer (the innermost module so named: BERT's BertSelfAttention, not its BertAttention).
    Every transformer puts them in residual blocks, whether no-residual can edit those or not."""
    def named(m: nn.Module) -> bool:
        return type(m).__name__.endswith("Attention")

    return (named(module) and not any(named(child) for child in module.children())
            and any(True for _ in module.parameters()))


def describe_architecture(model: nn.Module) -> dict:
    """Counts a reader (and the findings) act on: activations by kind, normalization layers, skips."""
    activations: dict[str, int] = {}
    relu_family = norms = residual = removed = attention = dense = 0
    for module in model.modules():
        if is_activation(module) or isinstance(module, (nn.Sigmoid, nn.Tanh)):
            kind = type(module).__name__
            activations[kind] = activations.get(kind, 0) + 1
            relu_family += is_activation(module)
        if is_norm(module):
            norms += 1
        if _editable_residual(module) or getattr(module, "residual", None) is True:  # the demo's own blocks say so
            residual += 1
        removed += _edited(module)
        attention += _is_attention(module)
        dense += type(module).__name__.endswith("DenseLayer")  # DenseNet's layers: each one's input is all before it
    return {
        "activations": activations,
        "relu_family_activations": relu_family,
        "norm_layers": norms,
        "residual_modules": residual,
        "residuals_removed": removed,
        "attention_modules": attention,
        "dense_modules": dense,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# --- surgery ------------------------------------------------------------------------


def _replace_children(model: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[], nn.Module]) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make())
                count += 1
    return count


def replace_activations(model: nn.Module, kind: str) -> int:
    """Replace every ReLU-family activation module by ``nn.Sigmoid`` or ``nn.Tanh``; return how many."""
    make = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[kind]
    count = _replace_children(model, is_activation, make)
    if count == 0:
        raise UsageError(
            f"what-if {kind}: found no activation modules to replace (activations called as functions, "
            "e.g. F.relu in forward, cannot be swapped); drop it from `what_ifs`"
        )
    return count


def remove_norms(model: nn.Module) -> int:
    """Replace every normalization layer by ``nn.Identity``; return how many."""
    count = _replace_children(model, is_norm, nn.Identity)
    if count == 0:
        raise UsageError("what-if no-norm: the model has no normalization layers; drop it from `what_ifs`")
    return count


def _basic_block_without_skip(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)))


def _bottleneck_without_skip(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)))


def _hf_resnet_layer_without_skip(self, hidden_state):
    return self.activation(self.layer(hidden_state))


def _sublayer_output_without_skip(self, hidden_states, input_tensor, *args, **kwargs):
    return self.LayerNorm(self.dropout(self.dense(hidden_states)))


_NO_RESIDUAL_FOUND = ("found no residual block gradscope can edit (it knows torchvision and Hugging Face ResNet "
                      "blocks, BERT-style sublayer outputs, DistilBERT blocks and pre-norm decoder blocks: GPT-2, "
                      "LLaMA-family, GPT-NeoX with a sequential residual)")


def _residual_forward(module: nn.Module):
    """The skip-free forward for a module whose residual gradscope knows how to remove, else None."""
    cls_names = {c.__name__ for c in type(module).__mro__}
    if "BasicBlock" in cls_names and type(module).__module__.startswith("torchvision"):
        return _basic_block_without_skip
    if "Bottleneck" in cls_names and type(module).__module__.startswith("torchvision"):
        return _bottleneck_without_skip
    # Hugging Face ResNet: activation(layer(h) + shortcut(h)).
    if cls_names & {"ResNetBasicLayer", "ResNetBottleNeckLayer"} and type(module).__module__.startswith("transformers"):
        return _hf_resnet_layer_without_skip
    # BERT-style sublayer output: LayerNorm(dropout(dense(h)) + input_tensor).
    if all(hasattr(module, a) for a in ("dense", "LayerNorm", "dropout")):
        try:
            params = inspect.signature(type(module).forward).parameters
        except (TypeError, ValueError):
            return None
        if "input_tensor" in params:
            return _sublayer_output_without_skip
    return None


# Pre-norm decoder blocks add their residuals inline in forward: h = h + sublayer(norm(h)).
# Per known block layout, the (norm, sublayer) pairs whose adds are sequential.
_PRENORM_LAYOUTS = (
    (("ln_1", "attn"), ("ln_2", "mlp")),  # GPT-2
    (("input_layernorm", "self_attn"), ("post_attention_layernorm", "mlp")),  # LLaMA, Mistral, Qwen, Gemma
    (("input_layernorm", "attention"), ("post_attention_layernorm", "mlp")),  # GPT-NeoX
)


# Post-norm blocks that add inline: norm(h + sublayer(h)); the residual is the sublayer's own input.
# Per known block layout, the (sublayer, norm after it) pairs.
_POSTNORM_LAYOUTS = (
    (("attention", "sa_layer_norm"), ("ffn", "output_layer_norm")),  # DistilBERT
)


def _prenorm_pairs(module: nn.Module) -> Optional[list[tuple[nn.Module, nn.Module]]]:
    """The (keeper, sublayer) pairs of a block whose inline residual adds gradscope can cancel, else None.

    The keeper's input is the residual: the norm before the sublayer in a pre-norm block, the sublayer
    itself in a post-norm one.
    """
    if (getattr(module, "use_parallel_residual", False)  # GPT-NeoX's default: h + attn(ln1(h)) + mlp(ln2(h))
            or any(hasattr(module, a) for a in ("crossattention", "pre_feedforward_layernorm",
                                                 "post_feedforward_layernorm"))):
        return None  # other layouts: an extra residual, or norms applied after the sublayer (Gemma 2)
    for layout in _PRENORM_LAYOUTS:
        pairs = [(getattr(module, norm, None), getattr(module, sub, None)) for norm, sub in layout]
        if all(isinstance(n, nn.Module) and is_norm(n) and isinstance(s, nn.Module) for n, s in pairs):
            return pairs
    for layout in _POSTNORM_LAYOUTS:
        if all(isinstance(getattr(module, sub, None), nn.Module) and is_norm(getattr(module, norm, None))
               for sub, norm in layout):
            return [(getattr(module, sub), getattr(module, sub)) for sub, _ in layout]
    return None


class _ResidualTap:
    """Cancels one inline residual add, ``h + sublayer(norm(h))`` or ``norm(h + sublayer(h))``.

    A pre-hook on the keeper (the norm before the sublayer, or the sublayer
    itself) keeps its input ``h`` (the residual); a hook on the sublayer returns
    ``sublayer(...) - h``, so the block's add yields the sublayer's output alone
    and the gradient takes no skip path. The taps live
    on the block, so a deep copy of the model copies them along with it.
    """

    def __init__(self):
        self.residual: Optional[torch.Tensor] = None

    def keep(self, module, args, kwargs):
        self.residual = args[0] if args else next(iter(kwargs.values()))

    def cancel(self, module, args, output):
        residual, self.residual = self.residual, None  # hold no activation past the forward
        if residual is None:
            raise RuntimeError(f"no-residual: {type(module).__name__} ran without its norm before it; "
                               "gradscope does not know this block layout (drop no-residual from `what_ifs`)")
        if isinstance(output, tuple):
            return (output[0] - residual, *output[1:])
        return output - residual


def _edited(module: nn.Module) -> bool:
    return type(module).__name__.startswith("NoResidual") or hasattr(module, "_gradscope_residual_taps")


def _editable_residual(module: nn.Module) -> bool:
    return not _edited(module) and (_residual_forward(module) is not None or _prenorm_pairs(module) is not None)


_NO_SKIP_CLASSES: dict[type, type] = {}


def remove_residuals(model: nn.Module) -> int:
    """Remove the skip connections from every block gradscope knows (see module docstring); return how many.

    A torchvision block or BERT sublayer output gets its class swapped for a
    subclass named ``NoResidual<Class>`` whose forward drops the ``+ identity``;
    a pre-norm decoder block gets a :class:`_ResidualTap` per residual add.
    Parameters stay where they are (a downsample branch then receives no gradient).
    """
    count = 0
    for module in model.modules():
        if _edited(module):
            continue
        forward = _residual_forward(module)
        if forward is not None:
            cls = type(module)
            if cls not in _NO_SKIP_CLASSES:
                _NO_SKIP_CLASSES[cls] = type(f"NoResidual{cls.__name__}", (cls,), {"forward": forward})
            module.__class__ = _NO_SKIP_CLASSES[cls]
            count += 1
            continue
        pairs = _prenorm_pairs(module)
        if pairs is not None:
            taps = []
            for keeper, sublayer in pairs:
                tap = _ResidualTap()
                keeper.register_forward_pre_hook(tap.keep, with_kwargs=True)
                sublayer.register_forward_hook(tap.cancel)
                taps.append(tap)
            module._gradscope_residual_taps = taps
            count += len(pairs)
    if count == 0:
        raise UsageError(f"what-if no-residual: {_NO_RESIDUAL_FOUND}; drop it from `what_ifs`")
    return count


def _is_transposed_conv1d(module: nn.Module) -> bool:
    """GPT-style ``Conv1D`` (transformers): a Linear whose weight is stored [in_features, out_features].

    Found by name, so this module needs no transformers import.
    """
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor)


def _embedding_weights(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def _reinit_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the Linear/convolution layers to re-draw, those whose weight is an input embedding's, left alone).

    An LM head tied to the word embeddings (BERT, GPT-2, Gemma) holds the
    embedding matrix itself: re-drawing it as a Linear would re-draw the
    embeddings with a Linear's fan, which is not the what-if.
    """
    tied = _embedding_weights(model)
    drawn: list[nn.Module] = []
    kept: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, _WEIGHTED) or _is_transposed_conv1d(module):
            (kept if id(module.weight) in tied else drawn).append(module)
    return drawn, kept


def embedding_tied_layers(model: nn.Module) -> int:
    """How many Linear/convolution layers share their weight with an ``nn.Embedding`` (``reinit`` leaves them)."""
    return len(_reinit_layers(model)[1])


def reinit(model: nn.Module, scheme: str, seed: int) -> int:
    """Re-draw every Linear/convolution weight with Xavier or He init, biases zero; return how many.

    GPT-style ``Conv1D`` layers count as Linear (their fans read from the transposed
    weight); a layer whose weight is an input embedding's (a tied LM head) is left as it is.
    """
    drawn, _ = _reinit_layers(model)
    if not drawn:
        raise UsageError(f"what-if {scheme}: the model has no Linear or convolution layers to re-initialize "
                         "(other than heads tied to the input embeddings)")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for module in drawn:
                # torch.nn.init reads fan_in from dim 1: give it Conv1D's weight as [out, in] (a view, drawn in place).
                weight = module.weight.t() if _is_transposed_conv1d(module) else module.weight
                if scheme == "xavier":
                    nn.init.xavier_uniform_(weight)
                else:
                    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    finally:
        torch.random.set_rng_state(generator_state)
    return len(drawn)


class ShallowUnavailable(UsageError):
    """No block stack can be shortened without breaking the model's forward or output: no ``shallow`` baseline."""

    def __init__(self, reason: str):
        super().__init__(f"shallow: {reason}; drop 'shallow' from `baselines`")
        self.reason = reason


def output_probe(batch, loss_fn: Callable, seed: int = 0) -> Callable[[nn.Module], tuple]:
    """A probe for :func:`make_shallow`: the shape of ``model``'s prediction on ``batch``.

    It runs ``loss_fn(model, batch)`` once, in eval mode and without gradients
    (so no buffer moves, and the module modes are restored), and returns the
    shape of the model's own output as a forward hook sees it: a tensor's, or
    that of the first tensor in a tuple or mapping other than its ``loss``
    (``logits`` of a Hugging Face output, not its cache).

    >>> probe = output_probe(torch.zeros(2, 3), lambda m, x: m(x).sum())
    >>> probe(nn.Linear(3, 5))
    (2, 5)
    """

    def probe(model: nn.Module) -> tuple:
        outputs = []
        handle = model.register_forward_hook(lambda module, args, output: outputs.append(output))
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            torch.manual_seed(seed)
            with torch.no_grad():
                loss_fn(model, batch)
        finally:
            handle.remove()
            for module, training in modes.items():
                module.training = training
        if not outputs:
            raise RuntimeError("the loss function did not run the model")
        return _prediction_shape(outputs[0])

    return probe


def _prediction_shape(output) -> Optional[tuple]:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, Mapping):
        values = [v for k, v in output.items() if k != "loss"]
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        return None
    for value in values:
        shape = _prediction_shape(value)
        if shape is not None:
            return shape
    return None


def _cut(container: nn.Module, keep: int) -> dict[str, nn.Module]:
    """Drop all but the first ``keep`` children of ``container`` in place; return the dropped ones by name.

    In place, so the container keeps its class (and forward: DenseNet's
    ``_DenseBlock`` is a ModuleDict with its own) and its children their names
    (``encoder_layer_0``, ... in torchvision's ViT), which the depth axis is made of.
    """
    names = list(container._modules)[keep:]
    return {name: container._modules.pop(name) for name in names}


def _restore(container: nn.Module, dropped: dict[str, nn.Module]) -> None:
    container._modules.update(dropped)  # they were the trailing children: the order comes back as it was


def _sync_config(shallow: nn.Module, config, kept: dict[str, list[int]]) -> None:
    """Transformers read the layer count from the config (caches, masks): keep it in step with one cut stack.

    ``config`` is the copy's own, as deep-copied with it; it is put back when the count cannot be told.
    """
    if config is None or not hasattr(config, "num_hidden_layers"):
        return
    shallow.config = config
    if len(kept) == 1:
        shallow.config = copy.deepcopy(config)
        shallow.config.num_hidden_layers = next(iter(kept.values()))[0]


def _cut_problem(probe: Callable[[nn.Module], tuple], shallow: nn.Module, expected: tuple) -> Optional[str]:
    """Why the cut model breaks the model's contract (its forward fails, or its output changes shape), else None."""
    try:
        shape = probe(shallow)
    except Exception as exc:  # a model cut short can fail in any way its forward code allows
        return f"the forward fails ({with_type(exc)})"
    if shape != expected:
        return f"the output changes shape ({list(expected)} -> {list(shape) if shape is not None else None})"
    return None


def make_shallow(model: nn.Module, keep_fraction: float = 0.5,
                 probe: Optional[Callable[[nn.Module], tuple]] = None,
                 repeated: Optional[dict[str, int]] = None) -> tuple[nn.Module, dict]:
    """A copy with each block container cut to its first ``ceil(n * keep_fraction)`` blocks (at least 1).

    With ``probe`` (see :func:`output_probe`), a container is cut only when the
    model still runs and outputs a prediction of the same shape: a stack that is
    a numbered head (VGG's ``classifier``) or the layers inside one block
    (MobileNet's ``features.2.block``) is left whole, and ``changes["not_cut"]``
    says why. A model without a stack whose depth is the runs of one repeated
    block (ALBERT; ``repeated`` is :func:`gradscope.measure.repeated_blocks` of
    the model) runs it fewer times instead, see :func:`_fewer_runs`. Raises
    :class:`ShallowUnavailable` when nothing can be cut.
    """
    if not has_inner_stack(model):
        if repeated:
            return _fewer_runs(model, repeated, keep_fraction, probe)
        raise ShallowUnavailable("the model has no stack of numbered blocks to shorten")
    containers = block_containers(model)
    expected = None
    if probe is not None:
        try:
            expected = probe(model)
        except Exception as exc:  # with no reference output, no cut can be judged
            raise ShallowUnavailable(f"the model's own forward fails in eval mode ({with_type(exc)})") from exc
    shallow = copy.deepcopy(model)
    config = getattr(shallow, "config", None)
    kept: dict[str, list[int]] = {}
    not_cut: dict[str, str] = {}
    for name in containers:
        container = shallow.get_submodule(name)
        total = len(container._modules)
        keep = max(1, math.ceil(total * keep_fraction))
        dropped = _cut(container, keep)
        kept[name] = [keep, total]
        _sync_config(shallow, config, kept)
        problem = _cut_problem(probe, shallow, expected) if probe is not None else None
        if problem is not None:
            _restore(container, dropped)
            del kept[name]
            _sync_config(shallow, config, kept)
            not_cut[name] = problem
    if not kept:
        (first, why), *others = not_cut.items()
        likewise = f"; likewise for {', '.join(name for name, _ in others)}" if others else ""
        raise ShallowUnavailable(f"no block stack can be cut without breaking the model: with {first or 'the model'} "
                                 f"cut, {why}{likewise}")
    changes: dict = {"blocks_kept": kept}
    if not_cut:
        changes["not_cut"] = not_cut
    return shallow, changes


def _runs_in_probe(model: nn.Module, block: str, probe: Callable[[nn.Module], tuple]) -> int:
    """How many times ``block`` runs in the forward pass ``probe`` makes (0 when that forward fails)."""
    runs = 0

    def count(module, args, output):
        nonlocal runs
        runs += 1

    handle = submodule(model, block).register_forward_hook(count)
    try:
        probe(model)
    except Exception:  # the check that follows says what fails
        return 0
    finally:
        handle.remove()
    return runs


def _fewer_runs(model: nn.Module, runs: dict[str, int], keep_fraction: float,
                probe: Optional[Callable[[nn.Module], tuple]]) -> tuple[nn.Module, dict]:
    """A copy whose one repeated block (``runs``: the model's, as :func:`gradscope.measure.repeated_blocks`
    counts them) runs ``ceil(runs * keep_fraction)`` times, its weights kept.

    ALBERT runs its shared layer group ``config.num_hidden_layers`` times and reads that number at each
    forward pass: the copy's config (which its modules share) gets the smaller count. Counting the copy's
    runs in the ``probe``'s forward pass tells that the model really reads it.
    """
    total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if len(runs) != 1 or total not in runs.values():
        raise ShallowUnavailable("the model has no stack of numbered blocks to shorten, and its repeated block "
                                 "does not run num_hidden_layers times")
    (block, _), = runs.items()
    keep = max(1, math.ceil(total * keep_fraction))
    if keep < 2:  # one run is no repeated block: its depth positions would share no name with the model's
        raise ShallowUnavailable(f"{block} runs {total} times, and a single run of it leaves no depth to compare")
    shallow = copy.deepcopy(model)
    shallow.config.num_hidden_layers = keep
    if probe is not None:
        if _runs_in_probe(shallow, block, probe) != keep:
            raise ShallowUnavailable(f"{block} runs {total} times, and a smaller num_hidden_layers does not change "
                                     "that")
        problem = _cut_problem(probe, shallow, probe(model))
        if problem is not None:
            raise ShallowUnavailable(f"with {block} run {keep} times, {problem}")
    return shallow, {"runs_kept": {block: [keep, total]}}


# --- building the list --------------------------------------------------------------


def _counted(surgery: Callable[[nn.Module, int], int], counted: str, what: str):
    def run(model: nn.Module, seed: int) -> tuple[dict, str]:
        n = surgery(model, seed)
        return {counted: n}, f"{n} {what}"

    return run


def _reinitialized(scheme: str, init: str):
    def run(model: nn.Module, seed: int) -> tuple[dict, str]:
        n = reinit(model, scheme, seed)
        changes, what = {"layers_reinitialized": n}, f"{n} Linear/convolution weights re-initialized ({init})"
        tied = embedding_tied_layers(model)
        if tied:  # say so: the layer count alone would hide a head left as it was
            changes["embedding_tied_layers_kept"] = tied
            what += f"; {tied} tied to the input embeddings kept"
        return changes, what

    return run


# what-if -> surgery(model, seed) returning (what it changed, counted; the same in words)
_SURGERY: dict[str, Callable[[nn.Module, int], tuple[dict, str]]] = {
    "sigmoid": _counted(lambda m, seed: replace_activations(m, "sigmoid"), "activations_replaced",
                        "activations replaced by sigmoid"),
    "tanh": _counted(lambda m, seed: replace_activations(m, "tanh"), "activations_replaced",
                     "activations replaced by tanh"),
    "no-norm": _counted(lambda m, seed: remove_norms(m), "norms_removed", "normalization layers removed"),
    "no-residual": _counted(lambda m, seed: remove_residuals(m), "residuals_removed", "residual connections removed"),
    "xavier": _reinitialized("xavier", "Xavier uniform"),
    "he": _reinitialized("he", "He normal"),
}
assert set(_SURGERY) == set(WHAT_IFS)


def check_names(baselines: tuple[str, ...], what_ifs: tuple[str, ...]) -> None:
    """Raise UsageError naming any unknown variant."""
    for given, known, option in ((baselines, BASELINES, "baselines"), (what_ifs, WHAT_IFS, "what_ifs")):
        unknown = [n + did_you_mean(n, known) for n in given if n not in known]
        if unknown:
            raise UsageError(f"`{option}`: unknown variant {', '.join(unknown)}; choose from {', '.join(known)}")
    if not baselines and not what_ifs:
        raise UsageError("no variants to run: give at least one of `baselines` or `what_ifs`")


def check_applicable(model: nn.Module, what_ifs: tuple[str, ...]) -> None:
    """Refuse, before anything runs, a what-if that would find nothing to change in ``model``."""
    inventory = describe_architecture(model)
    needs = {
        "sigmoid": ("relu_family_activations", "found no ReLU-family activation modules to replace (functional "
                    "activations such as F.relu in forward cannot be swapped)"),
        "tanh": ("relu_family_activations", "found no ReLU-family activation modules to replace (functional "
                 "activations such as F.relu in forward cannot be swapped)"),
        "no-norm": ("norm_layers", "the model has no normalization layers"),
        "no-residual": ("residual_modules", _NO_RESIDUAL_FOUND),
    }
    for name in what_ifs:
        if name in needs and inventory[needs[name][0]] == 0:
            raise UsageError(f"what-if {name}: {needs[name][1]}; drop it from `what_ifs`")


@dataclass(frozen=True)
class VariantPlan:
    """Which variants to build, in order: ``baselines``, then ``what_ifs`` (each from ``scratch``), drawn
    with ``seed``. ``shallow_optional``: a ``shallow`` that cannot be built is skipped, saying why (the
    default set of baselines), rather than refused (a ``shallow`` asked for by name)."""

    baselines: tuple[str, ...] = DEFAULT_BASELINES
    what_ifs: tuple[str, ...] = ()
    seed: int = 0
    shallow_optional: bool = True

    def __post_init__(self):
        check_names(self.baselines, self.what_ifs)


@dataclass(frozen=True)
class Depth:
    """What the loaded model's depth is made of, found once on its first batch and shared by every variant.

    ``blocks``: the depth axis (:func:`gradscope.measure.depth_axis`); each variant is measured on the blocks
    of it that it still has. ``repeated``: the blocks that run several times in one forward pass, with their
    runs (:func:`gradscope.measure.repeated_blocks`; empty where they were not looked for): ``shallow`` runs
    such a block fewer times where the model has no stack to cut (:func:`~gradscope.blocks.has_inner_stack`).
    ``probe``: :func:`output_probe` on the first batch, so that ``shallow`` cuts only what keeps the model's
    output.
    """

    blocks: list[str]
    repeated: dict[str, int] = field(default_factory=dict)
    probe: Optional[Callable[[nn.Module], tuple]] = None


@dataclass(frozen=True)
class Skipped:
    """A baseline that was not built, and why: ``shallow``, optional, when the model has nothing to cut."""

    name: str
    reason: str


def build_variants(model: nn.Module, make_scratch: Callable[[], nn.Module], plan: VariantPlan,
                   depth: Optional[Depth] = None,
                   progress: Callable[[str], None] = lambda message: None) -> Iterator[Union[Variant, Skipped]]:
    """Yield each variant of ``plan`` in order (one at a time, so a caller can measure it and let it go), or,
    in its place, a :class:`Skipped` saying why it was not built.

    ``depth`` (default: :func:`~gradscope.blocks.find_blocks` of ``model``, no probe): with its ``probe``,
    ``shallow`` cuts only the stacks whose cut keeps the model's output; when none can be cut, ``shallow`` is
    skipped with a progress line saying why and a :class:`Skipped`, and the other variants still run (or,
    when ``plan.shallow_optional`` is False, :class:`ShallowUnavailable` is raised).
    """
    depth = depth or Depth(find_blocks(model))
    blocks = depth.blocks  # one depth axis for all: the loaded model's blocks, those a variant still has
    scratch: Optional[nn.Module] = None

    def kept_blocks(m: nn.Module) -> list[str]:
        names = module_names(m)
        return [b for b in blocks if b in names]

    def fresh_scratch() -> nn.Module:
        nonlocal scratch
        if scratch is None:
            torch.manual_seed(plan.seed)
            scratch = make_scratch()
        return copy.deepcopy(scratch)

    for name in plan.baselines:
        progress(f"building variant {name}")
        if name == "pretrained":
            yield Variant(name, "the model as loaded", model, blocks=blocks)
        elif name == "scratch":
            m = fresh_scratch()
            yield Variant(name, "same architecture, the library's own initialization", m, blocks=kept_blocks(m))
        elif name == "shallow":
            try:
                shallow, changes = make_shallow(model, probe=depth.probe, repeated=depth.repeated)
            except ShallowUnavailable as exc:
                if not plan.shallow_optional:
                    raise
                progress(f"skipping the shallow baseline: {exc.reason}")
                yield Skipped(name, exc.reason)
                continue
            for container, why in changes.get("not_cut", {}).items():
                progress(f"shallow: {container} left whole: with it cut, {why}")
            if "runs_kept" in changes:
                cut = ", ".join(f"{b}: {k}/{n} runs" for b, (k, n) in changes["runs_kept"].items())
                what = f"the first half of the runs of the repeated block, pretrained weights kept ({cut})"
            else:
                cut = ", ".join(f"{c or 'model'}: {k}/{n}" for c, (k, n) in changes["blocks_kept"].items())
                whole = "".join(f"; {c} left whole" for c in changes.get("not_cut", {}))
                what = f"the first half of the blocks, pretrained weights kept ({cut}{whole})"
            yield Variant(name, what, shallow, base="pretrained", changes=changes, blocks=kept_blocks(shallow))
    for name in plan.what_ifs:
        progress(f"building variant {name}")
        m = fresh_scratch()
        changes, what = _SURGERY[name](m, plan.seed)
        yield Variant(name, f"scratch with {what}", m, "scratch", changes, kept_blocks(m))
