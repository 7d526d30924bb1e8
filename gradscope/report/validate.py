"""Is this JSON a gradscope report? The structure of ``gradscope.report/1``, checked when a report is read.

``gradscope compare`` and :meth:`~gradscope.report.Report.load` read files a user points at: a file of
another tool, a hand-edited report, a truncated one. Checking the structure once, here, turns what would be a
KeyError or a TypeError deep in a renderer into one sentence naming the field (``blocks[3].grad_l2 is a string
('abc'), not a number or null``). Only what a reader relies on is checked: the keys every writer writes, and the
type of each documented field that is present (fields may be added within ``/1``; unknown keys pass).
``docs/report-schema.md`` is the field-by-field description.
"""

from __future__ import annotations

import re
from typing import Optional

SCHEMA_PATTERN = re.compile(r"gradscope\.report/(\d+)")
TOP_LEVEL = ("meta", "variants", "summaries", "findings", "comparisons", "blocks", "params", "series")

# Kinds: "str", "int" (a JSON integer), "num" (any JSON number), "bool", "obj", "list"; a "?" allows null.
_NUMBERS_OR_NULL = ("grad_l2", "grad_mean", "grad_std", "grad_rms", "grad_meanabs", "grad_maxabs", "grad_zero_frac",
                    "weight_l2", "grad_to_weight", "act_grad_l2", "act_grad_rms", "act_grad_maxabs")
_COUNTS = ("params", "params_no_grad", "numel", "grad_nonfinite", "act_grad_nonfinite", "output_nonfinite")
_ROW_FIELDS = {k: "num?" for k in _NUMBERS_OR_NULL} | {k: "num" for k in _COUNTS} | {"step": "int"}

# table -> (required keys with their kind, optional keys with their kind)
TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "variants": ({"name": "str"}, {"description": "str", "base": "str?", "changes": "obj", "architecture": "obj",
                                   "report": "str"}),
    "summaries": (
        {"variant": "str", "verdict": "str"},
        {"loss": "num?", "blocks": "int", "first_block": "str?", "last_block": "str?", "flow_signal": "str",
         "first_to_last_ratio": "num?", "param_first_to_last_ratio": "num?", "decay": "obj?", "total_grad_l2": "num?",
         "grad_nonfinite": "num", "first_nonfinite": "obj?", "dead_blocks": "list", "params": "int",
         "params_no_grad": "list", "seconds": "num?", "repeated_blocks": "obj", "blocks_no_grad": "list",
         "zero_weights": "list", "stacks": "list"},
    ),
    "findings": ({"variant": "str", "severity": "str", "message": "str", "evidence": "str"},
                 {"kind": "str", "block": "str?", "fix": "str?"}),
    "comparisons": ({"a": "str", "b": "str", "blocks": "list"},
                    {"grad_l2_ratio_geomean": "num?", "act_grad_l2_ratio_geomean": "num?", "matched_by": "str"}),
    "blocks": ({"block": "str", "depth": "int", "variant": "str"}, _ROW_FIELDS),
    "params": ({"name": "str", "variant": "str"},
               {**_ROW_FIELDS, "depth": "int?", "block": "str?", "shape": "list", "has_grad": "bool"}),
    "series": ({"step": "int"}, {**_ROW_FIELDS, "block": "str?", "depth": "int?", "grad_l2_post_clip": "num?"}),
}
# The meta fields a renderer reads as text (the header names the model); all optional.
_META = ({}, {"model": "str?", "source": "str?", "objective": "str?", "inputs": "str?", "device": "str?",
              "created": "str?", "kind": "str?", "warnings": "list"})
_DECAY = ({"trend": "str"}, {"slope_log10_per_block": "num?", "factor_per_block": "num?", "r2": "num?",
                             "halves_every_blocks": "num?", "doubles_every_blocks": "num?", "points": "int"})
_RATIO_ROW = ({"block": "str", "depth": "int"}, {"grad_l2_ratio": "num?", "act_grad_l2_ratio": "num?"})

_KIND_WORDS = {"str": "a string", "int": "an integer", "num": "a number", "bool": "true or false",
               "obj": "an object", "list": "a list"}


def _is(value, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _is(value, kind[:-1])
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "obj": dict, "list": list}[kind])


def describe_json(value) -> str:
    """How a wrong value reads in a message: its JSON type and a short preview."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    text = repr(value)
    preview = text if len(text) <= 40 else text[:37] + "..."
    return names.get(type(value), type(value).__name__) + ("" if value is None else f" ({preview})")


def _row_problem(row, where: str, spec: tuple[dict[str, str], dict[str, str]]) -> Optional[str]:
    if not isinstance(row, dict):
        return f"{where} is {describe_json(row)}, not an object"
    required, optional = spec
    for key, kind in required.items():
        if key not in row:
            return f"{where} has no {key!r}"
    for key, kind in (required | optional).items():
        if key in row and not _is(row[key], kind):
            wanted = _KIND_WORDS[kind.rstrip("?")] + (" or null" if kind.endswith("?") else "")
            return f"{where}.{key} is {describe_json(row[key])}, not {wanted}"
    return None


def _rows_problem(data: dict, table: str) -> Optional[str]:
    rows = data[table]
    if not isinstance(rows, list):
        return f"{table} is {describe_json(rows)}, not a list"
    for i, row in enumerate(rows):
        problem = _row_problem(row, f"{table}[{i}]", TABLES[table])
        if problem:
            return problem
        if table == "summaries" and isinstance(row.get("decay"), dict):
            problem = _row_problem(row["decay"], f"{table}[{i}].decay", _DECAY)
        elif table == "comparisons":
            problem = next((p for j, r in enumerate(row["blocks"])
                            if (p := _row_problem(r, f"{table}[{i}].blocks[{j}]", _RATIO_ROW))), None)
        if problem:
            return problem
    return None


def _reference_problem(data: dict) -> Optional[str]:
    """Rows must belong to a listed variant: renderers and compare look variants up by name."""
    names = [v["name"] for v in data["variants"]]
    if len(set(names)) < len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        return f"variant {duplicate!r} is listed twice in variants"
    known = set(names)
    for table, keys in (("summaries", ("variant",)), ("findings", ("variant",)), ("blocks", ("variant",)),
                        ("params", ("variant",)), ("comparisons", ("a", "b"))):
        for i, row in enumerate(data[table]):
            for key in keys:
                if row[key] not in known:
                    return f"{table}[{i}].{key} {row[key]!r} is not one of its variants ({', '.join(names) or 'none'})"
    return None


def schema_version(data) -> Optional[int]:
    """N of a ``gradscope.report/N`` schema string, else None."""
    schema = data.get("schema") if isinstance(data, dict) else None
    match = SCHEMA_PATTERN.fullmatch(schema) if isinstance(schema, str) else None
    return int(match.group(1)) if match else None


def structure_problem(data) -> Optional[str]:
    """What makes ``data`` (parsed JSON of a report with a ``/1`` schema) not a gradscope report, or None."""
    missing = [key for key in TOP_LEVEL if key not in data]
    if missing:
        return f"it has no {', '.join(repr(k) for k in missing)} (every gradscope report has them)"
    problem = _row_problem(data["meta"], "meta", _META)
    if problem:
        return problem
    for table in TABLES:
        problem = _rows_problem(data, table)
        if problem:
            return problem
    return _reference_problem(data)
