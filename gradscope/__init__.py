"""gradscope: gradient-flow analysis for PyTorch models.

The public API is imported lazily so that ``import gradscope`` stays light: it
loads the compiled op (or says why it cannot), initializes no CUDA, and imports
neither transformers, torchvision nor matplotlib.
"""

from __future__ import annotations

import os as _os
import sys as _sys

# The one place the version is written: the build reads it from here, and submodules import it at their top
# (defined before any submodule is imported, so that they can).
__version__ = "0.1.0"

try:  # the heavy part (torch): Ctrl-C here, as the command starts, is answered as at any other moment
    from . import _ext  # noqa: F401  (finds the compiled op at import, as documented)
    from ._lazy import lazy_attributes
    from .stats import STAT_NAMES, GradStats, Stat, grad_stats
except KeyboardInterrupt:
    if _os.path.basename(_sys.argv[0]) != "gradscope":  # imported by a program: its interrupt to handle
        raise
    print("gradscope: interrupted", file=_sys.stderr)
    raise SystemExit(130) from None

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

__all__ = ["GradStats", "STAT_NAMES", "Stat", "grad_stats", "__version__", *_LAZY]
