"""The examples in gradscope's docstrings run, and show what they say.

Every module of the package is searched (``__main__`` runs the command line when imported, so it is left
out); an example that needs a model hub or a file it cannot have is marked ``# doctest: +SKIP`` where it is
written.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gradscope

MODULES = sorted(m.name for m in pkgutil.walk_packages(gradscope.__path__, "gradscope.")
                 if m.name != "gradscope.__main__")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(name: str) -> int:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return sum(len(test.examples) for test in finder.find(importlib.import_module(name)))


@pytest.mark.parametrize("name", [m for m in MODULES if _examples(m)])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"


def test_the_examples_are_found():
    # The modules whose docstrings have examples today: a finder that found none would pass the test above.
    found = {m for m in MODULES if _examples(m)}
    assert {"gradscope.stats", "gradscope.errors", "gradscope.blocks", "gradscope.analysis"} <= found
