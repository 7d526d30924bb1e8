"""Training integrations: Hugging Face Trainer, TensorBoard, Lightning.

Each lives in its own module and imports its framework only when used:
``from gradscope.integrations import GradscopeCallback`` imports transformers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GradscopeCallback": ".hf",
    "add_gradscope_callback": ".hf",
    "TensorBoardSink": ".tensorboard",
    "GradscopeLightningCallback": ".lightning",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope.integrations' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = list(_LAZY)
