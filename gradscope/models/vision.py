"""torchvision classification models: a name with pretrained weights, or a local checkpoint with ``arch``.

Objective: cross-entropy of the logits against labels drawn uniformly at
random with the seed (the same labels for every variant). Input: ``images``
(JPEG/PNG through the weights' own preprocessing), else a seeded batch of
standard-normal images at the weights' crop size (or ``image_size``).

Checkpoints are read with safetensors, or ``torch.load(weights_only=True)``:
a checkpoint that needs pickled code is refused, because loading it would run
code from the file.
"""

from __future__ import annotations

import difflib
import pickle
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError, UsageError
from .common import LoadOptions, Subject, offline, resolve_device, resolve_dtype, to_device
from .failures import clip, needs_code_message, pickled_global, short_reason
from .inputs import load_images, random_labels, refuse_text_options, synthetic_images

DEFAULT_IMAGE_SIZE = 224
_NEEDS_TORCHVISION = "torchvision models need torchvision: pip install torchvision (gradscope's [vision] extra)"


def _torchvision_models():
    try:
        import torchvision.models
    except ImportError:
        raise ModelLoadError(_NEEDS_TORCHVISION) from None
    return torchvision.models


def _classification_names() -> list[str]:
    try:
        import torchvision.models as tvm
    except ImportError:
        return []
    return tvm.list_models(module=tvm)


def is_torchvision_name(name: str) -> bool:
    return name in _classification_names()


def close_torchvision_names(name: str) -> list[str]:
    """Classification model names close to ``name`` (for an error message)."""
    return difflib.get_close_matches(name, _classification_names(), n=5, cutoff=0.75)


def _check_arch(arch: str) -> None:
    names = _classification_names()
    if not names:
        raise ModelLoadError(_NEEDS_TORCHVISION)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see torchvision.models.list_models()"
        raise UsageError(f"`arch={arch!r}`: unknown torchvision classification model; {hint}")


def _default_weights(arch: str):
    tvm = _torchvision_models()
    try:
        return tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _cross_entropy(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model(batch["pixels"]).float(), batch["labels"])


def _subject(name: str, source: str, model: nn.Module, make_scratch, num_classes: int, weights,
             options: LoadOptions, meta: dict) -> Subject:
    refuse_text_options(options)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype)
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    n = options.samples
    if options.images:
        if weights is None:
            raise UsageError(f"`images`: torchvision has no preprocessing recorded for {name}; leave out `images`")
        pixels, inputs = load_images(options.images, n, weights.transforms(), "the weights' preprocessing")
    else:
        crop = getattr(weights.transforms(), "crop_size", [DEFAULT_IMAGE_SIZE])[0] if weights else DEFAULT_IMAGE_SIZE
        fixed = getattr(model, "image_size", None)  # a vision transformer's patch grid is built for one size
        if isinstance(fixed, int) and options.image_size not in (None, fixed):
            raise UsageError(f"`image_size={options.image_size}`: {name} takes {fixed} x {fixed} images only; "
                             f"leave out `image_size`")
        size = options.image_size or crop
        pixels = synthetic_images(n, 3, size, options.seed)
        inputs = f"seeded synthetic images {n} x 3 x {size} x {size}"
    labels = random_labels(n, num_classes, options.seed)
    inputs += f", seeded random labels over {num_classes} classes"
    model_dtype = next(model.parameters()).dtype
    per_batch = options.batch_size
    batches = [to_device({"pixels": pixels[b * per_batch:(b + 1) * per_batch],
                          "labels": labels[b * per_batch:(b + 1) * per_batch]}, device, model_dtype)
               for b in range(options.batches)]
    return Subject(
        name=name,
        source=source,
        model=model,
        make_scratch=lambda: make_scratch().to(device=device, dtype=model_dtype),
        batches=batches,
        loss_fn=_cross_entropy,
        objective="cross-entropy",
        inputs=inputs,
        meta=meta,
    )


def _cached_weights(url: str) -> Path:
    """Where torchvision keeps a downloaded weights file (torch.hub's checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def load_torchvision(name: str, options: LoadOptions, progress: Callable[[str], None]) -> Subject:
    """A torchvision classification model with its default pretrained weights (downloaded or cached)."""
    tvm = _torchvision_models()

    weights = _default_weights(name)
    if weights is None:
        raise ModelLoadError(
            f"torchvision has no pretrained weights for {name}; give a checkpoint file of it with `arch={name!r}`"
        )
    progress(f"loading {name} ({weights}) from torchvision")
    num_classes = len(weights.meta["categories"])
    cached = _cached_weights(weights.url)
    if offline() and not cached.is_file():
        raise ModelLoadError(
            f"offline (HF_HUB_OFFLINE is set): the pretrained weights of {name} are not in the torch hub cache "
            f"({cached}); download {weights.url} where the network is reachable and analyze the file "
            f"{Path(weights.url).name} with `arch={name!r}`"
        )
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # URLError, HTTPError, a broken cache file
        raise ModelLoadError(
            f"cannot load the pretrained weights of {name}: they could not be downloaded or read "
            f"({type(exc).__name__}); download {weights.url} where the network is reachable and analyze the file "
            f"{Path(weights.url).name} with `arch={name!r}`"
        ) from None
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    model.load_state_dict(state)
    return _subject(name, "torchvision", model, lambda: tvm.get_model(name, weights=None, num_classes=num_classes),
                    num_classes, weights, options, {"architecture": name, "weights": str(weights),
                                                   "torchvision": sys.modules["torchvision"].__version__})


def read_state_dict(path: str) -> dict:
    """A state dict from ``.safetensors`` or a weights-only torch checkpoint; refuses pickled code."""
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"no such file or directory: {path}")
    if file.stat().st_size == 0:
        raise ModelLoadError(f"cannot read checkpoint {path}: the file is empty (0 bytes); copy or save it again")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as exc:
            raise ModelLoadError(f"cannot read {path} as safetensors ({short_reason(exc)}); "
                                 "it may be truncated: copy or save it again") from None
    obj = _torch_load_weights_only(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def _torch_load_weights_only(path: str):
    """``torch.load(weights_only=True)``, its failures as one line each.

    torch's own warnings are silenced here: the error that follows says all that matters, and a
    warning printed before it would bury it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if pickled_global(exc):
            raise ModelLoadError(needs_code_message(
                path, exc, "save the weights with torch.save(model.state_dict(), path) or as .safetensors")) from None
        raise _not_a_checkpoint(path, exc) from None
    except Exception as exc:  # KeyError, EOFError, RuntimeError (not a zip), ...: not a checkpoint torch can read
        raise _not_a_checkpoint(path, exc) from None


def _not_a_checkpoint(path: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"cannot read checkpoint {path}: it is neither a torch.save file nor safetensors ({short_reason(exc)}); "
        "give the file torch.save(model.state_dict(), path) wrote, or a .safetensors file"
    )


def _num_classes(state: dict, arch: str) -> Optional[int]:
    """The classes of a checkpoint: the rows of the architecture's classifier, its last Linear layer.

    Looked up by name in a skeleton of the architecture (on the meta device: no memory, no init cost), as the
    order of a state dict's keys is not the model's (safetensors sorts them).
    """
    try:
        with torch.device("meta"):
            skeleton = _torchvision_models().get_model(arch, weights=None)
    except Exception:  # an __init__ that reads tensor values (RegNet): the last 2-D weight in the file's order
        matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
        return matrices[-1].shape[0] if matrices else None
    linear = [name for name, module in skeleton.named_modules() if isinstance(module, nn.Linear)]
    head = state.get(f"{linear[-1]}.weight") if linear else None
    if head is not None and head.dim() == 2:
        return head.shape[0]
    return None  # a convolution head (SqueezeNet) or no head at all: the architecture's own count


def load_checkpoint(path: str, options: LoadOptions, progress: Callable[[str], None]) -> Subject:
    """A local checkpoint of the torchvision architecture ``options.arch``."""
    tvm = _torchvision_models()
    arch = options.arch
    _check_arch(arch)
    if Path(path).is_dir():
        raise UsageError(f"`arch` is for a checkpoint file, and {path} is a directory; "
                         "leave out `arch` for a Hugging Face model directory")
    progress(f"loading {path} as torchvision {arch}")
    state = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP
    num_classes = _num_classes(state, arch) or 1000
    model = tvm.get_model(arch, weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = clip(" ".join(str(exc).split()), 300)
        raise ModelLoadError(f"{path} does not match torchvision {arch}: {detail}") from None
    return _subject(path, "checkpoint", model, lambda: tvm.get_model(arch, weights=None, num_classes=num_classes),
                    num_classes, _default_weights(arch), options, {"architecture": arch})
