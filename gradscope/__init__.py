"""gradscope: gradient-flow analysis for PyTorch models.

The public API is imported lazily so that ``import gradscope`` stays light: it
loads the compiled op (or says why it cannot), initializes no CUDA, and imports
neither transformers, torchvision nor matplotlib.
"""

from __future__ import annotations

import importlib

from . import _ext  # noqa: F401  (finds the compiled op at import, as documented)
from ._reference import STAT_NAMES
from .stats import GradStats, grad_stats

__version__ = "0.1.0"

# name -> module that defines it, imported on first use.
# The analyzer lives in analyzer.py, not analyze.py: importing a submodule named
# like the function would replace gradscope.analyze with the module.
_LAZY = {
    "analyze": ".analyzer",
    "AnalyzeConfig": ".analyzer",
    "Report": ".report",
    "GradientMonitor": ".monitor",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["GradStats", "STAT_NAMES", "grad_stats", "__version__", *_LAZY]
