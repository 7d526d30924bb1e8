"""The report as text for a terminal: a summary table, the flow per block, findings, comparisons; for a training
monitor's report, the run at a glance (:func:`monitor_lines`).

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

from ..records import VERDICTS
from .fmt import (MAX_BLOCK_ROWS, TRAINING_BLOCK_COLUMNS, TREND_HEADER, adapter_line, clip_sentence, decay_text,
                  flow_table, global_norm_sentence, global_rows, grouped_findings, last_block_values,
                  measured_stage, nonfinite_steps, num, shown_depths, skipped_lines, steps_recorded,
                  summary_legend, title, training_findings)
from .plots import HEATMAP_SERIES
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


def _wrapped(text: str, width: Optional[int], indent: str = "", hanging: str = "") -> list[str]:
    """A line of prose as lines of at most ``width`` characters, broken after a clause (``;`` or ``.``) where
    that is enough, else between words (a word longer than ``width`` stays whole); the first line starts with
    ``indent``, the others with ``indent + hanging``."""
    if indent or hanging:
        first, *rest = _wrapped(text, None if width is None else max(width - len(indent + hanging), 1))
        return [indent + first, *[indent + hanging + line for line in rest]]
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


MAX_LISTED = 10  # findings and non-finite steps a training view lists; a line counts the rest


def _listed(items: list, shown: int = MAX_LISTED) -> tuple[list, list[str]]:
    """The first ``shown`` of ``items``, and a line counting the others (none when all are shown)."""
    rest = len(items) - shown
    return items[:shown], ([f"  ... and {rest} more (report.json holds them all)"] if rest > 0 else [])


def _fixes(findings: list[dict], width: Optional[int]) -> list[str]:
    """Each distinct fix of ``findings`` once, in order."""
    fixes = dict.fromkeys(f["fix"] for f in findings if f.get("fix"))
    return [line for fix in fixes for line in _wrapped(f"fix: {fix}", width, "  ", "  ")]


def _messages(findings: list[dict], width: Optional[int]) -> list[str]:
    """Each finding's message, the first :data:`MAX_LISTED`; a verdict's named first where its words do not
    name it (``healthy: steps 1 to 20: gradient reaches every block``)."""
    shown, more = _listed(findings)
    named = [f"{f['kind']}: {f['message']}" if f.get("kind") in VERDICTS and f["kind"] not in f["message"]
             else f["message"] for f in shown]
    return [line for message in named for line in _wrapped(message, width, "  ", "  ")] + more


def monitor_header(report, width: Optional[int] = None) -> list[str]:
    """What was monitored: the model, the steps recorded and kept, which gradient, and how the run ended."""
    meta = report.meta
    recorded = steps_recorded(meta)
    every = meta.get("every")
    facts = [
        ("steps recorded", None if recorded is None else recorded
         + (f", one step in {every}" if isinstance(every, int) and every > 1 else "")),
        ("series", f"{meta['series_steps']} of the kept steps: evenly spaced, with the last, the largest global norm "
                   "and every step with a non-finite value" if meta.get("series_steps") not in
         (None, meta.get("steps_kept")) else None),
        ("gradients measured", measured_stage(meta)),
        ("distributed", meta.get("distributed") if meta.get("distributed") not in (None, "none") else None),
        ("frozen parameters, not monitored", meta.get("frozen_params") or None),
        ("stopped by", meta.get("stopped_by")),
    ]
    return [*_wrapped(f"gradscope: training of {meta.get('model') or 'a model'} (a GradientMonitor report)", width),
            *[line for label, value in facts if value is not None for line in _wrapped(f"{label}: {value}", width)]]


def global_norm_lines(report, width: Optional[int] = None) -> list[str]:
    """The global gradient norm over the run (:func:`.fmt.global_norm_sentence`) and what clipping did
    (:func:`.fmt.clip_sentence`)."""
    norms = global_norm_sentence(report.series, report.meta)
    if norms is None:
        return []
    clip = clip_sentence(report.series)
    if clip is None and report.meta.get("clip_stage") != "after_clip":
        clip = "No clip recorded at any step"
    return [*_wrapped(norms, width), *(_wrapped(clip + ".", width) if clip else [])]


def spike_lines(report, width: Optional[int] = None) -> list[str]:
    """The spikes of the global norm, in the words of their findings (step, factor over the running median, the
    block that carried most of it)."""
    spikes = training_findings(report)["spikes"]
    if not spikes:
        return ["spikes of the global norm: none found"]
    return [f"spikes of the global norm: {len(spikes)}", *_messages(spikes, width), *_fixes(spikes[:1], width)]


def nonfinite_lines(report, width: Optional[int] = None) -> list[str]:
    """A row per recorded step with NaN or Inf in a gradient (its step, how many values, the first block holding
    one in depth order, how many blocks), then the non-finite finding's words; nothing where there is none."""
    steps = nonfinite_steps(report.series)
    findings = training_findings(report)["nonfinite"]
    if not steps and not findings:
        return []
    shown, more = _listed(steps)
    outside = any(s.outside for s in steps)
    rows = [[str(s.step), str(s.values), s.first_block, f"{len(s.blocks)} of {s.of}",
             *([str(s.outside)] if outside else [])] for s in shown]
    header = ["step", "values", "first block", "blocks", *(["outside blocks"] if outside else [])]
    table = [*_tables(header, rows, 1, width), *more] if rows else []
    heading = (f"steps with a non-finite gradient value: {len(steps)} of {len(global_rows(report.series))} in the "
               "series")
    return [*_wrapped(heading, width), *table, *_messages(findings, width), *_fixes(findings, width)]


def flow_verdict_lines(report, width: Optional[int] = None) -> list[str]:
    """The verdicts over windows of steps and where they change, in the words of their findings; where there is
    none, that every window judged was healthy (a healthy run's report has no such finding)."""
    flow = training_findings(report)["flow"]
    if flow:
        return ["gradient flow over windows of steps:", *_messages(flow, width), *_fixes(flow, width)]
    judged = {r.get("step") for r in report.series if r.get("block") is not None} - {s.step for s in
                                                                                   nonfinite_steps(report.series)}
    if not judged:
        return []
    return _wrapped("gradient flow over windows of steps: healthy in every window judged (no verdict finding)",
                    width)


def monitor_block_lines(report, width: Optional[int] = None) -> list[str]:
    """The last recorded step's values per block (:func:`.fmt.last_block_values`): the gradient L2, and the
    weight L2, update ratio and dL/dh where the series holds them, blocks in depth order."""
    step, rows, taken = last_block_values(report.series)
    if step is None:
        return []
    columns = list(taken)
    header = ["depth", "block", *[TRAINING_BLOCK_COLUMNS[c] + ("" if taken[c] == step else f" (step {taken[c]})")
                                  for c in columns]]
    shown = shown_depths(len(rows), MAX_BLOCK_ROWS)
    cells = [[str(rows[i]["depth"]), rows[i]["block"], *[num(rows[i].get(c)) for c in columns]] for i in shown]
    order = ("depth 0 is nearest the input" if report.meta.get("block_order", "execution") == "execution"
             else "blocks in registration order: no forward pass was seen")
    heading = f"per block at step {step}, the last recorded ({order}"
    heading += f"; {len(shown)} of {len(rows)} blocks shown, evenly spaced)" if len(shown) < len(rows) else ")"
    notes = [f"{TRAINING_BLOCK_COLUMNS[c]}: {HEATMAP_SERIES[c][2]}" for c in ("update_ratio", "act_grad_l2")
             if c in taken]  # the heatmaps' words for what a value is
    if any(num(r.get("grad_l2")) == "-" for r in rows):
        notes.append("grad L2 -: a NaN or Inf in the block's gradient leaves its norm undefined")
    if any(at != step for at in taken.values()):
        notes.append("a column with a step: that value was recorded every few steps; its last is shown")
    return [*_wrapped(heading, width), *_tables(header, cells, 2, width),
            *[line for n in notes for line in _wrapped(n, width)]]


def monitor_lines(report, width: Optional[int] = None) -> list[str]:
    """A training monitor's report at a glance: what was recorded, the global norm before clipping and the clip,
    the spikes, the non-finite steps, the verdicts over windows of steps, and the last step per block. A value
    the run did not record is not shown."""
    other = training_findings(report)["other"]
    parts = [monitor_header(report, width), global_norm_lines(report, width), spike_lines(report, width),
             nonfinite_lines(report, width), flow_verdict_lines(report, width), monitor_block_lines(report, width),
             [line for f in other for line in _wrapped(f"[{f['severity']}] {f['message']}", width)]]
    lines: list[str] = []
    for part in parts:
        if part:
            lines += ([""] if lines else []) + part
    return lines


def render_text(report, width: Optional[int] = None) -> str:
    """The whole terminal view as one string; its tables fit in ``width`` columns where they can (None: no
    limit)."""
    meta = report.meta
    if meta.get("kind") == "monitor":
        return "\n".join(monitor_lines(report, width)) + "\n"
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
