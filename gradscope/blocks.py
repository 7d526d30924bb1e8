"""The block grouping rule: which modules of a model form its depth axis.

A *stack* is a module whose children are all numbered with one common prefix
(``0``, ``1``, ... as ``nn.Sequential`` and ``nn.ModuleList`` name them, or
``encoder_layer_0``, ``denselayer1``, ...) and at least two of them hold
parameters. A stack is *homogeneous* when its children with parameters are all
of one class. A *layer* is a module without children that hold parameters
(``Linear``, ``Conv2d``), or an ``nn.Sequential`` of such (a
convolution-norm-activation, an MLP); a stack whose children are all layers is a
*stack of layers*, and any other a *stack of blocks*. The rule:

1. the outermost stacks are found (the numbered parts inside a block stay inside
   it); where some are stacks of blocks, the stacks of layers beside them are
   heads and stems (``classifier`` of MobileNet and ConvNeXt) and are left out;
2. each child of such a stack that holds parameters is a block, except that a
   stage contributes its blocks instead: a child that is itself a homogeneous
   stack of blocks (``features.1`` of ConvNeXt), or that holds exactly one stack
   of blocks, a homogeneous one (``stages.1`` of Hugging Face's ResNet is its
   ``layers``; a stage's downsampling layer stays outside every block). So
   ``encoder.layer.7`` (BERT), ``h.3`` (GPT-2), ``layer3.2`` (torchvision ResNet),
   ``stages.1.layers.0`` (Hugging Face ResNet, ConvNeXt, Swin) and ``features.2``
   (MobileNet, whose inner sequence of convolution layers does not split it) are
   blocks, and T5's heterogeneous self-attention/feed-forward sublayers do not
   split ``block.3``. A model of plain layers (``nn.Sequential`` of ``Linear``,
   VGG) has its layers as blocks, except its normalization layers: a batch norm
   after a convolution rescales that layer's output, it is not a layer of depth
   of its own (its parameters are outside every block, as a head's are).

Names are the model's own: wrappers that sit inside a model and add a segment
to the names below them (FSDP1's ``_fsdp_wrapped_module``, activation
checkpointing's ``_checkpoint_wrapped_module``, a compiled submodule's
``_orig_mod``) are left out of parameter and block names (:func:`clean_name`),
and :func:`submodule` finds a module by such a name.

Execution order, not name order, gives the depth: ``measure`` records it with
forward hooks. This module is the one place the rule lives; measurement and
analysis call :func:`find_blocks`, and the ``shallow`` variant shortens the
homogeneous stacks :func:`block_containers` names.
"""

from __future__ import annotations

import re
from typing import Optional

from torch import nn

from . import zero

MIN_REPEATS = 2
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
# The name segments that in-model wrappers add (FSDP1, checkpoint_wrapper, torch.compile of a submodule).
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def clean_name(name: str) -> str:
    """``name`` without the segments that in-model wrappers add.

    >>> clean_name("layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.lin.weight")
    'layers.0.lin.weight'
    """
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``model.named_parameters()`` under clean names."""
    return [(clean_name(n), p) for n, p in model.named_parameters()]


def module_names(model: nn.Module) -> set[str]:
    """The clean names of every module of ``model``."""
    return {clean_name(n) for n, _ in model.named_modules()}


def submodule(model: nn.Module, name: str) -> nn.Module:
    """The module a clean name stands for (the outermost one, a wrapper when the module is wrapped)."""
    module = model
    for part in name.split(".") if name else ():
        children = dict(module.named_children())
        while part not in children:  # step into the wrapper that holds it
            inner = next((children[w] for w in _WRAPPER_SEGMENTS if w in children), None)
            if inner is None:
                raise AttributeError(f"{type(model).__name__} has no module named {name!r}")
            children = dict(inner.named_children())
        module = children[part]
    return module


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalization layer, from torch or named as one (``LlamaRMSNorm``, ``T5LayerNorm``)."""
    return isinstance(module, _NORMS) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_stack(module: nn.Module) -> bool:
    children = list(module.named_children())
    matches = [_NUMBERED.match(name) for name, _ in children]
    return (
        bool(children)
        and all(matches)
        and len({m.group(1) for m in matches}) == 1
        and sum(has_parameters(child) for _, child in children) >= MIN_REPEATS
    )


def _inner(module: nn.Module) -> nn.Module:
    """The module an in-model wrapper (FSDP1 unit, checkpoint_wrapper, compiled submodule) holds, or itself."""
    while True:
        children = dict(module.named_children())
        wrapped = [children[w] for w in _WRAPPER_SEGMENTS if w in children]
        if len(children) != 1 or not wrapped:
            return module
        module = wrapped[0]


def _parts(module: nn.Module) -> list[nn.Module]:
    """The children that hold parameters, each as the module it is under any wrapper."""
    return [_inner(child) for child in _inner(module).children() if has_parameters(child)]


def _is_homogeneous(stack: nn.Module) -> bool:
    parts = _parts(stack)
    if not _holds_blocks(stack):  # a stack of layers: its normalization layers go with the layers they follow
        parts = [part for part in parts if not is_norm(part)]
    return len({type(part) for part in parts}) == 1


def _is_layer(module: nn.Module) -> bool:
    module = _inner(module)
    parts = _parts(module)
    return not parts or (isinstance(module, nn.Sequential) and all(not _parts(p) for p in parts))


def _holds_blocks(stack: nn.Module) -> bool:
    """A stack of blocks, not of single layers (see the module docstring)."""
    return not all(_is_layer(child) for child in _parts(stack))


def _outermost_stacks(prefix: str, module: nn.Module) -> list[str]:
    if _is_stack(module):
        return [prefix]
    found: list[str] = []
    for name, child in module.named_children():
        found += _outermost_stacks(_join(prefix, name), child)
    return found


def _stage_stack(name: str, child: nn.Module) -> Optional[str]:
    """The homogeneous stack of blocks a stage stands for (rule 2), or None when the child is a block itself."""
    if _is_stack(child):
        return name if _is_homogeneous(child) and _holds_blocks(child) else None
    # A stack of layers inside is part of a block (ViT's MLP) or a stage's downsampling, not its blocks.
    inner = [s for s in _outermost_stacks("", child) if _holds_blocks(child.get_submodule(s))]
    if len(inner) != 1 or not _is_homogeneous(child.get_submodule(inner[0])):
        return None
    return _join(name, inner[0])


def _layout(model: nn.Module) -> tuple[list[str], list[str]]:
    """(blocks in registration order, the homogeneous stacks the blocks are children of)."""
    blocks: list[str] = []
    stacks: list[str] = []
    outers = _outermost_stacks("", model)
    of_blocks = [outer for outer in outers if _holds_blocks(model.get_submodule(outer) if outer else model)]
    for outer in of_blocks or outers:  # rule 1: beside stacks of blocks, stacks of layers are heads and stems
        parent = model.get_submodule(outer) if outer else model
        plain = not _holds_blocks(parent)
        split = False
        for name, child in parent.named_children():
            if not has_parameters(child) or (plain and is_norm(_inner(child))):
                continue
            qualified = _join(outer, name)
            stage = _stage_stack(qualified, child)
            if stage is None:
                blocks.append(qualified)
                continue
            split = True
            stacks.append(stage)
            for inner_name, inner in model.get_submodule(stage).named_children():
                if has_parameters(inner):
                    blocks.append(_join(stage, inner_name))
        if not split and _is_homogeneous(parent):
            stacks.append(outer)
    return blocks, stacks


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose names the user knows, out of the wrappers that rename it.

    ``torch.compile`` (``_orig_mod.``), ``DistributedDataParallel`` and
    ``DataParallel`` (``module.``), a DeepSpeed engine (``module.``) and a PEFT model (``base_model.model.``)
    hold the same parameters under a prefix; the statistics are named, matched
    with ``params=`` patterns and grouped into blocks by the wrapped module's
    own names (a PEFT model's adapter weights included, in the layers they were
    added to). An FSDP1 root is kept: it tells how the model is sharded, and
    :func:`clean_name` drops its segment from the names.
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif zero.is_engine(model):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__module__.startswith("peft.") and isinstance(getattr(model, "model", None), nn.Module):
            model = model.model  # PeftModel and its tuner (LoraModel, ...): the model the adapter layers are in
        else:
            return model


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the model's blocks, in registration order (``measure`` reorders by execution).

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> find_blocks(nn.ModuleDict({"stack": net}))
    ['stack.0', 'stack.2']
    """
    return [clean_name(b) for b in _layout(model)[0]]


def block_containers(model: nn.Module) -> list[str]:
    """The homogeneous stacks whose children are blocks (``""`` is the model itself): what ``shallow`` shortens.

    Module paths as ``get_submodule`` takes them (not clean names): the stacks are replaced in place.
    """
    return _layout(model)[1]


def has_inner_stack(model: nn.Module) -> bool:
    """Whether a stack :func:`block_containers` names lies inside the model (the model itself aside): what
    ``shallow`` cuts. Without one, ``shallow`` runs a repeated block fewer times, where the model has one."""
    return any(block_containers(model))


def block_of(param_name: str, blocks: list[str]) -> Optional[str]:
    """The block a parameter belongs to, or None for parameters outside every block (embeddings, heads)."""
    for block in blocks:
        if param_name.startswith(block + "."):
            return block
    return None
