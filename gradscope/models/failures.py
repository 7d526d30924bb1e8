"""Loader exceptions, read for the one line the command line prints.

Libraries raise with messages written for a traceback: several paragraphs,
terminal colour codes, or nothing at all (``EOFError`` from an empty file).
These helpers take the part a user can act on, so that an error says what
went wrong and what to do in one clean line.
"""

from __future__ import annotations

import re
from typing import Optional

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# torch's wordings for a global that a weights-only load refuses: "Unsupported global: GLOBAL a.b" (an unknown
# class), "unsupported GLOBAL posix.system whose module posix is blocked" (a module it never allows)
_PICKLED_GLOBAL = re.compile(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)")
MAX_REASON = 160


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message without colour codes; the type name when it has none
    (or when its ``__str__`` itself fails)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    for line in _ANSI.sub("", text).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def with_type(exc: BaseException) -> str:
    """``Type: first line`` (:func:`first_line`), or the type name alone for an exception without a message.

    >>> with_type(RuntimeError("shapes differ\\nmore detail")), with_type(EOFError())
    ('RuntimeError: shapes differ', 'EOFError')
    """
    line, name = first_line(exc), type(exc).__name__
    return name if line == name else f"{name}: {line}"


def short_reason(exc: BaseException) -> str:
    """:func:`first_line`, kept to its first sentence when long, and never cut inside a word.

    Messages that are only a key or a number (``KeyError: 101``) keep their type name, or they say nothing.
    """
    line = first_line(exc)
    if line == type(exc).__name__:
        return line
    if isinstance(exc, (KeyError, IndexError)) or len(line) < 12 and " " not in line:
        line = f"{type(exc).__name__}: {line}"
    if len(line) > MAX_REASON and ". " in line:
        line = line[:line.index(". ") + 1]
    return clip(line, MAX_REASON)


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters at a space, marked with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def pickled_global(exc: BaseException) -> Optional[str]:
    """The class or function a weights-only ``torch.load`` refused to import, or None when it refused none.

    torch raises ``UnpicklingError`` both for a checkpoint that needs code (it names the global) and
    for a file that is not a pickle at all; only the first is a refusal on safety grounds.
    """
    match = _PICKLED_GLOBAL.search(_ANSI.sub("", str(exc)))
    return match.group(1) if match else None


def needs_code_message(what: str, exc: BaseException, fix: str) -> str:
    """Why ``what`` is refused when loading it would run code from the file, and ``fix``."""
    name = pickled_global(exc)
    refers = f" (it refers to {name})" if name else ""
    return (f"refusing {what}: it needs pickled code to load{refers}, and gradscope loads weights only "
            f"(safetensors, or torch.load with weights_only=True) so that no code from a file runs; {fix}")
