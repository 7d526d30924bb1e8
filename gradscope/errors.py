"""Errors that the command line turns into one line and an exit code, and how such a line names a typo.

A message speaks Python: it names an option as the keyword a Python caller passes, between backticks,
alone or with the value given: ``"`batch_size=1`: ...; raise `batch_size`"``. The command line shows the
same message with its flags (:func:`in_flag_terms`), so that each reader sees the names they typed.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Mapping

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


_OPTION = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def in_flag_terms(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each option it names (`` `name` `` or `` `name=value` ``) that has a flag in ``flags``
    written as that flag; other backticked names are left as they are. A setting the command line makes with
    a switch of its own (``HF_HUB_OFFLINE=1``: ``--offline``) is in ``flags`` with its value.

    >>> in_flag_terms("`batch_size=1`: too small; raise `batch_size`", {"batch_size": "--batch-size"})
    '--batch-size 1: too small; raise --batch-size'
    >>> in_flag_terms("the output exists; pass `force=True`", {"force": "--force"})
    'the output exists; pass --force'
    >>> in_flag_terms("`loss_fn` goes with an nn.Module", {"batch_size": "--batch-size"})
    '`loss_fn` goes with an nn.Module'
    >>> in_flag_terms("offline? `HF_HUB_OFFLINE=1` skips the hub", {"HF_HUB_OFFLINE=1": "--offline"})
    'offline? --offline skips the hub'
    """

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        setting = match.group(0)[1:-1]
        if setting in flags and value is not None:
            return flags[setting]
        if name not in flags:
            return match.group(0)
        if value is None or value == "True":  # a switch is named by its flag alone
            return flags[name]
        return f"{flags[name]} {value.strip(chr(39))}"  # --text notes.txt, not --text 'notes.txt'

    return _OPTION.sub(flag, message)


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
