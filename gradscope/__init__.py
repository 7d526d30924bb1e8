"""gradscope: gradient-flow analysis for PyTorch models.

The public API is imported lazily so that ``import gradscope`` stays light: it
loads the compiled op (or says why it cannot), initializes no CUDA, and imports
neither transformers, torchvision nor matplotlib.
"""

from __future__ import annotations

from . import _ext  # noqa: F401  (finds the compiled op at import, as documented)
from ._lazy import lazy_attributes
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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = ["GradStats", "STAT_NAMES", "grad_stats", "__version__", *_LAZY]
