"""Formatting shared by every renderer: numbers, labels, which blocks a long table shows.

Renderers format what the report holds; nothing here computes a statistic.
"""

from __future__ import annotations

import math
from typing import Optional

MAX_BLOCK_ROWS = 40  # text tables of longer models show evenly spaced blocks, the first and last always included


def num(x, spec: str = ".3g") -> str:
    """``1.23e-05``; ``-`` for a missing value (None or NaN), ``inf``/``-inf`` as such."""
    if x is None or isinstance(x, bool):
        return "-" if x is None else str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "-" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, int):
        return str(x)
    return format(x, spec)


def shown_depths(depth: int, max_rows: int = MAX_BLOCK_ROWS) -> list[int]:
    """Depths a text table shows: all of them, or ``max_rows`` evenly spaced ones (first and last included)."""
    if depth <= max_rows:
        return list(range(depth))
    step = (depth - 1) / (max_rows - 1)
    return sorted({round(i * step) for i in range(max_rows)})


def decay_text(decay: Optional[dict]) -> str:
    """``halves/1.2`` (blocks), ``doubles/3``, ``flat`` or ``-``: the decay fit in a table cell."""
    if not decay:
        return "-"
    if decay.get("trend") == "flat":
        return "flat"
    if decay.get("trend") == "shrinks":
        return f"halves/{num(decay.get('halves_every_blocks'), '.2g')}"
    return f"doubles/{num(decay.get('doubles_every_blocks'), '.2g')}"


def title(report) -> str:
    """What the report is about, in one line: the model, or the reports a comparison combines."""
    meta = report.meta
    if meta.get("kind") == "comparison":
        return "comparison of " + ", ".join(str(i.get("label")) for i in meta.get("reports", []))
    return str(meta.get("model") or "model")


def run_facts(report) -> list[tuple[str, str]]:
    """(label, value) pairs of run metadata, in reading order; absent facts are left out."""
    meta = report.meta
    if meta.get("kind") == "comparison":
        return [("report " + str(i.get("label")), f"{i.get('model')} ({i.get('path')}, created {i.get('created')})")
                for i in meta.get("reports", [])] + [("created", str(meta.get("created")))]
    versions = meta.get("versions") or {k: meta[k] for k in ("gradscope", "torch") if meta.get(k)}
    facts = [
        ("source", meta.get("source")),
        ("objective", meta.get("objective")),
        ("inputs", meta.get("inputs")),
        ("device", meta.get("device")),
        ("dtype", meta.get("dtype")),
        ("grad_stats backend", meta.get("backend")),
        ("seed", meta.get("seed")),
        ("steps recorded", meta.get("steps_recorded")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
        ("created", meta.get("created")),
        ("command", meta.get("command")),
    ]
    return [(k, str(v)) for k, v in facts if v not in (None, "", [])]
