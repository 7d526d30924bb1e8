"""The report: JSON round trip, CSV and pandas, Markdown (golden), HTML and SVG, escaping, atomic writes."""

from __future__ import annotations

import ast
import base64
import csv
import json
import math
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

import report_fixtures as rf
from gradscope.errors import GradscopeError, UsageError
from gradscope.report import RENDERERS, SCHEMA, Report
from gradscope.report import html as html_module
from gradscope.report.markdown import md, render_markdown
from gradscope.report.plots import PLOT_KEYS, all_plots

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_report():
    return rf.demo_report(depth=4)


@pytest.fixture(scope="module")
def monitor_report():
    return rf.monitor_report()


@pytest.fixture(scope="module")
def golden_report():
    return Report.load(GOLDEN / "tiny_demo_report.json")


# --- JSON --------------------------------------------------------------------------------


def test_json_round_trip_gives_back_the_same_report(demo_report, monitor_report, tmp_path):
    for i, report in enumerate((demo_report, monitor_report)):
        out = tmp_path / str(i)
        written = report.save(out, formats="json")
        assert [p.name for p in written] == ["report.json"]
        data = json.loads((out / "report.json").read_text())
        assert list(data)[0] == "schema" and data["schema"] == SCHEMA
        loaded = Report.load(out / "report.json")
        assert loaded.to_dict() == report.to_dict()
        assert Report.load(out).to_dict() == report.to_dict()  # the directory works too


def test_default_formats_are_json_html_md_and_files_are_readable_by_others(demo_report, tmp_path):
    written = demo_report.save(tmp_path / "r")
    assert [p.name for p in written] == ["report.json", "report.html", "report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in written)  # not mkstemp's private 0600


def test_a_newer_schema_is_refused_with_both_versions_named(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"schema": "gradscope.report/2", "meta": {}}))
    with pytest.raises(GradscopeError, match=r"'gradscope.report/2' is not 'gradscope.report/1'"):
        Report.load(tmp_path)


def test_every_field_a_report_can_hold_is_documented(demo_report, monitor_report, tmp_path):
    """docs/report-schema.md names every key of analyze/demo, monitor and compare reports."""
    from gradscope.compare import compare_reports

    doc = (REPO / "docs" / "report-schema.md").read_text()
    documented = {part.strip("[]") for token in re.findall(r"`([a-z_0-9.\[\]]+)`", doc) for part in token.split(".")}
    demo_report.save(tmp_path / "a", formats="json")
    demo_report.save(tmp_path / "b", formats="json")
    combined = compare_reports([tmp_path / "a", tmp_path / "b"])
    keys = set()
    for report in (demo_report, monitor_report, combined):
        data = report.to_dict()
        keys |= set(data)
        for part in ("variants", "summaries", "findings", "comparisons", "blocks", "params", "series"):
            for row in data[part]:
                keys |= set(row)
        for c in data["comparisons"]:
            for row in c["blocks"]:
                keys |= set(row)
        for s in data["summaries"]:
            keys |= set(s.get("decay") or {})
    keys |= set(combined.meta) | set(combined.meta["reports"][0])
    keys |= set(monitor_report.meta)
    missing = sorted(k for k in keys if k not in documented)
    assert not missing, f"add to docs/report-schema.md: {missing}"


# --- CSV and pandas ------------------------------------------------------------------------


def test_csv_files_read_back_with_the_csv_module(demo_report, tmp_path):
    written = {p.name for p in demo_report.save(tmp_path, formats="csv")}
    assert {"params.csv", "blocks.csv", "summaries.csv", "findings.csv", "comparisons.csv",
            "comparison_blocks.csv", "variants.csv"} == written  # no series.csv: the demo has none
    with open(tmp_path / "params.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(demo_report.params)
    assert list(rows[0])[:2] == ["name", "depth"]
    for row, original in zip(rows, demo_report.params):
        assert row["name"] == original["name"] and row["variant"] == original["variant"]
        assert float(row["grad_l2"]) == original["grad_l2"]  # full precision
        assert json.loads(row["shape"]) == original["shape"]
        assert row["depth"] == ("" if original["depth"] is None else str(original["depth"]))
    with open(tmp_path / "summaries.csv", newline="", encoding="utf-8") as handle:
        summaries = list(csv.DictReader(handle))
    assert float(summaries[0]["decay_factor_per_block"]) == demo_report.summaries[0]["decay"]["factor_per_block"]


def test_csv_reads_back_with_pandas_like_to_pandas(demo_report, monitor_report, tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is optional; install it to test the pandas path")
    for i, report in enumerate((demo_report, monitor_report)):
        out = tmp_path / str(i)
        report.save(out, formats="csv")
        frames = report.to_pandas()
        assert set(frames) == {p.stem for p in out.glob("*.csv")}
        for name, frame in frames.items():
            read = pd.read_csv(out / f"{name}.csv")
            assert list(read.columns) == list(frame.columns)
            assert len(read) == len(frame)
        blocks = report.to_pandas("blocks")
        assert blocks["grad_l2"].tolist() == pytest.approx([b["grad_l2"] for b in report.blocks], nan_ok=True)
    flow = demo_report.to_pandas("blocks").pivot(index="depth", columns="variant", values="grad_l2")
    assert flow.shape == (4, 4)


def test_csv_text_cells_never_start_a_spreadsheet_formula(tmp_path):
    report = rf.demo_report(depth=3, variants=("sigmoid", "relu"))
    payloads = ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    for row, payload in zip(report.params, payloads):
        row["name"] = payload
    report.save(tmp_path, formats="csv")
    with open(tmp_path / "params.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row, payload in zip(rows, payloads):
        assert row["name"] == "'" + payload  # quoted: read as text
    numbers = [float(r["grad_mean"]) for r in rows if r["grad_mean"]]
    assert any(v < 0 for v in numbers)  # negative numbers stay numbers, unquoted
    assert rows[len(payloads)]["name"] == report.params[len(payloads)]["name"]  # plain names untouched


def test_to_pandas_without_pandas_says_what_to_install(demo_report, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(GradscopeError, match="needs pandas, which is not installed: pip install pandas"):
        demo_report.to_pandas()


# --- Markdown -------------------------------------------------------------------------------


def test_markdown_matches_the_golden_file(golden_report):
    """Regenerate with GRADSCOPE_UPDATE_GOLDEN=1 after an intended change, and read the diff."""
    text = render_markdown(golden_report)
    golden = GOLDEN / "tiny_demo_report.md"
    if os.environ.get("GRADSCOPE_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_markdown_escaping_keeps_model_strings_as_text():
    assert md("<img src=x onerror=alert(1)>") == r"\<img src=x onerror=alert(1)\>"
    assert md("a|b `c` *d* _e_ [f](g) ~h~ &amp; $x$") == r"a\|b \`c\` \*d\* \_e\_ \[f\](g) \~h\~ \&amp; \$x\$"
    assert md("two\nlines\ttab") == "two lines tab"


def test_hostile_names_render_as_text_in_markdown():
    text = render_markdown(rf.hostile_report())
    raw_tags = set(re.findall(r"(?<!\\)<(/?[a-z]+)", text))
    assert raw_tags == {"sub", "/sub"}  # ours only; every other < is escaped
    assert r"\<img src=x onerror=alert(1)\>" in text and r"\*\*bold\*\*" in text
    tables = [block for block in text.split("\n\n") if block.startswith("| ")]
    for table in tables:
        counts = {len(re.split(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(counts) == 1, table


# --- HTML --------------------------------------------------------------------------------


def test_html_is_self_contained_with_plots_and_tables(demo_report):
    page = html_module.render_page(demo_report)
    for key in ("flow", "ratios", "blocks"):
        assert f'id="plot-{key}"' in page
    assert 'id="param-table"' in page and page.count("<tr data-variant=") == len(demo_report.params) + len(
        demo_report.blocks) + sum(len(c["blocks"]) for c in demo_report.comparisons)
    assert 'id="figure-heatmap"' not in page  # no time series in a demo report
    # nothing is fetched: no external URL, no src attribute (images are data: URIs inside the SVG)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert " src=" not in page and "<link" not in page
    assert page.count("<script") == 1 and page.count("<style") == 1


def test_html_policy_allows_only_our_script_and_style(demo_report):
    page = html_module.render_page(demo_report)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert html_module._csp_hash(script) in policy and html_module._csp_hash(style) in policy


def test_hostile_names_render_as_text_in_html():
    report = rf.hostile_report()
    page = html_module.render_page(report)
    assert "<img" not in page and "<svg onload" not in page and "alert(3)</script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<script") == 1  # ours; the model's "<script>" is text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_monitor_report_gets_a_heatmap_and_global_norm_plot(monitor_report):
    keys = [p.key for p in all_plots(monitor_report)]
    assert "heatmap" in keys and "global" in keys
    page = html_module.render_page(monitor_report)
    assert 'id="plot-heatmap"' in page and 'id="plot-global"' in page


def test_heatmap_cells_are_one_png_of_blocks_by_steps(monitor_report):
    from PIL import Image
    import io

    svg_text = RENDERERS["svg"](monitor_report)["heatmap.svg"].decode()
    data = re.search(r'href="data:image/png;base64,([^"]+)"', svg_text).group(1)
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    steps = len({r["step"] for r in monitor_report.series})
    blocks = len({r["block"] for r in monitor_report.series if r["block"] is not None})
    assert image.size == (steps, blocks)


@pytest.mark.slow
def test_plots_stay_readable_with_300_blocks_and_long_series():
    report = rf.synthetic_report(layers=300, tensors_per_layer=2, variants=("pretrained", "scratch"), steps=2000)
    svgs = RENDERERS["svg"](report)
    flow = svgs["flow.svg"].decode()
    assert "<circle" not in flow  # no per-point markers when they would overlap
    assert len(re.findall(r'text-anchor="middle" font-size="11">\d+</text>', flow)) <= 11  # depth ticks
    assert len(svgs["heatmap.svg"]) < 400_000
    heatmap = next(p for p in all_plots(report) if p.key == "heatmap")
    assert len(heatmap.x) == 600 and "Showing 600 of 2000 recorded steps" in heatmap.caption
    assert set(p.key for p in all_plots(report)) <= set(PLOT_KEYS)


def test_svg_and_png_files_for_papers(demo_report, tmp_path):
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    written = {p.name for p in demo_report.save(tmp_path, formats="svg,png")}
    assert written == {"flow.svg", "ratios.svg", "blocks.svg", "flow.png", "ratios.png", "blocks.png"}
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "flow.svg").read_text().startswith("<svg xmlns=")


def test_png_without_matplotlib_is_a_usage_error(demo_report, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(UsageError, match="`formats='png'` needs matplotlib.*`formats='svg'`"):
        demo_report.save(tmp_path / "out", formats="json,png")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rendering_imports_neither_matplotlib_nor_pandas(tmp_path):
    code = (
        "import sys; sys.path.insert(0, 'tests'); import report_fixtures as rf; "
        "r = rf.synthetic_report(6, 2, steps=5); "
        f"r.save({str(tmp_path)!r}, formats='json,csv,md,html,svg'); "
        "heavy = [m for m in ('matplotlib', 'pandas') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _monitor_report_with_an_inf_step(inf_step: int = 7, steps: int = 12, block_name: str = ""):
    """A real GradientMonitor's report where one step's gradient holds an Inf (that step is then skipped)."""
    import warnings

    import torch
    from torch import nn

    from gradscope import GradientMonitor

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)], nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    monitor = GradientMonitor(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the monitor's own warning about the Inf
        for step in range(1, steps + 1):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if step == inf_step:
                net[2][0].weight.grad[0, 0] = float("inf")
            monitor.step()
            if step != inf_step:
                opt.step()
        report = monitor.report()
    if block_name:
        for r in report.series + report.blocks + report.params:
            if r.get("block") == "2":
                r["block"] = block_name
    return report


def _svg(report, key: str) -> str:
    return RENDERERS["svg"](report)[f"{key}.svg"].decode()


def _legend_labels(svg_text: str) -> list[str]:
    return re.findall(r'<g class="legend-item" data-series="\d+">.*?<text[^>]*>([^<]*)</text></g>', svg_text)


def test_flow_plot_stacks_param_and_output_gradients_with_one_legend_entry_per_variant(demo_report):
    flow = _svg(demo_report, "flow")
    assert "parameter gradient dL/dθ</text>" in flow and "gradient at the block&#x27;s output dL/dh</text>" in flow
    assert _legend_labels(flow) == demo_report.variant_names
    assert flow.count('class="series" data-series="0"') == 2  # dL/dθ and dL/dh of the first variant, picked together
    assert "0 = the block nearest the input (left)" in flow  # which way depth runs, on the axis itself
    caption = next(p for p in all_plots(demo_report) if p.key == "flow").caption
    assert "Depth 0 (left) is blocks.0, next to the input" in caption


def test_many_variants_stay_distinguishable_by_color_and_marker():
    report = rf.synthetic_report(layers=6, tensors_per_layer=1, variants=[f"v{i}" for i in range(14)])
    flow = _svg(report, "flow")
    items = re.findall(r'<g class="legend-item" data-series="\d+">(.*?)</g>', flow)
    assert len(items) == 14
    signatures = set()
    for item in items:  # the line sample's color and the marker's kind and shape, positions left out
        mark = re.search(r"<(circle|polygon)[^>]*>", item).group(0)
        shape = re.sub(r"-?\d+\.\d", "#", re.sub(r'(points|cx|cy)="[^"]*"', "", mark))
        points = re.search(r'points="([^"]*)"', mark)
        offsets = [round(float(v) - float(points.group(1).split()[0].split(",")[i % 2]), 1)
                   for i, v in enumerate(points.group(1).replace(",", " ").split())] if points else []
        signatures.add((re.search(r'stroke="([^"]+)"', item).group(1), shape, tuple(offsets)))
    assert len(signatures) == 14


def test_log_axes_label_the_decades_at_both_ends():
    from gradscope.report.svg import decade_ticks, log_range

    for low, high in ((1e-18, 5.0), (3e-7, 2e3), (0.2, 0.4), (1e-30, 1e10)):
        lo, hi = log_range([low, high])
        ticks = decade_ticks(lo, hi)
        assert ticks[0] == lo and ticks[-1] == hi and lo <= math.log10(low) and math.log10(high) <= hi
        assert len(ticks) <= 9


def test_monitor_page_flags_the_nonfinite_step_in_text_plots_and_heatmap():
    from PIL import Image
    import io

    from gradscope.report.svg import NONFINITE, _hex

    report = _monitor_report_with_an_inf_step(inf_step=7, block_name=rf.HOSTILE)
    page = html_module.render_page(report)
    assert '<section id="incidents">' in page and 'href="#incidents"' in page
    assert "NaN or Inf in the gradients at 1 of 12 recorded step(s), first at step 7" in page
    assert rf.HOSTILE not in page and html_module._e(rf.HOSTILE) in page  # the block's name, escaped
    assert page.index('id="figure-global"') < page.index('id="figure-heatmap"') < page.index('id="figure-flow"')
    glob = _svg(report, "global")
    assert re.search(r'<polygon class="mark"[^>]*><title>step 7: 1 non-finite gradient value\(s\)</title>', glob)
    heat = _svg(report, "heatmap")
    assert heat.count('<polygon class="mark"') == 1 and "NaN or Inf in the gradient</text>" in heat
    spec = next(p for p in all_plots(report) if p.key == "heatmap")
    row, col = spec.rows.index(rf.HOSTILE), spec.x.index(7)
    assert spec.nonfinite[row][col] and sum(map(sum, spec.nonfinite)) == 1
    image = Image.open(io.BytesIO(base64.b64decode(re.search(r'base64,([^"]+)"', heat).group(1)))).convert("RGB")
    assert image.getpixel((col, len(spec.rows) - 1 - row)) == _hex(NONFINITE)  # red, not the grey of no gradient
    assert image.getpixel((col + 1, len(spec.rows) - 1 - row)) != _hex(NONFINITE)


def test_a_sampled_heatmap_keeps_every_nonfinite_step():
    report = rf.synthetic_report(layers=4, tensors_per_layer=1, variants=("pretrained",), steps=2000)
    for r in report.series:
        if r["step"] == 1237:
            r["grad_nonfinite"], r["grad_l2"] = 1, None
    spec = next(p for p in all_plots(report) if p.key == "heatmap")
    assert 1237 in spec.x and all(spec.nonfinite[d][spec.x.index(1237)] for d in range(4))
    assert "plus steps with a non-finite gradient" in spec.caption


def _png_figure(spec):
    """The matplotlib Figure that --format png saves for ``spec``, drawn once so that its layout is final."""
    from gradscope.report import mpl

    fig = mpl.figure(spec)
    fig.canvas.draw()
    return fig


def _plot_spec(report, key: str):
    return next(p for p in all_plots(report) if p.key == key)


def test_png_flow_plot_stacks_panels_with_the_svgs_color_and_marker_per_variant(demo_report):
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    from PIL import Image
    import io

    from gradscope.report.mpl import SHAPES, render_png
    from gradscope.report.svg import color

    spec = _plot_spec(demo_report, "flow")
    fig = _png_figure(spec)
    top, bottom = fig.axes
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(dict.fromkeys(line.panel for line in spec.lines))
    assert top.get_shared_x_axes().joined(top, bottom) and top.get_yscale() == bottom.get_yscale() == "log"
    assert len(top.get_lines()) == len(bottom.get_lines()) == len(demo_report.variant_names)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == demo_report.variant_names  # each variant once
    by_panel = sorted(spec.lines, key=lambda line: line.dashed)  # the dL/dθ panel's lines, then dL/dh's
    for line, drawn in zip(by_panel, top.get_lines() + bottom.get_lines()):
        assert drawn.get_color() == color(line.color) and drawn.get_marker() == SHAPES[line.color % len(SHAPES)]
        assert drawn.get_linestyle() == ("--" if line.dashed else "-")
    assert Image.open(io.BytesIO(render_png(spec))).size == tuple(fig.canvas.get_width_height())


def test_png_many_variants_stay_distinguishable_by_color_and_marker():
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    report = rf.synthetic_report(layers=6, tensors_per_layer=1, variants=[f"v{i}" for i in range(14)])
    (legend,) = _png_figure(_plot_spec(report, "flow")).legends
    handles = legend.legend_handles
    assert len(handles) == 14
    assert len({(h.get_color(), h.get_marker(), h.get_markerfacecolor()) for h in handles}) == 14


def test_png_marks_the_nonfinite_step_and_paints_its_heatmap_cell_red():
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    from PIL import Image
    import io

    from matplotlib.colors import to_hex

    from gradscope.report.mpl import render_png
    from gradscope.report.svg import NONFINITE, _hex

    report = _monitor_report_with_an_inf_step(inf_step=7)
    glob = _png_figure(_plot_spec(report, "global"))
    (ax,) = glob.axes
    red = [line for line in ax.get_lines() if to_hex(line.get_color()) == NONFINITE]
    assert sorted((line.get_marker(), list(line.get_xdata())) for line in red) == [("None", [7, 7]), ("v", [7])]
    assert any(h.get_marker() == "v" for h in glob.legends[0].legend_handles)  # the ▼ is in the legend

    spec = _plot_spec(report, "heatmap")
    fig = _png_figure(spec)
    ax = fig.axes[0]
    image = Image.open(io.BytesIO(render_png(spec))).convert("RGB")
    row, col = next((r, c) for r, flags in enumerate(spec.nonfinite) for c, flag in enumerate(flags) if flag)

    def pixel(r, c):  # a cell's centre, in the PNG's top-down pixel rows
        x, y = ax.transData.transform((c, r))
        return image.getpixel((int(x), image.height - 1 - int(y)))

    assert pixel(row, col) == _hex(NONFINITE) and pixel(row, col + 1) != _hex(NONFINITE)
    assert ["v"] == [line.get_marker() for line in ax.get_lines()]  # one ▼ above the flagged column
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["no gradient, or all zero",
                                                                  "NaN or Inf in the gradient"]


def test_png_files_of_a_training_run(tmp_path):
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    from PIL import Image

    report = _monitor_report_with_an_inf_step()
    written = {p.name for p in report.save(tmp_path, formats="png")}
    assert {"global.png", "heatmap.png", "flow.png"} <= written
    for name in written:
        with Image.open(tmp_path / name) as image:
            image.verify()


def test_parameter_table_puts_names_first_explains_columns_and_marks_problem_rows():
    report = rf.synthetic_report(layers=3, tensors_per_layer=2, variants=("pretrained",))
    report.params[1].update(has_grad=False, grad_l2=None)
    report.params[2].update(grad_nonfinite=3)
    page = html_module.render_page(report)
    table = re.search(r'<table class="data sortable filterable" id="param-table">.*?</table>', page, re.S).group(0)
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert heads[:4] == ["name", "variant", "depth", "grad_l2"]
    assert re.search(r'<th class="n" title="grad_l2 / weight_l2[^"]*" scope="col">grad_to_weight</th>', table)
    assert table.count('class="problem"') == 2
    assert 'id="param-table-problems"> only the 2 row(s) with no, all-zero or non-finite gradients' in page


def test_warnings_are_cards_with_their_fix_and_information_is_a_table(demo_report):
    page = html_module.render_page(demo_report)
    warnings = [f for f in demo_report.findings if f["severity"] == "warning"]
    infos = [f for f in demo_report.findings if f["severity"] == "info"]
    assert warnings and infos
    assert page.count('<article class="finding sev-warning">') == len({(f["message"], f["evidence"]) for f in warnings})
    assert page.count('<p class="fix"><span class="label">Fix</span>') == len({f["message"] for f in warnings})
    notes = re.search(r'<table class="data notes">.*?</table>', page, re.S).group(0)
    assert notes.count("<tr>") == 1 + len(infos)


def test_glance_line_names_each_verdict_worst_first(demo_report):
    page = html_module.render_page(demo_report)
    glance = re.search(r'<p class="glance">(.*?)</p>', page).group(1)
    assert glance.index("v-vanishing") < glance.index("v-healthy")
    for s in demo_report.summaries:
        assert s["variant"] in glance


def test_wide_tables_scroll_inside_the_page_and_print_and_dark_styles_exist(demo_report):
    page = html_module.render_page(demo_report)
    assert '<section id="verdicts"><h2>Verdicts</h2><div class="wide"><table' in page
    assert '<div class="wide"><table class="data"><thead><tr><th>a / b</th>' in page
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert "@media print" in style and "prefers-color-scheme: dark" in style and "@page" in style


def test_hostile_variant_names_are_text_in_glance_legends_and_tables():
    evil = "<b>x</b>relu"
    data = json.loads(json.dumps(rf.hostile_report().to_dict()).replace('"relu"', json.dumps(evil)))
    report = Report.from_dict(data)
    page = html_module.render_page(report)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;relu" in page
    assert "&lt;b&gt;x&lt;/b&gt;relu" in re.search(r'<p class="glance">(.*?)</p>', page).group(1)
    assert "&lt;b&gt;x&lt;/b&gt;relu" in "".join(_legend_labels(_svg(report, "flow")))


# --- colors and scales -------------------------------------------------------------------------

_HEX = r"#[0-9a-f]{6}"


def _series_colors(svg_text: str) -> dict[str, set]:
    """Series name -> the colors its legend sample and its drawn lines have in one line plot's SVG."""
    seen: dict[str, set] = {}
    for stroke, label in re.findall(rf'<g class="legend-item" data-series="\d+"><line [^>]*stroke="({_HEX})".*?'
                                    r"<text[^>]*>([^<]*)</text></g>", svg_text):
        seen.setdefault(unescape(label), set()).add(stroke)
    for label, stroke in re.findall(rf'<g class="series" data-series="\d+"><title>([^<]*)</title><path [^>]*'
                                    rf'stroke="({_HEX})"', svg_text):
        series = unescape(label).rsplit(" ", 1)[0]  # "sigmoid dL/dθ" is sigmoid's line
        seen.setdefault(series, set()).add(stroke)
    return seen


def _bar_colors(svg_text: str) -> dict[str, set]:
    """Panel (variant) -> the fills of its bars in the |g| bar chart's SVG."""
    chunks = re.split(r'<text x="[\d.]+" y="[\d.]+" font-size="12" font-weight="600">([^<]*)</text>', svg_text)
    return {unescape(label): set(re.findall(rf'<rect [^>]*fill="({_HEX})"', body))
            for label, body in zip(chunks[1::2], chunks[2::2])}


def _swatch_colors(section: str) -> dict[str, set]:
    """Row name -> the color of the swatch (an inline SVG marker) before it, in one table of the page."""
    return {unescape(name).strip(): set(re.findall(rf'"({_HEX})"', mark))
            for mark, name in re.findall(r'<td>(<svg class="swatch".*?</svg>)([^<]*)</td>', section)}


def test_a_variant_keeps_its_color_in_every_plot_and_table_and_a_pair_takes_its_first_variants(demo_report):
    page = html_module.render_page(demo_report)
    drawn = {key: re.search(rf'<svg [^>]*id="plot-{key}".*?</svg><figcaption>', page, re.S).group(0)
             for key in ("flow", "ratios", "blocks")}
    section = {key: re.search(rf'<section id="{key}">.*?</section>', page, re.S).group(0)
               for key in ("verdicts", "comparisons")}
    names = demo_report.variant_names
    flow = _series_colors(drawn["flow"])
    assert sorted(flow) == sorted(names) and all(len(c) == 1 for c in flow.values())  # legend and lines agree
    variant_color = {name: next(iter(c)) for name, c in flow.items()}
    assert len(set(variant_color.values())) == len(names)
    # a pair a / b is drawn in a's color: tanh / sigmoid, relu / sigmoid, relu-he / relu each have another a
    pair_color = {f"{c['a']} / {c['b']}": {variant_color[c["a"]]} for c in demo_report.comparisons}
    assert len(pair_color) == 3
    assert _series_colors(drawn["ratios"]) == pair_color
    own = {name: {color} for name, color in variant_color.items()}
    assert _bar_colors(drawn["blocks"]) == own
    assert _swatch_colors(section["verdicts"]) == own
    assert _swatch_colors(section["comparisons"]) == pair_color
    # the standalone SVG files are the same drawings
    for key in ("flow", "ratios", "blocks"):
        parse = _bar_colors if key == "blocks" else _series_colors
        assert parse(_svg(demo_report, key)) == parse(drawn[key])


def test_each_pair_gets_a_color_of_its_own_taken_from_its_variants_where_free():
    from gradscope.report.plots import colors

    report = Report(variants=[{"name": n} for n in ("pretrained", "scratch", "shallow", "sigmoid")],
                    comparisons=[{"a": a, "b": b} for a, b in (("pretrained", "scratch"), ("pretrained", "shallow"),
                                                               ("sigmoid", "scratch"), ("shallow", "sigmoid"))])
    palette = colors(report)
    assert palette.variants == {"pretrained": 0, "scratch": 1, "shallow": 2, "sigmoid": 3}
    # a's color; b's where an earlier pair has a's; where both are taken, one that no variant has
    assert palette.pairs == {("pretrained", "scratch"): 0, ("pretrained", "shallow"): 2, ("sigmoid", "scratch"): 3,
                             ("shallow", "sigmoid"): 4}
    assert palette.spare() == 5


def test_png_plots_give_a_variant_and_its_pairs_the_svgs_color(demo_report):
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    from matplotlib.colors import to_hex

    def legend_colors(key: str) -> dict[str, str]:
        (legend,) = _png_figure(_plot_spec(demo_report, key)).legends
        return {t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}

    flow, ratios = legend_colors("flow"), legend_colors("ratios")
    assert flow == {name: colors.pop() for name, colors in _series_colors(_svg(demo_report, "flow")).items()}
    assert ratios == {f"{c['a']} / {c['b']}": flow[c["a"]] for c in demo_report.comparisons}
    bars = _png_figure(_plot_spec(demo_report, "blocks"))
    for ax in bars.axes:
        fills = {to_hex(p.get_facecolor(), keep_alpha=False) for p in ax.patches}
        assert fills == {flow[ax.get_title(loc="left")]}


def test_palette_colors_are_pairwise_distinguishable():
    import color_reference as cr
    from gradscope.report.svg import (NONFINITE, PALETTE, PALETTE_MIN_DELTA_E, PALETTE_MIN_DELTA_E_FROM_NONFINITE,
                                      marker_kind)

    for lab1, lab2, expected in cr.SHARMA_PAIRS:  # the yardstick first, against the published test data
        assert cr.ciede2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)
    assert len(PALETTE) >= 12 and PALETTE_MIN_DELTA_E >= 20 and len(set(PALETTE)) == len(PALETTE)
    closest = min((cr.delta_e(a, b), a, b) for i, a in enumerate(PALETTE) for b in PALETTE[i + 1:] + ("#ffffff",))
    assert closest[0] >= PALETTE_MIN_DELTA_E, closest
    assert min(cr.delta_e(c, NONFINITE) for c in PALETTE) >= PALETTE_MIN_DELTA_E_FROM_NONFINITE
    # past the palette, the marker shape tells series apart: no two of the first 72 share color and shape
    n = len(PALETTE) * 6
    assert len({(PALETTE[i % len(PALETTE)], marker_kind(i)) for i in range(n)}) == n


def _report_with_a_zero_a_tiny_and_a_nan_block():
    report = rf.synthetic_report(layers=6, tensors_per_layer=1, variants=("pretrained", "scratch", "dead"))
    for r in report.block_rows("dead"):  # every gradient all zero
        r.update(grad_maxabs=0.0, grad_meanabs=0.0, grad_zero_frac=1.0)
    rows = report.block_rows("scratch")
    rows[0].update(grad_maxabs=0.0, grad_meanabs=0.0, grad_zero_frac=1.0)  # an all-zero gradient
    rows[1].update(grad_maxabs=1e-12, grad_meanabs=1e-13)  # the smallest value, on a whole decade
    rows[2].update(grad_maxabs=math.nan, grad_meanabs=math.nan, grad_nonfinite=3)
    rows[3].update(grad_maxabs=math.nan, grad_meanabs=math.nan)  # no gradient at all
    return report


def test_bars_reach_down_to_the_smallest_value_and_a_zero_is_marked_unlike_a_tiny_value():
    from gradscope.report.svg import MIN_BAR_PX, NONFINITE

    report = _report_with_a_zero_a_tiny_and_a_nan_block()
    blocks = _svg(report, "blocks")
    scratch, dead = blocks.split(">scratch</text>")[1].split(">dead</text>")
    groups = {unescape(title).split(":")[0]: body for title, body in
              re.findall(r"<g><title>([^<]*)</title>(.*?)</g>", scratch)}
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)" fill="#', groups["model.layers.1"])]
    assert len(heights) == 2 and min(heights) >= MIN_BAR_PX  # 1e-13 stands above the floor
    assert re.fullmatch(r'<text class="floor-note" [^>]*fill="#333">0</text>', groups["model.layers.0"])
    assert re.fullmatch(rf'<text class="floor-note" [^>]*fill="{NONFINITE}">NaN</text>', groups["model.layers.2"])
    assert "model.layers.3" not in groups  # no gradient: nothing drawn, as before
    assert dead.count('<text class="floor-note"') == 6 and not re.search(rf'<rect [^>]*fill="{_HEX}"', dead)
    caption = _plot_spec(report, "blocks").caption
    assert '"0" at the foot of a panel: 7 block(s) whose gradient is exactly zero' in caption
    assert '"NaN": 1 block(s) with a NaN or Inf in the gradient' in caption
    assert "gradient exactly zero" in unescape(blocks)  # the zero's tooltip says what it is


def test_png_bars_reach_down_to_the_smallest_value_and_mark_a_zero():
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    report = _report_with_a_zero_a_tiny_and_a_nan_block()
    fig = _png_figure(_plot_spec(report, "blocks"))
    ax = fig.axes[1]
    assert ax.get_title(loc="left") == "scratch"
    floor, _ = ax.get_ylim()
    assert floor <= 1e-13 / 2  # a factor of two at least: the smallest bar has a height
    tops = [p.get_y() + p.get_height() for p in ax.patches if math.isfinite(p.get_height())]
    assert min(tops) == pytest.approx(1e-13) and all(p.get_y() == floor for p in ax.patches)
    notes = {(t.get_text(), t.xy[0]) for t in ax.texts}
    assert notes == {("0", 0), ("NaN", 2)}


# --- writing ---------------------------------------------------------------------------------


def test_existing_report_is_not_overwritten_without_force(demo_report, tmp_path):
    demo_report.save(tmp_path, formats="json,md")
    before = (tmp_path / "report.md").read_bytes()
    with pytest.raises(GradscopeError, match=r"report.json already exists; pass `force=True`"):
        demo_report.save(tmp_path, formats="json,md")
    assert (tmp_path / "report.md").read_bytes() == before
    demo_report.save(tmp_path, formats="json,md", force=True)


def test_a_renderer_failing_mid_save_leaves_nothing_behind(demo_report, tmp_path, monkeypatch):
    def broken(report):
        raise RuntimeError("renderer bug")

    monkeypatch.setitem(RENDERERS, "md", broken)
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError, match="renderer bug"):
        demo_report.save(out, formats="json,html,md")
    assert not (tmp_path / "new").exists()


def test_an_interrupted_write_restores_what_was_there(demo_report, tmp_path, monkeypatch):
    import gradscope.report.files as report_module

    demo_report.save(tmp_path, formats="json,html,md")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace
    calls = []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the first file is already in place when the interrupt comes
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(report_module.os, "replace", interrupted)
    changed = Report(**{**demo_report.__dict__, "meta": {**demo_report.meta, "model": "changed"}})
    with pytest.raises(KeyboardInterrupt):
        changed.save(tmp_path, formats="json,html,md", force=True)
    monkeypatch.setattr(report_module.os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files back, no temporaries


def test_an_interrupted_first_write_leaves_no_files(demo_report, tmp_path, monkeypatch):
    import gradscope.report.files as report_module

    real_write = os.fdopen
    opened = []

    def fdopen(fd, *args, **kwargs):
        opened.append(fd)
        if len(opened) == 3:
            raise KeyboardInterrupt
        return real_write(fd, *args, **kwargs)

    monkeypatch.setattr(report_module.os, "fdopen", fdopen)
    with pytest.raises(KeyboardInterrupt):
        demo_report.save(tmp_path / "out", formats="json,html,md")
    assert not (tmp_path / "out").exists()


def test_force_removes_the_old_reports_other_files_with_the_write(demo_report, tmp_path):
    demo_report.save(tmp_path, formats="json,html,md,csv")
    with pytest.raises(UsageError, match=r"report.json already exists; pass `force=True`"):
        demo_report.save(tmp_path, formats="svg")  # another format, same directory: still one report per directory
    demo_report.save(tmp_path, formats="md", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_a_failed_forced_write_leaves_the_old_report_whole(demo_report, tmp_path, monkeypatch):
    import gradscope.report.files as report_module

    demo_report.save(tmp_path, formats="json,html,md")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def fail_on_the_last_removal(src, dst):
        if str(dst).endswith(".old") and Path(src).name == "report.html":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(report_module.os, "replace", fail_on_the_last_removal)
    changed = Report(**{**demo_report.__dict__, "meta": {**demo_report.meta, "model": "changed"}})
    with pytest.raises(GradscopeError, match="cannot write the report"):
        changed.save(tmp_path, formats="json", force=True)  # md went aside, html could not: all is undone
    monkeypatch.setattr(report_module.os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- reading ----------------------------------------------------------------------------------------


def test_reading_checks_the_structure(demo_report, monitor_report, golden_report):
    for report in (demo_report, monitor_report, golden_report):
        assert Report.from_dict(json.loads(json.dumps(report.to_dict()))).to_dict() == report.to_dict()
    data = demo_report.to_dict()
    data["params"][3] = {**data["params"][3], "has_grad": "yes"}
    with pytest.raises(UsageError, match=r"^the data is not a gradscope report: params\[3\].has_grad is a string "
                                         r"\('yes'\), not true or false$"):
        Report.from_dict(data)
    data = {**demo_report.to_dict(), "variants": demo_report.to_dict()["variants"] * 2}
    with pytest.raises(UsageError, match="variant 'sigmoid' is listed twice"):
        Report.from_dict(data)
    newer = {**demo_report.to_dict(), "schema": "gradscope.report/2", "future_field": 1}
    with pytest.raises(UsageError, match="upgrade gradscope"):
        Report.from_dict(newer)
    assert Report.from_dict({**demo_report.to_dict(), "future_field": 1})  # added keys are allowed within /1


# --- wording and per-block tables --------------------------------------------------------------------


def test_trend_cells_say_the_factor_when_it_takes_under_one_block():
    from gradscope.analysis import describe_decay, fit_decay
    from gradscope.report.fmt import decay_text

    falls, halves = fit_decay([1 / 7 ** (3 - d) for d in range(4)]), fit_decay([0.6 ** (3 - d) for d in range(4)])
    grows, flat = fit_decay([3.0 ** (3 - d) for d in range(4)]), fit_decay([1.03 ** (3 - d) for d in range(4)])
    gentle = fit_decay([1.2 ** (3 - d) for d in range(4)])  # under 2x across the stack, but 1.2x per block: a rate
    assert [decay_text(d) for d in (falls, halves, grows, flat, gentle)] == [
        "falls 7x/block", "halves every 1.4", "grows 3x/block", "flat", "doubles every 3.8"]
    assert describe_decay(falls) == "the gradient falls 7x per block toward the input (R^2 1.00)"
    assert describe_decay(grows) == "the gradient grows 3x per block toward the input (R^2 1.00)"
    assert describe_decay(halves).startswith("the gradient halves every 1.36 blocks")
    # a report written before shapes were recorded reads its trend as it did
    assert decay_text({"trend": "shrinks", "factor_per_block": 0.5, "r2": 1.0, "halves_every_blocks": 1.0}) == (
        "halves every 1")
    assert decay_text({"trend": "flat", "factor_per_block": 0.98, "r2": 0.1}) == "flat"
    assert decay_text(None) == "-"


def test_summary_tables_state_the_flat_rule(demo_report):
    from gradscope.report.terminal import render_text

    rule = "flat means within 1.05x per block"
    assert rule in render_text(demo_report) and rule in render_markdown(demo_report)
    assert rule in html_module.render_page(demo_report)


def _shallow_report():
    """pretrained with blocks a.0, a.1, b.0, b.1; a shallow copy that kept a.0 and b.0 (as analyze's shallow does)."""
    report = Report(meta={"model": "m"})
    for variant, blocks in (("pretrained", ["a.0", "a.1", "b.0", "b.1"]), ("shallow", ["a.0", "b.0"])):
        report.variants.append({"name": variant})
        report.summaries.append({"variant": variant, "verdict": "healthy", "flow_signal": "dL/dh", "decay": None})
        scale = 1.0 if variant == "pretrained" else 1000.0
        report.blocks += [{"block": b, "depth": d, "variant": variant, "grad_l2": 1.0,
                           "act_grad_l2": scale * (d + 1)} for d, b in enumerate(blocks)]
    return report


def test_a_shallow_variants_values_stay_on_its_own_blocks():
    from gradscope.report.terminal import flow_lines

    report = _shallow_report()
    lines = flow_lines(report)
    rows = {line.split()[1]: line.split()[2:] for line in lines[3:7]}
    assert rows == {"a.0": ["1", "1e+03"], "a.1": ["2"], "b.0": ["3", "2e+03"], "b.1": ["4"]}
    assert "a blank cell: that variant has no block of that name (depths are pretrained's)" in lines
    table = [line for line in render_markdown(report).splitlines() if line.startswith("| ") and "." in line]
    assert table == ["| 0 | a.0 | 1 | 1e+03 |", "| 1 | a.1 | 2 |  |", "| 2 | b.0 | 3 | 2e+03 |", "| 3 | b.1 | 4 |  |"]
    flow = next(p for p in all_plots(report) if p.key == "flow")  # the page's plot: names per point, caption says so
    assert ("Depth 0 (left) is a.0, next to the input; depth 3 (right) is b.1 in pretrained (other variants have "
            "other blocks at some depths)" in flow.caption)


def test_different_models_flow_table_names_each_values_block():
    from gradscope.report.fmt import flow_table

    report = _shallow_report()
    for b in report.blocks:
        if b["variant"] == "shallow":
            b["block"] = b["block"].replace("a.", "stage1.").replace("b.", "stage2.")
    table = flow_table({n: report.block_rows(n) for n in report.variant_names})
    assert table.matched_by == "depth"
    assert [(r.block, r.own_name) for r in table.rows] == [("a.0", {"shallow": "stage1.0"}),
                                                           ("a.1", {"shallow": "stage2.0"}), ("b.0", {}), ("b.1", {})]
    assert "| 1 | a.1 | 2 | 2e+03 (stage2.0) |" in render_markdown(report)


# --- what a training report says about its run; skipped baselines --------------------------------------------


def _copy(report) -> Report:
    return Report.from_dict(json.loads(json.dumps(report.to_dict())))


def test_a_report_measured_after_the_trainers_clipping_says_so(monitor_report):
    report = _copy(monitor_report)
    report.meta.update(clip_stage="after_clip", max_grad_norm=1.0)
    stage = "after the Trainer clipped to max_grad_norm 1.0: the pre-clip norm is the Trainer's own grad_norm"
    text = render_markdown(report)
    assert f"- **gradients measured**: {md(stage)}\n" in text
    assert re.search(rf"at the first, [0-9.]+ at the last, measured {re.escape(md(stage))}\.\n", text)
    page = html_module.render_page(report)
    header = re.search(r"<header>.*</header>", page).group(0)
    assert f"<dt>gradients measured</dt><dd>{html_module._e(stage)}</dd>" in header
    caption = re.search(r'<figure id="figure-global">.*?<figcaption>(.*?)</figcaption>', page, re.S).group(1)
    assert caption.endswith(f" Measured {html_module._e(stage)}.")
    assert "measured" not in render_markdown(monitor_report)  # a plain loop's report has no clip stage


def test_a_training_reports_block_table_names_its_step(monitor_report):
    last = max(r["step"] for r in monitor_report.series)
    assert {b["step"] for b in monitor_report.blocks} == {last}
    assert f"; values at training step {last}, the last recorded.\n" in render_markdown(monitor_report)


def test_a_training_run_whose_last_step_is_nonfinite_says_so_in_markdown():
    report = _monitor_report_with_an_inf_step(inf_step=12, steps=12)
    text = render_markdown(report)
    assert ("- **error** (training): non-finite gradient values at 1 of 12 recorded step(s), first at step 12 in "
            "block 2; the last recorded step has them too\n") in text
    assert re.search(r"norm [0-9.]+ at the first, non-finite at the last\.", text)
    assert "a NaN or Inf in a block's gradient leaves its norm undefined (-)" in text
    assert "| 2 | 2 | - |" in text


def test_a_training_report_has_no_summaries_and_says_where_its_values_are(monitor_report):
    with pytest.raises(KeyError) as error:
        monitor_report.summary("training")
    assert error.value.args == ("a training report has no summaries: its per-step values are in report.series / "
                                "report.blocks",)


def test_a_skipped_baseline_is_one_line_in_every_summary(demo_report):
    from gradscope.report.terminal import render_text

    reason = f"the model has no stack of numbered blocks to shorten {rf.HOSTILE}"
    report = _copy(demo_report)
    report.meta["skipped"] = {"shallow": reason}
    line = f"shallow baseline skipped: {reason}"
    assert render_text(report).splitlines().count(line) == 1
    assert f"\n- {md(line)}\n" in render_markdown(report)
    page = html_module.render_page(report)
    assert f'<p class="muted">{html_module._e(line)}</p><dl class="facts">' in page and rf.HOSTILE not in page
    report.meta["skipped"] = {}
    assert "skipped" not in render_text(report) + render_markdown(report) + html_module.render_page(report)


# --- the package's seams: model, storage, formats, renderers -------------------------------------------------

REPORT_PACKAGE = REPO / "gradscope" / "report"


def _gradscope_imports(path: Path) -> list[tuple[str, bool]]:
    """(gradscope module or name imported, whether the import is inside a function) for each import in ``path``."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])  # gradscope.report, or gradscope
    found = []

    def visit(node, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1])
                    base = f"{parent}.{base}" if base else parent
                if base.split(".")[0] == "gradscope":
                    names = [f"{base}.{a.name}" for a in child.names] if not child.module else [base]
                    found.extend((name, nested) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, nested) for a in child.names if a.name.split(".")[0] == "gradscope")
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_the_report_package_imports_its_own_modules_at_the_top_and_in_one_direction():
    for path in [*sorted(REPORT_PACKAGE.glob("*.py")), REPO / "gradscope" / "compare.py"]:
        inside = [name for name, nested in _gradscope_imports(path) if nested]
        assert not inside, f"{path.name} imports {inside} inside a function"
    graph = {path.stem: {name.removeprefix("gradscope.report.") for name, _ in _gradscope_imports(path)
                         if name.startswith("gradscope.report.")}
             for path in REPORT_PACKAGE.glob("*.py")}
    importers = {module: {m for m, deps in graph.items() if module in deps} for module in graph}
    assert importers["model"] <= {"__init__"}  # the model on top: renderers and storage take a report as argument
    assert importers["storage"] <= {"__init__", "model"}
    assert importers["formats"] <= {"__init__", "model", "storage"}

    def on_a_cycle(module: str) -> bool:
        todo, seen = list(graph[module]), set()
        while todo:
            current = todo.pop()
            if current == module:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph.get(current, ()))
        return False

    assert not [m for m in graph if on_a_cycle(m)]


@pytest.mark.slow
def test_importing_the_report_package_imports_no_optional_or_heavy_dependency():
    code = ("import sys, gradscope.report; "
            "print([m for m in ('matplotlib', 'pandas', 'transformers', 'torchvision') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert run.stdout.strip() == "[]"


def test_each_format_writes_only_files_it_names(demo_report, monitor_report):
    from gradscope.report import DEFAULT_FORMATS, output_names

    assert set(DEFAULT_FORMATS) <= set(RENDERERS)
    for report in (demo_report, monitor_report):
        for fmt, render in RENDERERS.items():
            if fmt != "png":  # matplotlib's, and slow: its files are the svg's, checked below
                assert set(render(report)) <= set(output_names(fmt)), fmt
    assert output_names("png") == tuple(name.replace(".svg", ".png") for name in output_names("svg"))


def test_messages_name_python_options_and_the_command_line_shows_its_flags(demo_report, tmp_path, monkeypatch):
    import importlib.util

    from gradscope.cli import build_parser, option_flags
    from gradscope.errors import in_flag_terms
    from gradscope.report import check_formats, check_output

    demo_report.save(tmp_path / "taken", formats="md")
    (tmp_path / "a-file").write_text("x")
    taken, blocked = tmp_path / "taken", tmp_path / "a-file" / "out"
    real = importlib.util.find_spec
    cases = [
        (lambda: check_formats(" , "),
         "`formats`: give at least one format, e.g. `formats='json'`",
         "--format: give at least one format, e.g. --format json"),
        (lambda: check_formats("json,htm"),
         "`formats='htm'`: unknown format (did you mean html?); choose from json, csv, md, html, svg, png",
         "--format htm: unknown format (did you mean html?); choose from json, csv, md, html, svg, png"),
        (lambda: check_output(taken),
         f"{taken / 'report.md'} already exists; pass `force=True` to replace the report in {taken} (all its files), "
         "or choose another `directory`",
         f"{taken / 'report.md'} already exists; pass --force to replace the report in {taken} (all its files), "
         "or choose another --out"),
        (lambda: demo_report.save(blocked),
         f"`directory='{blocked}'`: {blocked.parent} is a file, not a directory; choose another `directory`",
         f"--out {blocked}: {blocked.parent} is a file, not a directory; choose another --out"),
        (lambda: Report.load(taken),
         f"{taken} holds a report without report.json (written without the json format); gradscope reads reports "
         "from their json: write it with `formats='json'`",
         f"{taken} holds a report without report.json (written without the json format); gradscope reads reports "
         "from their json: write it with --format json"),
        (lambda: (monkeypatch.setattr(importlib.util, "find_spec",
                                      lambda name, *a: None if name == "matplotlib" else real(name, *a)),
                  check_formats("png")),
         "`formats='png'` needs matplotlib, which is not installed: pip install matplotlib (gradscope's [plots] "
         "extra), or use `formats='svg'`, which needs nothing",
         "--format png needs matplotlib, which is not installed: pip install matplotlib (gradscope's [plots] "
         "extra), or use --format svg, which needs nothing"),
    ]
    flags = option_flags(build_parser().commands["demo"])
    for call, python, command_line in cases:
        with pytest.raises(UsageError) as error:
            call()
        assert (str(error.value), in_flag_terms(str(error.value), flags)) == (python, command_line)
