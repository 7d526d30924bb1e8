"""What every loader shares: the options it takes, the :class:`Subject` it returns, the device and dtype.

A loader reads :class:`LoadOptions`, nothing else of an analysis: :func:`gradscope.analyze` builds them once
from its :class:`~gradscope.AnalyzeConfig` (:meth:`~gradscope.AnalyzeConfig.load_options`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import UsageError

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class LoadOptions:
    """What loading a model and building its batches takes (the fields of ``AnalyzeConfig`` of the same names).

    ``batch_size`` samples per batch, ``batches`` batches, ``seq_len`` tokens per sequence (None: the model's
    default); ``text`` a text file and ``images`` a directory of images instead of the built-in inputs,
    ``image_size`` the side of synthetic images (None: the weights' own); ``arch`` the torchvision
    architecture of a checkpoint file; ``device`` and ``dtype`` as ``AnalyzeConfig`` takes them; ``seed``
    draws every random input, label and mask.
    """

    batch_size: int
    batches: int
    seq_len: Optional[int]
    seed: int
    device: str
    dtype: str
    text: Optional[str]
    images: Optional[str]
    image_size: Optional[int]
    arch: Optional[str]
    trust_remote_code: bool

    @property
    def samples(self) -> int:
        """Samples over all batches."""
        return self.batch_size * self.batches


@dataclass
class Subject:
    """A loaded model with what it takes to measure it and its variants."""

    name: str
    source: str  # "huggingface", "torchvision", "checkpoint", "module" or "demo"
    model: nn.Module
    make_scratch: Callable[[], nn.Module]  # same architecture, the library's own initialization
    batches: list  # each on the model's device, the same for every variant
    loss_fn: LossFn  # loss_fn(model, batch) -> scalar tensor
    objective: str  # "masked-lm", "causal-lm", "surrogate-masked-lm", "surrogate-causal-lm", "cross-entropy",
    #                 "multiple-negatives-ranking", "mean-squared-error", ... or "custom"
    inputs: str  # where the batch came from, in words
    meta: dict = field(default_factory=dict)


def offline() -> bool:
    """True when HF_HUB_OFFLINE is set (the command line's ``--offline`` sets it): nothing is downloaded then,
    from any source."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else CPU; ``cuda`` without a GPU is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"`device={device!r}`: no CUDA GPU is visible; use `device='cpu'` or `device='auto'`")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UsageError(f"`device={device!r}`: not a device; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"`device={device!r}`: {count} CUDA GPU{'s are' if count > 1 else ' is'} visible "
                         f"(cuda:0 to cuda:{count - 1}); choose one of them")
    return resolved


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise UsageError(f"`dtype={name!r}`: choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def to_device(batch: Any, device: torch.device, dtype: Optional[torch.dtype] = None) -> Any:
    """Move a batch (tensor, or dict/list/tuple of them) to ``device``; floating tensors also to ``dtype``."""
    if isinstance(batch, torch.Tensor):
        if dtype is not None and batch.is_floating_point():
            return batch.to(device=device, dtype=dtype)
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, dtype) for v in batch)
    return batch


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def is_local_path(spec: str) -> bool:
    """True for what can only name a local file: a Hugging Face hub id is ``name`` or ``org/name``, never more.

    So ``/abs``, ``./rel``, ``../up``, ``~/home``, ``a/b/c`` and ``model.pt`` are paths even when nothing
    is there, and their error is "no such file", not a hub lookup.
    """
    return (spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1 or spec.endswith("/")
            or Path(spec).suffix in CHECKPOINT_SUFFIXES)
