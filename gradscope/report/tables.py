"""The report's tables as flat rows: what CSV files and pandas DataFrames are made of.

One flat table per part of the report. Nested values are flattened: a dict
becomes ``<key>_<subkey>`` columns (``decay_factor_per_block``), a list
becomes its JSON text (``shape`` is ``[768, 768]``). Columns keep the
report's order (``name``/``block`` and ``depth`` first).
"""

from __future__ import annotations

import csv
import io
import json
import math

from ..errors import GradscopeError

TABLES = ("params", "blocks", "summaries", "findings", "comparisons", "comparison_blocks", "variants", "series",
          "training_runs", "training_loss")


def _flat(row: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "_"))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _rows(report, table: str) -> list[dict]:
    if table == "comparisons":
        return [{k: v for k, v in c.items() if k != "blocks"} | {"blocks": len(c.get("blocks") or [])}
                for c in report.comparisons]
    if table == "comparison_blocks":
        return [{"a": c["a"], "b": c["b"], **r} for c in report.comparisons for r in c.get("blocks") or []]
    runs = (report.training or {}).get("runs") or []  # gradscope demo --train: one row per run, one per step
    if table == "training_runs":
        return [{k: v for k, v in run.items() if k != "loss"} for run in runs]
    if table == "training_loss":
        return [{"variant": run["variant"], "optimizer": run["optimizer"], "step": step, "loss": loss}
                for run in runs for step, loss in enumerate(run["loss"], start=1)]
    return list(getattr(report, table))


def table(report, name: str) -> tuple[list[str], list[dict]]:
    """(columns, flat rows) of one table; every row has every column (None where a row lacks it)."""
    if name not in TABLES:
        raise KeyError(f"no table {name!r}; tables: {', '.join(TABLES)}")
    rows = [_flat(r) for r in _rows(report, name)]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, [{c: r.get(c) for c in columns} for r in rows]


# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision; inf reads back as inf in pandas and float()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        # Text comes from the model (parameter and module names): a leading
        # quote keeps a spreadsheet from running it. Numbers are never quoted.
        return "'" + value
    return str(value)


def render_csv(report) -> dict[str, bytes]:
    """One ``<table>.csv`` per table that has rows (RFC 4180 quoting, UTF-8, header row)."""
    files = {}
    for name in TABLES:
        columns, rows = table(report, name)
        if not rows:
            continue
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(columns)
        writer.writerows([_cell(r[c]) for c in columns] for r in rows)
        files[f"{name}.csv"] = buffer.getvalue().encode("utf-8")
    return files


def to_pandas(report, name=None):
    """A pandas DataFrame of one table, or a dict of all non-empty tables when ``name`` is None."""
    try:
        import pandas as pd  # optional: imported only when a DataFrame is asked for
    except ImportError:
        raise GradscopeError("report.to_pandas() needs pandas, which is not installed: pip install pandas "
                             "(or read the CSV files with the csv module)") from None

    def frame(table_name: str):
        columns, rows = table(report, table_name)
        return pd.DataFrame(rows, columns=columns)

    if name is not None:
        return frame(name)
    return {t: frame(t) for t in TABLES if _rows(report, t)}
