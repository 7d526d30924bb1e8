"""The report as Markdown: a summary for a pull request or a model card (GitHub-flavoured tables).

Every string from the model or the run (module names, file names, config
values) goes through :func:`md`, so it renders as the text it is.
"""

from __future__ import annotations

import re

from .fmt import (TREND_HEADER, clip_sentence, decay_text, flow_table, grouped_findings, measured_stage, num,
                  run_facts, series_columns, shown_depths, skipped_lines, summary_legend, title)
from .plots import HEATMAP_SERIES
from .training import HEADER as TRAINING_HEADER
from .training import NUMBER_COLUMNS, VERDICT, training_note, training_rows

# CommonMark lets a backslash escape any ASCII punctuation. These can start markup inside a line: emphasis,
# code, links and images, raw HTML, table cells, strikethrough, entities, GitHub's $math$. (Headings and
# lists only start a line, and every string here follows a prefix.)
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$])")


def md(text) -> str:
    """Text as Markdown that renders as that text, on one line (safe inside a table cell)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *["| " + " | ".join(r) + " |" for r in rows]]


def _verdicts(report) -> list[str]:
    if not report.summaries:
        return []
    rows = []
    for s in report.summaries:
        decay = s.get("decay") or {}
        rows.append([md(s["variant"]), f"**{md(s['verdict'])}**", num(s.get("loss"), ".4g"), str(s.get("blocks")),
                     md(s.get("flow_signal", "")), num(s.get("first_to_last_ratio")),
                     num(decay.get("factor_per_block")), num(decay.get("r2"), ".2f"), md(decay_text(s.get("decay"))),
                     str(len(s.get("params_no_grad") or []))])
    header = ["variant", "verdict", "loss", "blocks", "flow signal", "first/last block", "factor per block", "R²",
              TREND_HEADER, "no grad"]
    return ["## Verdicts", "", *_table(header, rows, right={2, 3, 5, 6, 7, 9}), "", md(summary_legend(report)) + ".", ""]


def _training(report) -> list[str]:
    """``gradscope demo --train``'s table: what each variant learned, beside its verdict."""
    note = training_note(report)
    if note is None:
        return []
    rows = [[f"**{md(c)}**" if i == VERDICT else md(c) for i, c in enumerate(row)] for row in training_rows(report)]
    return ["## Training: which variants learn", "", md(note), "",
            *_table([md(h) for h in TRAINING_HEADER], rows, right=NUMBER_COLUMNS), ""]


def _findings(report) -> list[str]:
    if not report.findings:
        return []
    lines = ["## Findings", ""]
    for (severity, message, evidence, fix), variants in grouped_findings(report):
        lines.append(f"- **{md(severity)}** ({', '.join(md(v) for v in variants)}): {md(message)}")
        lines.append(f"  - evidence: {md(evidence)}")
        if fix:
            lines.append(f"  - fix: {md(fix)}")
    return lines + [""]


def _comparisons(report) -> list[str]:
    if not report.comparisons:
        return []
    verdict = {s["variant"]: s["verdict"] for s in report.summaries}
    rows = []
    for c in report.comparisons:
        va, vb = verdict.get(c["a"]), verdict.get(c["b"])
        change = "-" if va is None or vb is None else (md(vb) if va == vb else f"**{md(vb)} → {md(va)}**")
        rows.append([f"{md(c['a'])} / {md(c['b'])}", num(c.get("grad_l2_ratio_geomean")),
                     num(c.get("act_grad_l2_ratio_geomean")), str(len(c.get("blocks") or [])), change])
    header = ["a / b", "dL/dθ ratio (geometric mean)", "dL/dh ratio (geometric mean)", "shared blocks",
              "verdict b → a"]
    return ["## Comparisons", "", *_table(header, rows, right={1, 2, 3}), ""]


def _flow(report) -> list[str]:
    names = [n for n in report.variant_names if report.block_rows(n)]
    table = flow_table({n: report.block_rows(n) for n in names})
    if not table.rows:
        return []
    signal = {s["variant"]: s.get("flow_signal") for s in report.summaries}
    key = {n: "act_grad_l2" if signal.get(n) == "dL/dh" else "grad_l2" for n in names}
    shown = shown_depths(len(table.rows))
    rows = [[str(r.depth), md(r.block), *[r.text(n, key[n], num, md) for n in names]]
            for r in (table.rows[i] for i in shown)]
    kinds = " / ".join(sorted({"dL/dh" if k == "act_grad_l2" else "parameter gradient" for k in key.values()}))
    note = f"L2 norm of the {kinds} per block; depth 0 is nearest the input"
    if len(shown) < len(table.rows):
        note += f"; {len(shown)} of {len(table.rows)} blocks shown, evenly spaced"
    if table.note:
        note += f"; {md(table.note)}"
    # a monitor's norm over a NaN/Inf is undefined (NaN in memory, null on disk): its cell shows "-"
    if any(r.get("grad_nonfinite") and num(r.get(key[n])) == "-" for n in names for r in report.block_rows(n)):
        note += "; a NaN or Inf in a block's gradient leaves its norm undefined (-)"
    steps = {r.get("step") for n in names for r in report.block_rows(n)}
    if len(steps) == 1 and None not in steps:  # a training report's blocks are one step of its series
        note += f"; values at training step {steps.pop()}, the last recorded"
    return ["## Gradient flow per block", "", note + ".", "",
            *_table(["depth", "block", *[md(n) for n in names]], rows, right=set(range(2, 2 + len(names)))), ""]


def _series(report) -> list[str]:
    glob = [r for r in report.series if r.get("block") is None]
    if not glob:
        return []
    first, last = glob[0], glob[-1]
    stage = measured_stage(report.meta)
    clip = clip_sentence(report.series)
    recorded = series_columns(report.series, HEATMAP_SERIES)
    return ["## Training", "",
            f"{len(glob)} recorded steps, {first['step']} to {last['step']}; global gradient L2 norm "
            f"{_global_norm(first)} at the first, {_global_norm(last)} at the last"
            + (f", measured {md(stage)}." if stage else "."), "",
            (f"{md(clip)}. " if clip else "")
            + f"Per-block values in the series: {', '.join(md(c) for c in recorded)} (report.html has a heatmap of "
              "each by block and step; its global plot draws the norm before clipping solid"
            + (", after clipping dashed and the clip level dotted)." if clip else ")."), ""]


def _global_norm(row: dict) -> str:
    """A global row's norm; "non-finite" where a NaN/Inf made it undefined (rather than a bare "-")."""
    return "non-finite" if row.get("grad_nonfinite") else num(row.get("grad_l2"))


def render_markdown(report) -> str:
    """The whole Markdown summary as one string."""
    lines = [f"# gradscope: {md(title(report))}", ""]
    lines += [f"- **{md(label)}**: {md(value)}" for label, value in run_facts(report)]
    lines += [f"- {md(line)}" for line in skipped_lines(report.meta)]
    lines.append("")
    for part in (_verdicts, _training, _findings, _comparisons, _flow, _series):
        lines += part(report)
    lines.append(f"<sub>Written by gradscope; the full data is in report.json (schema {report.schema}).</sub>")
    return "\n".join(lines) + "\n"


def render_md(report) -> dict[str, bytes]:
    return {"report.md": render_markdown(report).encode("utf-8")}
