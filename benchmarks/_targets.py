"""How a target row of the benchmarks' JSON reads as text (standard library only: gpu_check_summary.py uses it too).

A row: ``{"target": words, "status": "PASS"|"FAIL"|..., "value": x, "value_op": x or None, "case": name?}``.
"""

from __future__ import annotations


def measured(t: dict, label: str = "") -> str:
    """`` (<label>value; raw op value)``, or "" for a row that was not measured."""
    if "value" not in t:
        return ""
    op = f"; raw op {t['value_op']:.2f}" if t.get("value_op") is not None else ""
    return f" ({label}{t['value']:.2f}{op})"


def target_line(t: dict) -> str:
    """``<status> <case>: <target> (value; raw op value)``."""
    case = f"{t['case']}: " if t.get("case") else ""
    return f"{t['status']:<4} {case}{t['target']}{measured(t)}"
