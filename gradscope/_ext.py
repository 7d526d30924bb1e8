"""Finds gradscope's compiled op and says plainly why it is missing.

The compiled op lives in two extension modules built by ``setup.py``:
``gradscope._C`` (the op's schema and its CPU kernel) and ``gradscope._C_cuda``
(its CUDA kernel). Where either cannot be used, gradscope tells apart three
cases, says which in one warning line, and runs the PyTorch reference path:

- *disabled*: ``GRADSCOPE_DISABLE_EXT=1`` is set;
- *not built*: the module is not there (an install without a compiler, a
  checkout that was never built);
- *built for another torch*: the build record names a torch other than the
  one running (loading it could crash the interpreter, so it is not loaded).

Loading initializes no CUDA: whether a GPU is visible is asked only when a
CUDA tensor arrives.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._reference import Stat

logger = logging.getLogger("gradscope")

BUILD_INFO_PATH = Path(__file__).with_name("_build_info.json")
DISABLE_ENV = "GRADSCOPE_DISABLE_EXT"
REBUILD_HINT = "rebuild with `pip install --no-build-isolation .` in a gradscope checkout"
OPS = ("grad_stats", "diff_sumsq", "copy_sumsq")  # what csrc/ops.cpp defines: a build from older sources lacks some


@dataclass(frozen=True)
class ExtensionStatus:
    """What was loaded, and if not, why."""

    cpu: bool  # gradscope._C: schema + CPU kernel
    cuda: bool  # gradscope._C_cuda: CUDA kernel
    state: str  # "loaded", "disabled", "not-built", "torch-mismatch", "load-failed" or "stale"
    reason: str  # why the CPU kernel is unavailable ("" when loaded)
    cuda_reason: str  # why the CUDA kernel is unavailable ("" when loaded)
    build_info: dict = field(default_factory=dict)

    def reason_for(self, device_type: str) -> str:
        """Why the fused op cannot run on ``device_type`` ("" if it can)."""
        if device_type in ("cpu", "meta"):
            return self.reason
        if device_type == "cuda":
            return self.reason or self.cuda_reason
        return f"gradscope has no kernel for {device_type} tensors"

    def fused_for(self, device_type: str) -> bool:
        return not self.reason_for(device_type)


def _read_build_info() -> dict:
    try:
        return json.loads(BUILD_INFO_PATH.read_text())
    except (OSError, ValueError):
        return {}


def _import_module(name: str) -> str:
    """Import an extension module; return "" on success, else a one-line reason."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return f"{name} is not built; {REBUILD_HINT}"
    except (ImportError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{name} failed to load ({first_line}); {REBUILD_HINT}"
    return ""


def _load() -> ExtensionStatus:
    info = _read_build_info()
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        reason = f"{DISABLE_ENV}=1 is set"
        return ExtensionStatus(False, False, "disabled", reason, reason, info)

    built_for = info.get("torch")
    if built_for and built_for != torch.__version__:
        reason = f"gradscope was built for torch {built_for} but torch {torch.__version__} is running; {REBUILD_HINT}"
        return ExtensionStatus(False, False, "torch-mismatch", reason, reason, info)

    reason = _import_module("gradscope._C")
    if reason:
        state = "not-built" if "is not built" in reason else "load-failed"
        return ExtensionStatus(False, False, state, reason, reason, info)
    missing = [op for op in OPS if not hasattr(torch.ops.gradscope, op)]
    if missing:
        reason = f"gradscope._C was built from older sources (it lacks {', '.join(missing)}); {REBUILD_HINT}"
        return ExtensionStatus(False, False, "stale", reason, reason, info)
    _register_fake()

    if torch.version.cuda is None:
        cuda_reason = f"torch {torch.__version__} is a build without CUDA"
    elif not info.get("cuda"):
        cuda_reason = (
            "gradscope was built without its CUDA kernel (no GPU was visible at build time); "
            "rebuild with FORCE_CUDA=1 `pip install --no-build-isolation .`"
        )
    else:
        cuda_reason = _import_module("gradscope._C_cuda")
    return ExtensionStatus(True, not cuda_reason, "loaded", "", cuda_reason, info)


def _register_fake() -> None:
    # The fake (meta) kernel: right shape and dtype, no data touched. It makes
    # the op traceable by torch.compile and runnable on meta tensors.
    @torch.library.register_fake("gradscope::grad_stats")
    def _grad_stats_fake(tensors):
        if len(tensors) == 0:
            return torch.empty((0, len(Stat)), dtype=torch.float64)
        return tensors[0].new_empty((len(tensors), len(Stat)), dtype=torch.float64)

    @torch.library.register_fake("gradscope::diff_sumsq")
    def _diff_sumsq_fake(a, b):
        return torch.empty((len(a),), dtype=torch.float64, device=a[0].device if len(a) else "cpu")

    @torch.library.register_fake("gradscope::copy_sumsq")
    def _copy_sumsq_fake(src, dst):
        return torch.empty((len(src),), dtype=torch.float64, device=src[0].device if len(src) else "cpu")


STATUS = _load()
if not STATUS.cpu:
    logger.warning("gradscope: compiled op unavailable: %s; using the PyTorch reference path", STATUS.reason)

# The fast entry for the common call (csrc/module.cpp): a list of dense float
# tensors on one CPU device, or one CUDA device when the CUDA kernel is loaded.
# It returns (table, numel packed as native int64 bytes) or None for any other
# list. None here: not loaded.
dense_call = getattr(importlib.import_module("gradscope._C"), "_dense_grad_stats", None) if STATUS.cpu else None


def cpu_simd() -> str | None:
    """The SIMD path the CPU kernel takes on this machine (``avx2`` or ``generic``); None when it is not loaded."""
    return importlib.import_module("gradscope._C").cpu_simd() if STATUS.cpu else None

_warned_devices: set[str] = set()


def warn_fallback_once(device_type: str) -> None:
    """One warning line the first time a device type falls back to the reference path."""
    if STATUS.cpu and device_type not in _warned_devices:
        _warned_devices.add(device_type)
        logger.warning(
            "gradscope: no compiled kernel for %s tensors: %s; using the PyTorch reference path",
            device_type,
            STATUS.reason_for(device_type),
        )
