"""Training integrations: Hugging Face Trainer, TensorBoard, Lightning.

Each lives in its own module and imports its framework only when used:
``from gradscope.integrations import GradscopeCallback`` imports transformers.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "GradscopeCallback": ".hf",
    "add_gradscope_callback": ".hf",
    "TensorBoardSink": ".tensorboard",
    "GradscopeLightningCallback": ".lightning",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
