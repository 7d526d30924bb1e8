"""Bounds on what gradscope reads, checked before the work starts.

A file given to gradscope is read only if it is a regular file (a device such as
``/dev/zero``, a pipe or a socket could be read forever) and no larger than its
bound; past it, the error names the bound and how to raise it.

======================  ==========================  ==============================
what                    bound                       raise it with
======================  ==========================  ==============================
``text`` file           64 MiB                      ``GRADSCOPE_MAX_TEXT_MB``
``report.json``         1 GiB                       ``GRADSCOPE_MAX_REPORT_MB``
======================  ==========================  ==============================

The sizes an analysis is asked for are bounded too (:data:`ANALYZE_BOUNDS`), so a
mistyped ``batch_size=1000000000`` is refused at once instead of allocating
until the machine runs out of memory; ``GRADSCOPE_NO_SIZE_BOUNDS=1`` lifts them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from .errors import UsageError

MiB = 1 << 20
MAX_TEXT_BYTES = 64 * MiB  # a corpus for one analysis: a few batches of text are a few hundred kB
MAX_REPORT_BYTES = 1024 * MiB  # a training report of BERT-base over 2,000 steps is tens of MB


# AnalyzeConfig field -> (largest value, what it is). A gradient-flow measurement needs tens of samples of a
# model's ordinary input size; these leave room for far more than that.
ANALYZE_BOUNDS = {
    "batch_size": (4096, "samples per batch"),
    "batches": (1024, "batches"),
    "seq_len": (65536, "tokens per sequence"),
    "image_size": (4096, "pixels per image side"),
}
NO_SIZE_BOUNDS_ENV = "GRADSCOPE_NO_SIZE_BOUNDS"
MAX_LAYERS = 1024  # the deepest published models have a few hundred layers; a config past this is a typo or a trap
# An analysis holds a variant's weights and gradients, and the loaded model's while a variant is measured.
ANALYSIS_MEMORY_PER_WEIGHT_BYTE = 4


def bounds_lifted() -> bool:
    return os.environ.get(NO_SIZE_BOUNDS_ENV, "").strip() in ("1", "true", "yes")


def physical_memory() -> Optional[int]:
    """This machine's memory in bytes, where the system says (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_model_size(what: str, layers: int, weight_bytes: int) -> None:
    """UsageError, before the model is built, for a config with more layers than :data:`MAX_LAYERS` or a model
    whose analysis would need more memory than the machine has (``weight_bytes``: its weights' size)."""
    if bounds_lifted():
        return
    if layers > MAX_LAYERS:
        raise UsageError(f"{what}: its config asks for {layers} layers; gradscope builds at most {MAX_LAYERS} (check "
                         f"num_hidden_layers), or set {NO_SIZE_BOUNDS_ENV}=1 if you really mean it")
    memory, need = physical_memory(), weight_bytes * ANALYSIS_MEMORY_PER_WEIGHT_BYTE
    if memory is not None and need > memory:
        raise UsageError(f"{what}: its weights take {weight_bytes / 2**30:.3g} GiB, and analyzing it needs about "
                         f"{need / 2**30:.3g} GiB, more than this machine's {memory / 2**30:.3g} GiB; use a smaller "
                         f"model or `dtype='bfloat16'`, or set {NO_SIZE_BOUNDS_ENV}=1 to try anyway")


def check_size(name: str, value) -> None:
    """UsageError when ``value`` of the AnalyzeConfig field ``name`` exceeds its bound."""
    if value is None or bounds_lifted():
        return
    largest, what = ANALYZE_BOUNDS[name]
    if int(value) > largest:
        raise UsageError(f"`{name}={value}`: gradscope allows at most {largest} {what}; set "
                         f"{NO_SIZE_BOUNDS_ENV}=1 if you really need more")


def bound(default: int, env: str) -> int:
    """A bound in bytes: ``default``, or the MiB that environment variable ``env`` gives."""
    value = os.environ.get(env, "").strip()
    if not value:
        return default
    try:
        mib = float(value)
    except ValueError:
        raise UsageError(f"{env}={value!r}: give a number of MiB, e.g. {env}={default // MiB * 2}") from None
    if mib <= 0:
        raise UsageError(f"{env}={value!r}: give a positive number of MiB")
    return int(mib * MiB)


def read_bounded(path, what: str, limit: int, env: str) -> bytes:
    """The bytes of the regular file ``path``; UsageError (``what`` names it) for anything else or a file larger
    than ``limit`` bytes (``env`` raises the limit). OSError passes through for the caller to word."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a pipe must not block the open
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, a pipe or a socket)"
        raise UsageError(f"{what} {path} is {kind}; give a file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} {path} is larger than {limit / MiB:g} MiB, gradscope's bound for it; "
                         f"set {env} to a larger number of MiB to read it")
    return data
