"""The report as text for a terminal: a summary table, the flow per block, findings, comparisons.

It reads the :class:`~gradscope.report.Report` only; nothing is recomputed here.
"""

from __future__ import annotations

import math
from typing import Optional

MAX_BLOCK_ROWS = 40  # longer models show evenly spaced blocks, the first and last always included


def _num(x: Optional[float], spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-" if x is None or math.isnan(x) else str(x)
    return format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]


def _halving(decay: Optional[dict]) -> str:
    if not decay:
        return "-"
    if decay["trend"] == "flat":
        return "flat"
    if decay["trend"] == "shrinks":
        return f"halves/{_num(decay['halves_every_blocks'], '.2g')}"
    return f"doubles/{_num(decay['doubles_every_blocks'], '.2g')}"


def summary_lines(report) -> list[str]:
    header = ["variant", "verdict", "loss", "blocks", "first/last", "factor/block", "R^2", "every N blocks",
              "no grad"]
    rows = []
    for s in report.summaries:
        decay = s["decay"] or {}
        rows.append([
            s["variant"], s["verdict"], _num(s["loss"], ".4g"), str(s["blocks"]), _num(s["first_to_last_ratio"]),
            _num(decay.get("factor_per_block")), _num(decay.get("r2"), ".2f"), _halving(s["decay"]),
            str(len(s["params_no_grad"])),
        ])
    return _table(header, rows)


def flow_lines(report) -> list[str]:
    """dL/dh (or parameter-gradient) L2 per block, one column per variant."""
    names = report.variant_names
    per_variant = {n: report.block_rows(n) for n in names}
    depth = max((len(rows) for rows in per_variant.values()), default=0)
    if depth == 0:
        return []
    signal = {s["variant"]: s["flow_signal"] for s in report.summaries}
    key = {n: "act_grad_l2" if signal[n] == "dL/dh" else "grad_l2" for n in names}
    shown = list(range(depth))
    if depth > MAX_BLOCK_ROWS:
        step = (depth - 1) / (MAX_BLOCK_ROWS - 1)
        shown = sorted({round(i * step) for i in range(MAX_BLOCK_ROWS)})
    rows = []
    for d in shown:
        label = next((per_variant[n][d]["block"] for n in names if d < len(per_variant[n])), str(d))
        rows.append([str(d), label] + [_num(per_variant[n][d][key[n]]) if d < len(per_variant[n]) else ""
                                       for n in names])
    kinds = sorted(set(signal.values()))
    title = f"gradient L2 per block ({' / '.join(kinds)}; depth 0 is nearest the input)"
    return [title, *_table(["depth", "block", *names], rows)]


def finding_lines(report) -> list[str]:
    """Findings, most serious first; one that several variants share word for word is printed once."""
    order = {"error": 0, "warning": 1, "info": 2}
    grouped: dict[tuple, list[str]] = {}
    for f in report.findings:
        key = (f["severity"], f["message"], f["evidence"], f["fix"])
        grouped.setdefault(key, []).append(f["variant"])
    lines = []
    for (severity, message, evidence, fix), variants in sorted(grouped.items(), key=lambda kv: order.get(kv[0][0], 3)):
        lines.append(f"[{severity}] {', '.join(variants)}: {message}")
        lines.append(f"    evidence: {evidence}")
        if fix:
            lines.append(f"    fix: {fix}")
    return lines


def comparison_lines(report) -> list[str]:
    lines = []
    for c in report.comparisons:
        lines.append(
            f"{c['a']} / {c['b']}: parameter gradient x{_num(c['grad_l2_ratio_geomean'])}, "
            f"dL/dh x{_num(c['act_grad_l2_ratio_geomean'])} (geometric mean over {len(c['blocks'])} shared blocks)"
        )
    return lines


def render_text(report) -> str:
    """The whole terminal view as one string."""
    meta = report.meta
    parts = [
        f"gradscope: {meta.get('model')} ({meta.get('source')}, objective {meta.get('objective')}, "
        f"{meta.get('device')}, {meta.get('dtype')}, grad_stats {meta.get('backend')})",
        f"inputs: {meta.get('inputs')}",
        "",
        *summary_lines(report),
        "",
        *flow_lines(report),
        "",
        *finding_lines(report),
    ]
    comparisons = comparison_lines(report)
    if comparisons:
        parts += ["", *comparisons]
    return "\n".join(parts) + "\n"
