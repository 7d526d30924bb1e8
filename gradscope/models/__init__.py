"""Loading: a model, the batches it sees and the objective it is measured with.

:func:`load_subject` takes what a user names and returns a :class:`Subject`:

- a directory: a Hugging Face model saved with ``save_pretrained`` (:mod:`.hf`);
- a torchvision model name such as ``resnet50``, or a checkpoint file with ``arch`` (:mod:`.vision`);
- a file without ``arch``: a :class:`UsageError` for a checkpoint, else a :class:`ModelLoadError` saying what the
  file looks like (:func:`file_format`);
- a path that does not exist (see :func:`is_local_path`): a :class:`ModelLoadError`, never a hub lookup;
- anything else: a Hugging Face hub id, fetched (or read from the local cache) by transformers (:mod:`.hf`);
- from Python, any ``nn.Module`` with a batch and a loss function (:func:`from_module`).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import GradscopeError, ModelLoadError, UsageError
from .common import (
    CHECKPOINT_SUFFIXES,
    DTYPES,
    LoadOptions,
    LossFn,
    Subject,
    is_local_path,
    offline,
    resolve_device,
    resolve_dtype,
    to_device,
)
from .hf import load_hf
from .inputs import check_input_paths
from .vision import close_torchvision_names, is_torchvision_name, load_checkpoint, load_torchvision


def _reset_parameters_copy(model: nn.Module) -> nn.Module:
    """A copy re-initialized by each module's own ``reset_parameters`` (PyTorch's defaults)."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


def _architecture(model: nn.Module) -> tuple:
    """What two models must share to be the same architecture: module classes in order, parameter shapes."""
    return ([type(m) for m in model.modules()], [(n, tuple(p.shape)) for n, p in model.named_parameters()])


def _built_from_config(model: nn.Module, device: str = "cpu") -> Optional[nn.Module]:
    """A transformers model built again from (a copy of) its config on ``device``, as the command line builds
    ``scratch``: its library's own initialization (e.g. normal(0, ``initializer_range``) for BERT's weights; none
    on ``meta``). None for any other module, a class that cannot be built from its config alone, or a result
    that differs from ``model`` (changed after it was built)."""
    transformers = sys.modules.get("transformers")  # not imported: the model is none of its classes
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return None
    try:
        with torch.device(device):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception:  # a subclass whose constructor takes more than its config
        return None
    return fresh if _architecture(fresh) == _architecture(model) else None


def _own_init_copy(model: nn.Module) -> nn.Module:
    """``model``'s architecture with its own library's initialization, on its device and in its dtype."""
    fresh = _built_from_config(model)
    for p, q in zip(model.parameters(), fresh.parameters()):
        q.requires_grad_(p.requires_grad)
    first = next(model.parameters())
    return fresh.to(device=first.device, dtype=first.dtype)


def _scratch_maker(model: nn.Module) -> tuple[Callable[[], nn.Module], str]:
    """How ``scratch`` is built from a module given from Python, and that in words (``meta["scratch_init"]``):
    a transformers model from its config, as on the command line (checked on the meta device, where building
    costs nothing), else by PyTorch's ``reset_parameters``."""
    if _built_from_config(model, "meta") is not None:
        return lambda: _own_init_copy(model), "the model's own, built again from its config"
    return lambda: _reset_parameters_copy(model), "PyTorch's defaults (each module's reset_parameters)"


def from_module(model: nn.Module, batch: Any, loss_fn: Optional[LossFn], options: LoadOptions) -> Subject:
    """A plain ``nn.Module`` from Python: ``loss_fn(model, batch)`` is the objective.

    Without ``loss_fn``, ``model(batch)`` must return a scalar loss (or an object
    with a ``.loss``, as transformers models do when given labels).
    """
    if batch is None:
        raise UsageError("analyze(nn.Module): pass batch=... (the input the model is measured on)")
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)

    if loss_fn is None:
        def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
            out = m(**b) if isinstance(b, dict) else m(b)
            return out.loss if hasattr(out, "loss") else out

    make_scratch, scratch_init = _scratch_maker(model)
    return Subject(
        name=type(model).__name__,
        source="module",
        model=model,
        make_scratch=make_scratch,
        batches=[to_device(batch, device, dtype)],
        loss_fn=loss_fn,
        objective="custom",
        inputs="the batch passed to analyze()",
        meta={"scratch_init": scratch_init},
    )


_SNIFF_BYTES = 4096


def file_format(path: Path) -> str:
    """What a file holds, read from its first bytes, not its name: ``safetensors``, ``torch`` (a torch.save zip
    archive, or a pickle as torch.save wrote before 1.6), ``empty``, ``text`` (UTF-8 without NUL bytes),
    ``zip`` (an archive torch.save did not write) or ``binary`` (anything else)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if not head:
        return "empty"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04"):  # a zip archive; torch.save's first entry is <name>/data.pkl
        name_length = int.from_bytes(head[26:28], "little")
        return "torch" if head[30:30 + name_length].endswith(b"data.pkl") else "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # a pickle's protocol opcode
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:
            if len(head) == _SNIFF_BYTES and exc.start >= len(head) - 3:  # a character cut by the read
                return "text"
    return "binary"


_NOT_A_CHECKPOINT = {
    "empty": "it is empty (0 bytes)",
    "text": "it looks like a text file, not a checkpoint (neither safetensors nor a torch.save archive)",
    "zip": "it is a zip archive, but not one torch.save wrote",
    "binary": "its first bytes are neither safetensors nor a torch.save archive",
}


def _file_without_arch(spec: str, path: Path) -> GradscopeError:
    """Why a file named without ``arch`` cannot be measured as it is: a checkpoint needs its architecture
    (a usage error); anything else is no model (a load error), said with what the file looks like."""
    try:
        kind = file_format(path)
    except OSError as exc:
        return ModelLoadError(f"cannot read {spec}: {exc.strerror or exc}")
    if kind in ("safetensors", "torch"):
        what = "safetensors" if kind == "safetensors" else "torch.save"
        return UsageError(f"{spec} is a {what} checkpoint file: name its architecture with `arch` "
                          "(e.g. `arch='resnet50'`), or give the directory a Hugging Face model was saved to")
    if (path.parent / "config.json").is_file():  # a file of a Hugging Face model's directory
        fix = f"give the directory it is in: gradscope analyze {path.parent}"
    else:
        fix = ("give a Hugging Face model directory or hub id, a torchvision model name, or a .safetensors/.pt "
               "checkpoint with `arch`")
    return ModelLoadError(f"{spec} is not a model: {_NOT_A_CHECKPOINT[kind]}; {fix}")


def load_subject(spec: str, options: LoadOptions, progress: Callable[[str], None]) -> Subject:
    """Load the model ``spec`` names (see module docstring) with its inputs and objective."""
    check_input_paths(options.text, options.images)  # in seconds, not after a model took a minute to load
    if spec.startswith("~"):
        spec = os.path.expanduser(spec)
    path = Path(spec)
    if options.arch:
        return load_checkpoint(spec, options, progress)
    if path.is_dir():
        return load_hf(spec, options, progress, local=True)
    if path.is_file():
        raise _file_without_arch(spec, path)
    if is_local_path(spec):
        raise ModelLoadError(f"no such file or directory: {spec}")
    if "/" not in spec:
        if is_torchvision_name(spec):
            return load_torchvision(spec, options, progress)
        close = close_torchvision_names(spec)
        if close:
            raise ModelLoadError(
                f"unknown torchvision model {spec!r}; close matches: {', '.join(close)} "
                "(a Hugging Face hub id is written owner/name)"
            )
    return load_hf(spec, options, progress, local=False)


__all__ = ["CHECKPOINT_SUFFIXES", "DTYPES", "LoadOptions", "LossFn", "Subject", "file_format", "from_module",
           "is_local_path", "load_subject", "offline", "resolve_device", "resolve_dtype", "to_device"]
