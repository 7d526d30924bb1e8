"""The report as text for a terminal: a summary table, the flow per block, findings, comparisons.

It reads the :class:`~gradscope.report.Report` only; nothing is recomputed here. Given a width (the command
line passes the terminal's, :func:`terminal_width`), a table wider than that is printed as several, as wide
tabular output is: each repeats the columns that name a row (variant; depth and block) and takes as many of
the other columns, in order, as fit. A table that fits is printed as it is.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from typing import Optional

from .fmt import (MAX_BLOCK_ROWS, TREND_HEADER, adapter_line, decay_text, flow_table, grouped_findings,
                  num, shown_depths, skipped_lines, summary_legend, title)
from .training import HEADER, training_note, training_rows

_num = num
FALLBACK_COLUMNS = 100  # where stdout is no terminal (a file, a pipe) and COLUMNS is not set


def terminal_width() -> int:
    """The width to print to: ``COLUMNS`` where it is set, else the terminal's, else 100 columns."""
    return shutil.get_terminal_size((FALLBACK_COLUMNS, 24)).columns


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]


def _column_groups(widths: list[int], keys: int, width: int) -> list[list[int]]:
    """The columns after the first ``keys`` split, in order, into groups that fit in ``width`` beside those
    ``keys`` columns (two spaces between columns); a column too wide to fit even alone is a group of its own."""
    keys_width = sum(widths[:keys]) + 2 * (keys - 1)
    groups: list[list[int]] = [[]]
    used = keys_width
    for i in range(keys, len(widths)):
        if groups[-1] and used + 2 + widths[i] > width:
            groups.append([])
            used = keys_width
        groups[-1].append(i)
        used += 2 + widths[i]
    return groups


def _tables(header: list[str], rows: list[list[str]], keys: int, width: Optional[int]) -> list[str]:
    """:func:`_table`, or, where it is wider than ``width``, one table per group of columns
    (:func:`_column_groups`), each with the first ``keys`` columns, a blank line between them."""
    if width is None:
        return _table(header, rows)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines: list[str] = []
    for group in _column_groups(widths, keys, width):
        columns = [*range(keys), *group]
        lines += [""] if lines else []
        lines += _table([header[i] for i in columns], [[row[i] for i in columns] for row in rows])
    return lines


def _wrapped(text: str, width: Optional[int]) -> list[str]:
    """A line of prose as lines of at most ``width`` characters, broken after a clause (``;`` or ``.``) where
    that is enough, else between words (a word longer than ``width`` stays whole)."""
    if width is None or len(text) <= width:
        return [text]
    lines: list[str] = []
    for clause in re.split(r"(?<=[;.]) ", text):
        if lines and len(lines[-1]) + 1 + len(clause) <= width:
            lines[-1] += " " + clause
        else:
            lines += textwrap.wrap(clause, width, break_long_words=False, break_on_hyphens=False)
    return lines


def summary_lines(report, width: Optional[int] = None) -> list[str]:
    """A row per variant (verdict, loss, first/last, the decay fit) and the legend under it, fitted to ``width``."""
    header = ["variant", "verdict", "loss", "blocks", "first/last", "factor/block", "R^2", TREND_HEADER, "no grad"]
    rows = []
    for s in report.summaries:
        decay = s.get("decay") or {}
        rows.append([
            s["variant"], s["verdict"], _num(s.get("loss"), ".4g"), str(s.get("blocks")),
            _num(s.get("first_to_last_ratio")), _num(decay.get("factor_per_block")), _num(decay.get("r2"), ".2f"),
            decay_text(s.get("decay")), str(len(s.get("params_no_grad") or [])),
        ])
    return [*_tables(header, rows, 1, width), *_wrapped(summary_legend(report), width)]


def flow_lines(report, width: Optional[int] = None) -> list[str]:
    """dL/dh (or parameter-gradient) L2 per block, one column per variant (see :func:`.fmt.flow_table`);
    where that is wider than ``width``, one table per group of variants."""
    names = report.variant_names
    table = flow_table({n: report.block_rows(n) for n in names})
    if not table.rows:
        return []
    signal = {s["variant"]: s.get("flow_signal") for s in report.summaries}
    key = {n: "act_grad_l2" if signal.get(n) == "dL/dh" else "grad_l2" for n in names}
    rows = [[str(r.depth), r.block, *[r.text(n, key[n], _num) for n in names]]
            for r in (table.rows[i] for i in shown_depths(len(table.rows), MAX_BLOCK_ROWS))]
    kinds = sorted({signal.get(n) or "parameter gradient" for n in names})
    heading = f"gradient L2 per block ({' / '.join(kinds)}; depth 0 is nearest the input)"
    return [heading, *_tables(["depth", "block", *names], rows, 2, width), *([table.note] if table.note else [])]


def finding_lines(report) -> list[str]:
    """Findings, most serious first; one that several variants share word for word is printed once."""
    lines = []
    for (severity, message, evidence, fix), variants in grouped_findings(report):
        lines.append(f"[{severity}] {', '.join(variants)}: {message}")
        lines.append(f"    evidence: {evidence}")
        if fix:
            lines.append(f"    fix: {fix}")
    return lines


def _ratio(value) -> str:
    """``x1.23``, or ``n/a`` where no block has the value in both (runs of a repeated block, a monitor's dL/dh)."""
    shown = _num(value)
    return "n/a" if shown == "-" else f"x{shown}"


def training_lines(report, width: Optional[int] = None) -> list[str]:
    """``gradscope demo --train``: what each variant learned with each optimizer, beside its verdict (see
    :mod:`.training`), and a blank line after it; nothing for a report without training."""
    note = training_note(report)
    if note is None:
        return []
    return ["what each variant learned in training", *_tables(HEADER, training_rows(report), 1, width),
            *_wrapped(note, width), ""]


def comparison_lines(report) -> list[str]:
    verdict = {s["variant"]: s["verdict"] for s in report.summaries}
    lines = []
    for c in report.comparisons:
        va, vb = verdict.get(c["a"]), verdict.get(c["b"])
        change = f"; verdict changed: {vb} -> {va}" if va and vb and va != vb else ""
        lines.append(
            f"{c['a']} / {c['b']}: parameter gradient {_ratio(c['grad_l2_ratio_geomean'])}, "
            f"dL/dh {_ratio(c['act_grad_l2_ratio_geomean'])} (geometric mean over {len(c['blocks'])} shared blocks)"
            + change
        )
    return lines


def render_text(report, width: Optional[int] = None) -> str:
    """The whole terminal view as one string; its tables fit in ``width`` columns where they can (None: no
    limit)."""
    meta = report.meta
    if meta.get("kind") == "comparison":
        header = [f"gradscope: {title(report)}",
                  *(f"  {i['label']}: {i.get('model')} ({i.get('path')})" for i in meta.get("reports", []))]
    else:
        header = [f"gradscope: {meta.get('model')} ({meta.get('source')}, objective {meta.get('objective')}, "
                  f"{meta.get('device')}, {meta.get('dtype')}, grad_stats {meta.get('backend')})",
                  *([f"model: {adapter}"] if (adapter := adapter_line(meta)) else []),
                  *([f"objective: {meta['objective_note']}"] if meta.get("objective_note") else []),
                  f"inputs: {meta.get('inputs')}", *skipped_lines(meta)]
    parts = [
        *header,
        "",
        *(summary_lines(report, width) + [""] if report.summaries else []),
        *training_lines(report, width),
        *flow_lines(report, width),
        "",
        *finding_lines(report),
    ]
    comparisons = comparison_lines(report)
    if comparisons:
        parts += ["", *comparisons]
    return "\n".join(parts) + "\n"
