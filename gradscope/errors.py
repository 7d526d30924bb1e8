"""Errors that the command line turns into one line and an exit code."""

from __future__ import annotations

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
