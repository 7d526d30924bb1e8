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

from . import plots, svg
from .fmt import TREND_HEADER, TREND_LEGEND, decay_text, num, run_facts, title

_ASSETS = Path(__file__).parent / "assets"
PARAM_COLUMNS = ("variant", "name", "depth", "block", "step", "shape", "numel", "has_grad", "grad_l2", "grad_rms",
                 "grad_meanabs", "grad_maxabs", "grad_zero_frac", "grad_nonfinite", "weight_l2", "grad_to_weight")
BLOCK_COLUMNS = ("variant", "depth", "block", "step", "params", "params_no_grad", "numel", "grad_l2",
                 "grad_meanabs", "grad_maxabs", "grad_zero_frac", "grad_nonfinite", "grad_to_weight", "act_grad_l2",
                 "act_grad_maxabs", "act_grad_nonfinite", "output_nonfinite")
_TEXT_COLUMNS = {"variant", "name", "block", "shape", "has_grad", "a", "b"}


def _e(text) -> str:
    return escape(str(text), quote=True)


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def _cell(key: str, value) -> str:
    if key in _TEXT_COLUMNS or isinstance(value, str):
        text = "-" if value is None else (" × ".join(map(str, value)) if isinstance(value, list) else value)
        return f"<td>{_e(text)}</td>"  # one line: the table scrolls sideways rather than split a name
    return f'<td class="n">{_e(num(value))}</td>'


def _data_table(table_id: str, columns, rows: list[dict], *, filterable: bool, variants=()) -> str:
    columns = [c for c in columns if any(c in r for r in rows)]
    num_class = ' class="n"'
    head = "".join(f'<th{"" if c in _TEXT_COLUMNS else num_class} scope="col">{_e(c)}</th>' for c in columns)
    body = "\n".join(f'<tr data-variant="{_e(r.get("variant", ""))}">' + "".join(_cell(c, r.get(c)) for c in columns)
                     + "</tr>" for r in rows)
    controls = ""
    if filterable:
        options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in variants)
        select = (f'<select id="{table_id}-variant" aria-label="variant"><option value="">all variants</option>'
                  f"{options}</select>" if len(variants) > 1 else "")
        controls = (f'<div class="controls"><input type="search" id="{table_id}-filter" '
                    f'placeholder="filter by name, block, variant..." aria-label="filter rows">{select}'
                    f'<span class="muted" id="{table_id}-count">{len(rows)} rows</span></div>')
    cls = "data sortable" + (" filterable" if filterable else "")
    return (f'{controls}<div class="scroll"><table class="{cls}" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _facts(report) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in run_facts(report))
    return f'<dl class="facts">{items}</dl>'


def _verdict(v) -> str:
    return f'<span class="verdict v-{_e(v)}">{_e(v)}</span>'


def _summaries(report) -> str:
    if not report.summaries:
        return ""
    index = {n: i for i, n in enumerate(report.variant_names)}
    described = {v["name"]: v.get("description", "") for v in report.variants}
    rows = []
    for s in report.summaries:
        decay = s.get("decay") or {}
        swatch = f'<span class="swatch" aria-hidden="true" data-color="{index.get(s["variant"], 0)}"></span>'
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
    return (f'<section id="verdicts"><h2>Verdicts</h2><table class="data"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table><p class=\"muted\">{_e(TREND_LEGEND)}.</p></section>")


def _findings(report) -> str:
    if not report.findings:
        return ""
    order = {"error": 0, "warning": 1, "info": 2}
    grouped: dict[tuple, list[str]] = {}
    for f in report.findings:
        grouped.setdefault((f["severity"], f["message"], f["evidence"], f.get("fix") or ""), []).append(f["variant"])
    cards = []
    for (severity, message, evidence, fix), variants in sorted(grouped.items(), key=lambda kv: order.get(kv[0][0], 3)):
        fix_html = f'<p><span class="label">Fix</span>{_e(fix)}</p>' if fix else ""
        cards.append(
            f'<article class="finding sev-{_e(severity)}"><h3><span class="sev">{_e(severity)}</span>'
            f"{_e(', '.join(variants))}: {_e(message)}</h3>"
            f'<p><span class="label">Evidence</span>{_e(evidence)}</p>{fix_html}</article>')
    return f'<section id="findings"><h2>Findings</h2><div class="findings">{"".join(cards)}</div></section>'


def _comparisons(report) -> str:
    if not report.comparisons:
        return ""
    verdict = {s["variant"]: s["verdict"] for s in report.summaries}
    rows = []
    for c in report.comparisons:
        va, vb = verdict.get(c["a"]), verdict.get(c["b"])
        changed = va is not None and vb is not None and va != vb
        change = "-" if va is None or vb is None else (
            f"{_verdict(vb)} → {_verdict(va)}" if changed else f"{_verdict(va)} (unchanged)")
        row_class = ' class="changed"' if changed else ""
        rows.append(f'<tr{row_class}><td>{_e(c["a"])} / {_e(c["b"])}</td>'
                    f"<td class=\"n\">{num(c.get('grad_l2_ratio_geomean'))}</td>"
                    f"<td class=\"n\">{num(c.get('act_grad_l2_ratio_geomean'))}</td>"
                    f"<td class=\"n\">{len(c.get('blocks') or [])}</td><td>{change}</td></tr>")
    head = ("<tr><th>a / b</th><th class=\"n\">dL/dθ ratio (geometric mean)</th>"
            "<th class=\"n\">dL/dh ratio (geometric mean)</th><th class=\"n\">shared blocks</th>"
            "<th>verdict b → a</th></tr>")
    per_block = [{"a": c["a"], "b": c["b"], **r} for c in report.comparisons for r in c.get("blocks") or []]
    details = _data_table("ratio-table", ("a", "b", "depth", "block", "grad_l2_ratio", "act_grad_l2_ratio"),
                          per_block, filterable=False)
    return (f'<section id="comparisons"><h2>Comparisons</h2><table class="data"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            f"<details><summary>Per-block ratios ({len(per_block)} rows)</summary>{details}</details></section>")


def _plots(report) -> str:
    figures = []
    for spec in plots.all_plots(report):
        figures.append(f'<figure id="figure-{_e(spec.key)}">{svg.render(spec)}'
                       f"<figcaption>{_e(spec.caption)}</figcaption></figure>")
    if not figures:
        return ""
    return f'<section id="plots"><h2>Plots</h2>{"".join(figures)}</section>'


def _tables(report) -> str:
    parts = []
    variants = report.variant_names
    if report.params:
        table = _data_table("param-table", PARAM_COLUMNS, report.params, filterable=True, variants=variants)
        parts.append('<section id="parameters"><h2>Per-parameter table</h2><p class="muted">Click a column to sort; '
                     f"type to filter. Full precision in report.json and params.csv.</p>{table}</section>")
    if report.blocks:
        table = _data_table("block-table", BLOCK_COLUMNS, report.blocks, filterable=True, variants=variants)
        parts.append(f'<section id="blocks"><h2>Per-block table</h2><details><summary>{len(report.blocks)} rows'
                     f"</summary>{table}</details></section>")
    return "".join(parts)


def _swatch_css(report) -> str:
    return "".join(f'.swatch[data-color="{i}"] {{ background: {svg.color(i)}; }}\n'
                   for i in range(max(len(report.variant_names), 1)))


def render_page(report) -> str:
    """The whole page as one string."""
    from . import SCHEMA

    css = (_ASSETS / "page.css").read_text(encoding="utf-8") + _swatch_css(report)
    js = (_ASSETS / "page.js").read_text(encoding="utf-8")
    policy = (f"default-src 'none'; img-src data:; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
              "base-uri 'none'; form-action 'none'")
    sections = [_summaries(report), _findings(report), _comparisons(report), _plots(report), _tables(report)]
    nav_items = [(sid, label) for sid, label in (("verdicts", "Verdicts"), ("findings", "Findings"),
                                                 ("comparisons", "Comparisons"), ("plots", "Plots"),
                                                 ("parameters", "Parameters"), ("blocks", "Blocks"))
                 if f'<section id="{sid}"' in "".join(sections)]
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in nav_items)
    from .. import __version__

    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradscope: {_e(title(report))}</title>",
        f"<style>{css}</style>",
        f"<script>{js}</script>",
        "</head><body>",
        f"<header><h1>gradscope: {_e(title(report))}</h1>{_facts(report)}<nav>{nav}</nav></header>",
        *sections,
        f"<footer>gradscope {_e(__version__)} · schema {_e(SCHEMA)} · the data behind this page is in report.json"
        '<pre id="gs-errors" hidden></pre></footer>',
        "</body></html>",
    ]) + "\n"


def render_html(report) -> dict[str, bytes]:
    return {"report.html": render_page(report).encode("utf-8")}
