"""Errors that the command line turns into one line and an exit code, and how such a line names a typo."""

from __future__ import annotations

import difflib
from typing import Iterable

EXIT_OK = 0
EXIT_USAGE = 2  # bad usage or bad input
EXIT_LOAD = 3  # a model could not be loaded


class GradscopeError(Exception):
    """An error the user can act on; its message says what to do."""

    exit_code = EXIT_USAGE


class UsageError(GradscopeError):
    exit_code = EXIT_USAGE


class ModelLoadError(GradscopeError):
    exit_code = EXIT_LOAD


# difflib's similarity, 0 to 1: "no_norm" and "no-norm" 0.86, "tahn" and "tanh" 0.75, "--foo" and "--force" 0.67
CLOSE_MATCH_CUTOFF = 0.7


def did_you_mean(given: str, known: Iterable[str]) -> str:
    """What a message says after ``given``, a name that is not one of ``known``: the closest known name where
    one is close enough to be a typo of it, else nothing.

    >>> "no_norm" + did_you_mean("no_norm", ("no-norm", "no-residual"))
    'no_norm (did you mean no-norm?)'
    >>> did_you_mean("swish", ("sigmoid", "tanh"))
    ''
    """
    close = difflib.get_close_matches(given, list(known), n=1, cutoff=CLOSE_MATCH_CUTOFF)
    return f" (did you mean {close[0]}?)" if close else ""
