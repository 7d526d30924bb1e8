"""Is this JSON a gradscope report? The structure of ``gradscope.report/1``, checked when a report is read.

``gradscope compare`` and :meth:`~gradscope.report.Report.load` read files a user points at: a file of
another tool, a hand-edited report, a truncated one. Checking the structure once, here, turns what would be a
KeyError or a TypeError deep in a renderer into one sentence naming the field (``blocks[3].grad_l2 is a string
('abc'), not a number or null``). Only what a reader relies on is checked: the keys every writer writes, and the
type of each documented field that is present (fields may be added within ``/1``; unknown keys pass).
``docs/report-schema.md`` is the field-by-field description. The rows, summaries, decay fits and findings are
checked against their records in :mod:`gradscope.records` (:func:`record_spec`), so the two never disagree.
"""

from __future__ import annotations

import re
from typing import Optional, Union, get_args, get_origin, get_type_hints

from ..records import SHAPES, BlockRow, Decay, Finding, ParamRow, Summary

SCHEMA_PATTERN = re.compile(r"gradscope\.report/(\d+)")
TOP_LEVEL = ("meta", "variants", "summaries", "findings", "comparisons", "blocks", "params", "series")

# Kinds: "str", "int" (a JSON integer), "num" (any JSON number), "bool", "obj", "list"; a "?" allows null.
_KINDS = {str: "str", int: "int", float: "num", bool: "bool", list: "list", dict: "obj"}


def _kind(hint) -> str:
    """The kind of a record field's annotation: ``Optional[float]`` is ``num?``, a nested record ``obj``."""
    if get_origin(hint) is Union:
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _kind(inner) + "?"
    if hasattr(hint, "__required_keys__"):  # a nested record (TypedDict)
        return "obj"
    return _KINDS[get_origin(hint) or hint]


def record_spec(record) -> tuple[dict[str, str], dict[str, str]]:
    """(required keys with their kind, optional keys with their kind) of a record of :mod:`gradscope.records`:
    its required keys are those every writer writes, the others may be absent (the monitor writes a subset)."""
    hints = get_type_hints(record)
    return ({k: _kind(hints[k]) for k in hints if k in record.__required_keys__},
            {k: _kind(hints[k]) for k in hints if k not in record.__required_keys__})


_BLOCK = record_spec(BlockRow)
# table -> (required keys with their kind, optional keys with their kind)
TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "variants": ({"name": "str"}, {"description": "str", "base": "str?", "changes": "obj", "architecture": "obj",
                                   "report": "str"}),
    "summaries": record_spec(Summary),
    "findings": record_spec(Finding),
    "comparisons": ({"a": "str", "b": "str", "blocks": "list"},
                    {"grad_l2_ratio_geomean": "num?", "act_grad_l2_ratio_geomean": "num?", "matched_by": "str"}),
    "blocks": _BLOCK,
    "params": record_spec(ParamRow),
    # the monitor's time series: a block row's fields per step, and a global row per step (block and depth null)
    # (block and depth are in every row, null in the global one: renderers read them)
    "series": ({"step": "int", "block": "str?", "depth": "int?"}, {**_BLOCK[0], **_BLOCK[1], "block": "str?",
                                                                   "depth": "int?", "grad_l2_post_clip": "num?"}),
}
# The meta fields a renderer reads as text (the header names the model); all optional.
_META = ({}, {"model": "str?", "source": "str?", "objective": "str?", "inputs": "str?", "device": "str?",
              "created": "str?", "kind": "str?", "warnings": "list", "reports": "list?", "versions": "obj?",
              "dtype": "str?", "backend": "str?", "command": "str?", "objective_note": "str?"})
# A comparison's reports, each with its own meta (a comparison of comparisons nests them).
_REPORT_ENTRY = ({}, {"label": "str?", "path": "str?", "model": "str?", "created": "str?", "meta": "obj?"})
MAX_NESTING = 32  # comparisons of comparisons of ...: far deeper than anyone compares
_DECAY = record_spec(Decay)
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
            problem = _row_problem(row["decay"], f"{table}[{i}].decay", _DECAY) or _shape_problem(
                row["decay"], f"{table}[{i}].decay")
        elif table == "series" and row["block"] is not None and row["depth"] is None:
            problem = f"{table}[{i}] is block {row['block']!r} at no depth (only the global row has none)"
        elif table == "comparisons":
            problem = next((p for j, r in enumerate(row["blocks"])
                            if (p := _row_problem(r, f"{table}[{i}].blocks[{j}]", _RATIO_ROW))), None)
        if problem:
            return problem
    return None


# The depths a profile's shape names: a step is between two blocks, a trough or a peak at one.
_SHAPE_DEPTHS = {"step": 2, "trough": 1, "peak": 1}


def _shape_problem(decay: dict, where: str) -> Optional[str]:
    """A decay whose shape renderers cannot word: an unknown shape, or a step, trough or peak without its depths."""
    shape = decay.get("shape")
    if shape is None:  # a report from before shapes: the renderers derive it
        return None
    if shape not in SHAPES:
        return f"{where}.shape {shape!r} is not one of {', '.join(SHAPES)}"
    at = decay.get("shape_at") or []
    if len(at) < _SHAPE_DEPTHS.get(shape, 0) or not all(_is(d, "int") for d in at):
        return f"{where}.shape_at {at!r} does not give the depths a {shape} is at"
    if shape in ("step", "trough", "peak", "noise", "uneven") and not _is(decay.get("shape_ratio"), "num"):
        return f"{where}.shape_ratio is {describe_json(decay.get('shape_ratio'))}, not the number a {shape} needs"
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


def _meta_problem(meta, where: str = "meta", depth: int = 0) -> Optional[str]:
    """What is wrong with a report's meta, a comparison's reports in it included, or None."""
    problem = _row_problem(meta, where, _META)
    if problem:
        return problem
    for i, warning in enumerate(meta.get("warnings") or []):
        if not isinstance(warning, str):
            return f"{where}.warnings[{i}] is {describe_json(warning)}, not a string"
    for name, version in (meta.get("versions") or {}).items():
        if not _is(version, "str?"):
            return f"{where}.versions.{name} is {describe_json(version)}, not a string or null"
    if meta.get("reports") and depth >= MAX_NESTING:
        return f"meta nests compared reports more than {MAX_NESTING} deep"
    for i, entry in enumerate(meta.get("reports") or []):
        problem = _row_problem(entry, f"{where}.reports[{i}]", _REPORT_ENTRY)
        if not problem and entry.get("meta") is not None:
            problem = _meta_problem(entry["meta"], f"{where}.reports[{i}].meta", depth + 1)
        if problem:
            return problem
    return None


# ``gradscope demo --train``'s optional section (docs/report-schema.md, "training"): what its renderers read.
_TRAINING = ({"steps": "int", "optimizers": "list", "runs": "list"},
             {"task": "str?", "loss_function": "str?", "batch_size": "int?", "eval_samples": "int?",
              "label_entropy": "num?", "seed": "int?", "seconds": "num?"})
_OPTIMIZER = ({"name": "str"}, {"label": "str?", "lr": "num?", "momentum": "num?"})
_RUN = ({"variant": "str", "optimizer": "str", "loss": "list"},
        {"initial_loss": "num?", "final_loss": "num?", "final_to_initial": "num?", "first_block": "str?",
         "last_block": "str?", "first_block_moved": "num?", "last_block_moved": "num?", "seconds": "num?"})


def _training_problem(training, variants: set) -> Optional[str]:
    """What is wrong with a report's ``training`` section (absent or empty: nothing), or None."""
    if not training:
        return None
    problem = _row_problem(training, "training", _TRAINING)
    for i, entry in enumerate(training.get("optimizers", []) if not problem else []):
        problem = problem or _row_problem(entry, f"training.optimizers[{i}]", _OPTIMIZER)
    for i, run in enumerate(training.get("runs", []) if not problem else []):
        problem = problem or _row_problem(run, f"training.runs[{i}]", _RUN)
        if not problem and run["variant"] not in variants:
            problem = f"training.runs[{i}].variant {run['variant']!r} is not one of its variants"
        bad = [v for v in run["loss"] if not _is(v, "num?")] if not problem else []
        if bad:
            problem = f"training.runs[{i}].loss holds {describe_json(bad[0])}, not a number or null"
    return problem


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
    problem = _meta_problem(data["meta"])
    if problem:
        return problem
    for table in TABLES:
        problem = _rows_problem(data, table)
        if problem:
            return problem
    return _reference_problem(data) or _training_problem(data.get("training"), {v["name"] for v in data["variants"]})
