"""The report as one self-contained HTML page: plots, verdicts, sortable and filterable tables.

Offline by construction: styles, script and plots are inline (plots are SVG
drawn by :mod:`.svg`; no matplotlib needed). Every string from the model or
the run is escaped, and the page's Content-Security-Policy allows exactly our
one script and one stylesheet (by hash) and ``data:`` images, so even markup
that slipped through could not run or load anything.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from pathlib import Path

from .. import __version__
from . import plots, svg
from .fmt import (TREND_HEADER, decay_text, grouped_findings, measured_stage, num, run_facts, skipped_lines,
                  summary_legend, title)
from .training import HEADER as TRAINING_HEADER
from .training import NUMBER_COLUMNS, VARIANT, VERDICT, training_note, training_rows

_ASSETS = Path(__file__).parent / "assets"
# the name first (it stays in view when the table scrolls sideways), then the numbers that matter most
PARAM_COLUMNS = ("name", "variant", "depth", "grad_l2", "grad_to_weight", "grad_rms", "grad_meanabs", "grad_maxabs",
                 "grad_zero_frac", "grad_nonfinite", "weight_l2", "shape", "numel", "block", "step", "has_grad")
BLOCK_COLUMNS = ("block", "variant", "depth", "grad_l2", "grad_to_weight", "act_grad_l2", "update_ratio",
                 "grad_meanabs", "grad_maxabs", "grad_zero_frac", "grad_nonfinite", "act_grad_maxabs",
                 "act_grad_nonfinite", "output_nonfinite", "params", "params_no_grad", "numel", "step")
_TEXT_COLUMNS = {"variant", "name", "block", "shape", "has_grad", "a", "b"}
COLUMN_HELP = {  # header tooltips; docs/report-schema.md has every field
    "grad_l2": "L2 norm of the parameter gradient dL/dθ",
    "grad_to_weight": "grad_l2 / weight_l2: the gradient's size relative to the weights (times the learning "
                      "rate, roughly the relative update of plain SGD)",
    "grad_rms": "root mean square of the gradient entries",
    "grad_meanabs": "mean |g| over the entries",
    "grad_maxabs": "largest |g|",
    "grad_zero_frac": "fraction of gradient entries exactly zero (1: an all-zero gradient)",
    "grad_nonfinite": "NaN or Inf entries in the gradient",
    "weight_l2": "L2 norm of the weights",
    "update_ratio": "||W after - W before|| / ||W before||: how far the block's optimizer step moved its weights",
    "act_grad_l2": "L2 norm of dL/dh, the gradient with respect to the block's output",
    "act_grad_maxabs": "largest |dL/dh| entry",
    "act_grad_nonfinite": "NaN or Inf entries in dL/dh",
    "output_nonfinite": "NaN or Inf entries in the block's output (forward pass)",
    "params_no_grad": "parameters of the block that received no gradient",
    "has_grad": "whether a gradient reached the tensor",
    "depth": "block depth, 0 = the block nearest the input; - = outside every block, or a weight of a block that "
             "runs several times (block#k), which is every run's",
    "grad_l2_ratio": "parameter-gradient L2 of a / of b at this block",
    "act_grad_l2_ratio": "dL/dh L2 of a / of b at this block",
}
VERDICT_ORDER = ("non-finite", "dead", "exploding", "vanishing", "no-depth", "healthy")  # the worst first


def _problem(row: dict) -> bool:
    """A row a reader should see first: no gradient, an all-zero one, or NaN/Inf anywhere."""
    return (row.get("has_grad") is False or bool(row.get("params_no_grad")) or row.get("grad_zero_frac") == 1
            or any(row.get(k) for k in ("grad_nonfinite", "act_grad_nonfinite", "output_nonfinite")))


def _e(text) -> str:
    return escape(str(text), quote=True)


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def _cell(key: str, value) -> str:
    if key in _TEXT_COLUMNS or isinstance(value, str):
        text = "-" if value is None else (" × ".join(map(str, value)) if isinstance(value, list) else value)
        return f"<td>{_e(text)}</td>"  # one line: the table scrolls sideways rather than split a name
    return f'<td class="n">{_e(num(value))}</td>'


_PROBLEM = ' class="problem"'


def _head(column: str) -> str:
    cls = "" if column in _TEXT_COLUMNS else ' class="n"'
    tip = f' title="{_e(COLUMN_HELP[column])}"' if column in COLUMN_HELP else ""
    return f'<th{cls}{tip} scope="col">{_e(column)}</th>'


def _data_table(table_id: str, columns, rows: list[dict], *, filterable: bool, variants=()) -> str:
    columns = [c for c in columns if any(c in r for r in rows)]
    head = "".join(_head(c) for c in columns)
    body = "\n".join(f'<tr data-variant="{_e(r.get("variant", ""))}"{_PROBLEM if _problem(r) else ""}>'
                     + "".join(_cell(c, r.get(c)) for c in columns) + "</tr>" for r in rows)
    controls = ""
    if filterable:
        options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in variants)
        select = (f'<select id="{table_id}-variant" aria-label="variant"><option value="">all variants</option>'
                  f"{options}</select>" if len(variants) > 1 else "")
        problems = sum(_problem(r) for r in rows)
        only = (f'<label><input type="checkbox" id="{table_id}-problems"> only the {problems} row(s) with no, '
                "all-zero or non-finite gradients</label>" if problems else "")
        controls = (f'<div class="controls"><input type="search" id="{table_id}-filter" '
                    f'placeholder="filter: words in name, block, variant..." aria-label="filter rows">{select}'
                    f'{only}<span class="muted" id="{table_id}-count">{len(rows)} rows</span></div>')
    cls = "data sortable" + (" filterable" if filterable else "")
    return (f'{controls}<div class="scroll"><table class="{cls}" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _facts(report) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in run_facts(report))
    return f'<dl class="facts">{items}</dl>'


def _skipped(report) -> str:
    return "".join(f'<p class="muted">{_e(line)}</p>' for line in skipped_lines(report.meta))


def _verdict(v) -> str:
    return f'<span class="verdict v-{_e(v)}">{_e(v)}</span>'


def _summaries(report) -> str:
    if not report.summaries:
        return ""
    index = plots.colors(report).variants
    described = {v["name"]: v.get("description", "") for v in report.variants}
    rows = []
    for s in report.summaries:
        decay = s.get("decay") or {}
        swatch = svg.swatch(index[s["variant"]]) if s["variant"] in index else ""
        rows.append(
            f"<tr><td>{swatch}{_e(s['variant'])}</td><td class=\"wrap\">{_e(described.get(s['variant'], ''))}</td>"
            f"<td>{_verdict(s['verdict'])}</td><td class=\"n\">{num(s.get('loss'), '.4g')}</td>"
            f"<td class=\"n\">{_e(s.get('blocks'))}</td><td>{_e(s.get('flow_signal', ''))}</td>"
            f"<td class=\"n\">{num(s.get('first_to_last_ratio'))}</td><td class=\"n\">"
            f"{num(decay.get('factor_per_block'))}</td><td class=\"n\">{num(decay.get('r2'), '.2f')}</td>"
            f"<td>{_e(decay_text(s.get('decay')))}</td><td class=\"n\">{len(s.get('params_no_grad') or [])}</td></tr>")
    head = ("<tr><th>variant</th><th>description</th><th>verdict</th><th class=\"n\">loss</th>"
            "<th class=\"n\">blocks</th><th>flow signal</th><th class=\"n\">first / last block</th>"
            "<th class=\"n\">factor per block</th><th class=\"n\">R²</th>"
            f"<th>{_e(TREND_HEADER)}</th>"
            "<th class=\"n\">no grad</th></tr>")
    return (f'<section id="verdicts"><h2>Verdicts</h2><div class="wide"><table class="data"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div><p class=\"muted\">{_e(summary_legend(report))}.</p></section>")


def _training(report) -> str:
    """``gradscope demo --train``'s table beside the verdicts: what each variant learned with each optimizer."""
    note = training_note(report)
    if note is None:
        return ""
    index = plots.colors(report).variants
    number = ' class="n"'

    def cell(i: int, text: str) -> str:
        if i == VARIANT:
            return f"<td>{svg.swatch(index[text]) if text in index else ''}{_e(text)}</td>"
        if i == VERDICT:
            return f"<td>{_verdict(text)}</td>"
        return f"<td{number if i in NUMBER_COLUMNS else ''}>{_e(text)}</td>"

    head = "".join(f"<th{number if i in NUMBER_COLUMNS else ''}>{_e(h)}</th>"
                   for i, h in enumerate(TRAINING_HEADER))
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in training_rows(report))
    return (f'<section id="training"><h2>Training: which variants learn</h2><div class="wide"><table class="data">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
            f'<p class="muted">{_e(note)} The loss curves are under Plots.</p></section>')


def _findings(report) -> str:
    """Errors and warnings as cards, each with its evidence and fix; information as one compact table."""
    if not report.findings:
        return ""
    cards, notes = [], []
    for (severity, message, evidence, fix), variants in grouped_findings(report):
        who = _e(", ".join(variants))
        if severity == "info":
            notes.append((who, message, evidence, fix))
            continue
        fix_html = f'<p class="fix"><span class="label">Fix</span>{_e(fix)}</p>' if fix else ""
        cards.append(
            f'<article class="finding sev-{_e(severity)}"><h3><span class="sev">{_e(severity)}</span>'
            f"<span class=\"who\">{who}</span>: {_e(message)}</h3>"
            f'<p><span class="label">Evidence</span>{_e(evidence)}</p>{fix_html}</article>')
    table = ""
    if notes:
        fixes = any(fix for *_, fix in notes)
        rows = "".join(f'<tr><td class="wrap">{who}</td><td class="wrap">{_e(message)}</td>'
                       f'<td class="wrap">{_e(evidence)}</td>' + (f'<td class="wrap">{_e(fix) or "-"}</td>' if fixes
                                                                   else "") + "</tr>"
                       for who, message, evidence, fix in notes)
        table = ('<div class="wide"><table class="data notes"><thead><tr><th>variant</th><th>information</th>'
                 f"<th>evidence</th>{'<th>fix</th>' if fixes else ''}</tr></thead><tbody>{rows}</tbody></table></div>")
        if cards and len(notes) > 4:  # many notes under warnings: folded, so that the warnings stand out
            table = f"<details><summary>{len(notes)} more findings, for information</summary>{table}</details>"
    return f'<section id="findings"><h2>Findings</h2><div class="findings">{"".join(cards)}</div>{table}</section>'


def _incidents(report) -> str:
    """The training steps with a NaN or Inf in a gradient, with the blocks it was in (from the time series)."""
    steps = plots.nonfinite_steps(report)
    if not steps:
        return ""
    total = {r["step"]: r.get("grad_nonfinite") for r in report.series if r.get("block") is None}
    blocks: dict = {}
    for r in report.series:
        if r.get("block") is not None and r.get("grad_nonfinite"):
            blocks.setdefault(r["step"], []).append(str(r["block"]))
    recorded = len({r["step"] for r in report.series if r.get("step") is not None})
    shown = steps[:MAX_INCIDENT_ROWS]
    rows = "".join(f'<tr class="problem"><td class="n">{_e(step)}</td><td class="n">{_e(num(total.get(step)))}</td>'
                   f'<td class="wrap">{_e(", ".join(blocks.get(step, [])) or "outside the blocks")}</td></tr>'
                   for step in shown)
    more = (f'<p class="muted">The first {len(shown)} of {len(steps)} such steps; report.json has them all.</p>'
            if len(steps) > len(shown) else "")
    return (f'<section id="incidents"><h2>Non-finite gradients</h2><p class="alert">NaN or Inf in the gradients '
            f"at {len(steps)} of {recorded} recorded step(s), first at step {_e(steps[0])}. Check the inputs and "
            "the loss of those steps; lower the learning rate; with float16 use a GradScaler (it skips such "
            "steps) or bfloat16.</p>"
            '<div class="scroll short"><table class="data fit"><thead><tr><th class="n">step</th>'
            '<th class="n">non-finite values</th><th>blocks</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>{more}</section>")


MAX_INCIDENT_ROWS = 200


def _glance(report) -> str:
    """One line under the title: which variant got which verdict, worst first, and any non-finite steps."""
    by_verdict: dict[str, list[str]] = {}
    for s in report.summaries:
        by_verdict.setdefault(s["verdict"], []).append(s["variant"])
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    parts = [f"{_verdict(v)} {_e(', '.join(names))}"
             for v, names in sorted(by_verdict.items(), key=lambda kv: rank.get(kv[0], -1))]
    steps = plots.nonfinite_steps(report)
    if steps:
        parts.append(f'<a href="#incidents">{_verdict("non-finite")} gradients at {len(steps)} training step(s), '
                     f"first at step {_e(steps[0])}</a>")
    return f'<p class="glance">{" · ".join(parts)}</p>' if parts else ""


def _comparisons(report) -> str:
    if not report.comparisons:
        return ""
    verdict = {s["variant"]: s["verdict"] for s in report.summaries}
    pair_colors = plots.colors(report).pairs
    rows = []
    for c in report.comparisons:
        va, vb = verdict.get(c["a"]), verdict.get(c["b"])
        changed = va is not None and vb is not None and va != vb
        change = "-" if va is None or vb is None else (
            f"{_verdict(vb)} → {_verdict(va)}" if changed else f"{_verdict(va)} (unchanged)")
        row_class = ' class="changed"' if changed else ""
        swatch = svg.swatch(pair_colors[(c["a"], c["b"])])  # the pair's line in the ratio plot
        rows.append(f'<tr{row_class}><td>{swatch}{_e(c["a"])} / {_e(c["b"])}</td>'
                    f"<td class=\"n\">{num(c.get('grad_l2_ratio_geomean'))}</td>"
                    f"<td class=\"n\">{num(c.get('act_grad_l2_ratio_geomean'))}</td>"
                    f"<td class=\"n\">{len(c.get('blocks') or [])}</td><td>{change}</td></tr>")
    head = ("<tr><th>a / b</th><th class=\"n\">dL/dθ ratio (geometric mean)</th>"
            "<th class=\"n\">dL/dh ratio (geometric mean)</th><th class=\"n\">shared blocks</th>"
            "<th>verdict b → a</th></tr>")
    per_block = [{"a": c["a"], "b": c["b"], **r} for c in report.comparisons for r in c.get("blocks") or []]
    details = _data_table("ratio-table", ("a", "b", "depth", "block", "grad_l2_ratio", "act_grad_l2_ratio"),
                          per_block, filterable=False)
    return (f'<section id="comparisons"><h2>Comparisons</h2><div class="wide"><table class="data"><thead>{head}'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
            f"<details><summary>Per-block ratios ({len(per_block)} rows)</summary>{details}</details></section>")


def _plots(report) -> str:
    stage = measured_stage(report.meta)
    figures = []
    for spec in plots.all_plots(report):
        caption = spec.caption
        if stage and spec.key in ("global", "heatmap"):  # the norms over time: clipping caps them at every step
            caption += f" Measured {stage}."
        figure = (f'<figure id="figure-{_e(spec.key)}">{svg.render(spec)}'
                  f"<figcaption>{_e(caption)}</figcaption></figure>")
        if isinstance(spec, plots.Heatmap) and spec.column != "grad_l2":  # one open map; the others a click away
            figure = f'<details class="heatmap-choice"><summary>{_e(spec.title)}</summary>{figure}</details>'
        figures.append(figure)
    if not figures:
        return ""
    return f'<section id="plots"><h2>Plots</h2>{"".join(figures)}</section>'


def _tables(report) -> str:
    parts = []
    variants = report.variant_names
    if report.params:
        table = _data_table("param-table", PARAM_COLUMNS, report.params, filterable=True, variants=variants)
        parts.append('<section id="parameters"><h2>Per-parameter table</h2><p class="muted">Click a column to sort '
                     "(again to reverse); type words to filter (all must match); hover a column name for what it "
                     f"is. Full precision in report.json and params.csv.</p>{table}</section>")
    if report.blocks:
        table = _data_table("block-table", BLOCK_COLUMNS, report.blocks, filterable=True, variants=variants)
        parts.append(f'<section id="blocks"><h2>Per-block table</h2><details><summary>{len(report.blocks)} rows'
                     f"</summary>{table}</details></section>")
    return "".join(parts)


def render_page(report) -> str:
    """The whole page as one string."""
    css = (_ASSETS / "page.css").read_text(encoding="utf-8")
    js = (_ASSETS / "page.js").read_text(encoding="utf-8")
    policy = (f"default-src 'none'; img-src data:; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
              "base-uri 'none'; form-action 'none'")
    sections = [_summaries(report), _training(report), _incidents(report), _findings(report), _comparisons(report),
                _plots(report), _tables(report)]
    nav_items = [(sid, label) for sid, label in (("verdicts", "Verdicts"), ("training", "Training"),
                                                 ("incidents", "Non-finite steps"),
                                                 ("findings", "Findings"),
                                                 ("comparisons", "Comparisons"), ("plots", "Plots"),
                                                 ("parameters", "Parameters"), ("blocks", "Blocks"))
                 if f'<section id="{sid}"' in "".join(sections)]
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in nav_items)
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradscope: {_e(title(report))}</title>",
        f"<style>{css}</style>",
        f"<script>{js}</script>",
        "</head><body>",
        f"<header><h1>gradscope: {_e(title(report))}</h1>{_glance(report)}{_skipped(report)}{_facts(report)}</header>",
        f'<nav aria-label="sections">{nav}</nav>',
        *sections,
        f"<footer>gradscope {_e(__version__)} · schema {_e(report.schema)} · the data behind this page is in "
        "report.json"
        '<pre id="gs-errors" hidden></pre></footer>',
        "</body></html>",
    ]) + "\n"


def render_html(report) -> dict[str, bytes]:
    return {"report.html": render_page(report).encode("utf-8")}
