"""A training report's judgments and plots: the flow judged over windows of steps with analyze's rules, the global
norm before and after clipping with the clip level, and a heatmap for each per-block value the series holds.

Numbers are checked against float64 norms computed here from the gradients, and plots by reading the drawn SVG
back through its own axis."""

from __future__ import annotations

import math
import re
from typing import Optional

import pytest
import torch
from torch import nn

import report_fixtures as rf
from gradscope import GradientMonitor
from gradscope.analysis import training_flow_findings, training_windows
from gradscope.report import RENDERERS
from gradscope.report import html as html_module
from gradscope.report.markdown import render_markdown
from gradscope.report.plots import CLIP_LEVEL_LABEL, POST_CLIP_LABEL, PRE_CLIP_LABEL, all_plots


class SigmoidMLP(nn.Module):
    """An input layer, ``depth`` numbered Linear + Sigmoid blocks at PyTorch's default init, and a head."""

    def __init__(self, depth: int = 20, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Sigmoid()) for _ in range(depth))
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _block_l2(net: nn.Module, block: str) -> float:
    grads = [p.grad.double().reshape(-1) for n, p in net.named_parameters() if n.startswith(block + ".")]
    return torch.linalg.vector_norm(torch.cat(grads)).item()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


def _train(net: nn.Module, steps: int, *, clip_at: Optional[dict[int, float]] = None, lr: float = 0.1, blocks=()):
    """SGD on fixed random data with the monitor's optimizer hook, or its clip at the steps in ``clip_at``;
    returns the report and each step's float64 norms of ``blocks`` and of all gradients (before any clip)."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    refs = []
    with GradientMonitor(net) as monitor:
        for step in range(1, steps + 1):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            refs.append({b: _block_l2(net, b) for b in blocks})
            refs[-1]["global"] = torch.linalg.vector_norm(
                torch.cat([p.grad.double().reshape(-1) for p in net.parameters()])).item()
            if step in (clip_at or {}):
                monitor.clip_grad_norm_(clip_at[step])
            else:
                monitor.step()
            opt.step()
        return monitor.report(), refs


# --- verdicts during training ------------------------------------------------------------------


def test_a_deep_sigmoid_mlp_gets_a_vanishing_finding_with_its_first_to_last_ratio():
    torch.manual_seed(0)
    net = SigmoidMLP()
    report, refs = _train(net, 5, blocks=("layers.0", "layers.19"))
    ratio = _median([r["layers.0"] for r in refs]) / _median([r["layers.19"] for r in refs])
    assert ratio < 1e-10  # the float64 profile itself: a deep sigmoid stack at default init
    [finding] = [f for f in report.findings if f["kind"] == "vanishing"]
    assert finding["variant"] == "training" and finding["severity"] == "warning" and finding["block"] == "layers.0"
    assert finding["message"] == (f"steps 1 to 5 (every judged step): vanishing gradient: the first block gets "
                                  f"{ratio:.3g}x the last block's gradient")
    assert finding["evidence"].startswith("medians over steps 1 to 5, the last of 1 window(s) judged vanishing: "
                                          f"parameter gradient at layers.0 is {ratio:.3g}x its value at layers.19")
    assert "replace sigmoid with a ReLU-family activation" in finding["fix"]  # the model's own architecture
    assert not [f for f in report.findings if f["kind"] in ("healthy", "verdict-change")]


def _series(profiles: dict[int, list[float]], key: str = "grad_l2", **extra) -> list[dict]:
    """A training series: at each step its profile of ``key`` per block (depth 0 first), and a global row."""
    rows = []
    for step, profile in sorted(profiles.items()):
        for depth, value in enumerate(profile):
            rows.append({"step": step, "block": f"b.{depth}", "depth": depth, "grad_l2": 1.0, "grad_nonfinite": 0,
                         "grad_zero_frac": 0.0, key: value, **extra})
        rows.append({"step": step, "block": None, "depth": None, "grad_l2": 1.0, "grad_nonfinite": 0})
    return rows


def test_a_flow_that_starts_healthy_and_begins_to_vanish_is_a_change_finding_at_its_step():
    healthy = [0.9 ** (5 - d) for d in range(6)]
    vanishing = [10.0 ** -(5 - d) for d in range(6)]  # the first block gets 1e-5 of the last's
    series = _series({s: healthy if s <= 20 else vanishing for s in range(1, 41)})
    findings = training_flow_findings(series)
    assert [f["kind"] for f in findings] == ["healthy", "vanishing", "verdict-change"]
    first, later, change = findings
    assert first["message"] == "steps 1 to 20: gradient reaches every block" and first["severity"] == "info"
    assert later["message"] == ("steps 21 to 40: vanishing gradient: the first block gets 1e-05x the last block's "
                                "gradient")
    assert change["message"] == ("the gradient flow changed from healthy to vanishing at step 21: steps 11 to 20 "
                                 "were healthy, steps 21 to 30 vanishing")
    assert change["severity"] == "warning" and change["block"] == "b.0"
    assert "steps 11 to 20: parameter gradient first/last 0.59x" in change["evidence"]
    assert "steps 21 to 30: parameter gradient first/last 1e-05x" in change["evidence"]


def test_a_window_is_judged_on_each_blocks_median_so_one_noisy_step_does_not_decide_it():
    healthy = [1.0] * 4
    series = _series({s: [1e-6, 1.0, 1.0, 1.0] if s in (4, 15) else healthy for s in range(1, 21)})
    assert training_flow_findings(series) == []  # healthy in both windows: a healthy run adds no finding
    series = _series({s: [1e-6, 1.0, 1.0, 1.0] if s in (4, 5, 6, 7, 8, 9) else healthy for s in range(1, 21)})
    assert [f["message"][:18] for f in training_flow_findings(series)] == ["steps 1 to 10: van", "steps 11 to 20: gr",
                                                                         "the gradient flow "]


def test_dL_dh_is_the_flow_signal_where_the_series_recorded_it_at_every_block():
    series = _series({s: [10.0 ** -(3 - d) for d in range(4)] for s in range(1, 6)}, key="act_grad_l2")
    [finding] = training_flow_findings(series)
    assert finding["kind"] == "vanishing"
    assert "dL/dh at b.0 is 0.001x its value at b.3" in finding["evidence"]
    for r in series:  # dL/dh not recorded at these steps: the parameter gradient (healthy) is judged
        r["act_grad_l2"] = math.nan
    assert training_flow_findings(series) == []


def test_windows_are_at_least_ten_steps_and_at_most_twenty():
    assert training_windows([1, 2, 3]) == [[1, 2, 3]]
    assert [len(w) for w in training_windows(list(range(25)))] == [13, 12]
    windows = training_windows(list(range(1, 1001)))
    assert len(windows) == 20 and {len(w) for w in windows} == {50} and windows[0][0] == 1 and windows[-1][-1] == 1000
    assert training_windows([]) == []


def test_steps_with_a_nonfinite_value_are_left_out_of_the_windows():
    series = _series({s: [1e-3, 1.0, 1.0, 1.0] for s in range(1, 12)})
    for r in series:
        if r["step"] == 11:
            r["grad_nonfinite"], r["grad_l2"] = 1, math.nan
    [finding] = training_flow_findings(series)
    assert finding["message"].startswith("steps 1 to 10 (every judged step): vanishing gradient")


# --- the global norm before and after clipping, and the clip level -----------------------------


def _axis(svg_text: str):
    """The y of a value on the drawn log axis, from two of its labelled decade grid lines."""
    ticks = re.findall(r'<line x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)" y2="\1" stroke="#e3e3e3"/>\n<text [^>]*>10'
                       r'<tspan dy="-5" font-size="8">(-?\d+)</tspan>', svg_text)
    (y0, d0), (y1, d1) = [(float(y), int(d)) for y, d in (ticks[0], ticks[-1])]
    return lambda v: y0 + (math.log10(v) - d0) / (d1 - d0) * (y1 - y0)


def _path_points(svg_text: str, label: str) -> list[tuple[float, float]]:
    d = re.search(rf'<title>{re.escape(label)}</title><path d="([^"]*)"', svg_text).group(1)
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+) ([\d.]+)", d)]


CLIP = 0.09  # under the norm at some of the clipped steps, over it at others


def _clipped_report():
    torch.manual_seed(0)
    net = SigmoidMLP(depth=4, width=8)
    clip_at = {s: CLIP for s in range(4, 9)}  # steps 4 to 8 clipped, the others not
    return _train(net, 10, clip_at=clip_at)


def test_the_global_plot_draws_the_norm_before_clipping_the_norm_after_and_the_clip_level_where_clipped():
    report, refs = _clipped_report()
    glob = [r for r in report.series if r["block"] is None]
    assert all(math.isclose(r["grad_l2"], ref["global"], rel_tol=1e-6) for r, ref in zip(glob, refs))
    svg_text = RENDERERS["svg"](report)["global.svg"].decode()
    y_of = _axis(svg_text)
    pre = _path_points(svg_text, PRE_CLIP_LABEL)
    assert len(pre) == 10  # every recorded step, before any clip: the float64 norms of the gradients themselves
    assert all(abs(y - y_of(ref["global"])) <= 0.15 for (_, y), ref in zip(pre, refs))
    level = _path_points(svg_text, CLIP_LEVEL_LABEL)
    assert len(level) == 5 and all(abs(y - y_of(CLIP)) <= 0.15 for _, y in level)  # at the clipped steps only
    assert [x for x, _ in level] == [x for x, _ in pre[3:8]]
    post = _path_points(svg_text, POST_CLIP_LABEL)
    assert [x for x, _ in post] == [x for x, _ in pre[3:8]]
    posts = [r["grad_l2_post_clip"] for r in glob[3:8]]
    assert all(abs(y - y_of(v)) <= 0.15 for (_, y), v in zip(post, posts))
    assert re.search(r'<title>clip level max_norm \(clip_max_norm\)</title><path d="[^"]*" fill="none" '
                     r'stroke="#[0-9a-f]+" stroke-width="1.8" stroke-dasharray="2 3"/>', svg_text)
    legend = re.findall(r'<g class="legend-item" data-series="\d+">.*?<text[^>]*>([^<]*)</text></g>', svg_text)
    assert legend == [PRE_CLIP_LABEL, POST_CLIP_LABEL, CLIP_LEVEL_LABEL]
    over = sum(ref["global"] > CLIP for ref in refs[3:8])
    assert 0 < over < 5
    spec = next(p for p in all_plots(report) if p.key == "global")
    assert (f"Clipped at 5 of 10 recorded steps, to max_norm {CLIP:g}; the norm before clipping was above it at {over} "
            "of them") in spec.caption
    assert "Solid: the L2 norm of all monitored parameter gradients together, at each recorded step, before " \
           "clipping (report.series grad_l2). Dashed: the same norm after clipping" in spec.caption
    page = html_module.render_page(report)
    caption = re.search(r'<figure id="figure-global">.*?<figcaption>(.*?)</figcaption>', page, re.S).group(1)
    assert "Dotted: the clip level (clip_max_norm)" in caption
    text = render_markdown(report)
    assert f"Clipped at 5 of 10 recorded steps, to max\\_norm {CLIP:g}" in text
    assert "its global plot draws the norm before clipping solid, after clipping dashed and the clip level dotted" \
        in text


def test_a_step_clipped_alone_is_drawn_as_a_tick_at_the_clip_level():
    torch.manual_seed(0)
    report, _ = _train(SigmoidMLP(depth=4, width=8), 5, clip_at={3: CLIP})
    svg_text = RENDERERS["svg"](report)["global.svg"].decode()
    pre, level = _path_points(svg_text, PRE_CLIP_LABEL), _path_points(svg_text, CLIP_LEVEL_LABEL)
    (x0, y0), (x1, y1) = level
    assert x0 < pre[2][0] < x1 and abs(x1 - x0 - 4.0) < 0.11 and y0 == y1 and abs(y0 - _axis(svg_text)(CLIP)) <= 0.15


def test_an_unclipped_run_has_one_line_and_says_so():
    torch.manual_seed(0)
    report, _ = _train(SigmoidMLP(depth=4, width=8), 3)
    spec = next(p for p in all_plots(report) if p.key == "global")
    assert [line.label for line in spec.lines] == ["global dL/dθ"] and "no step was clipped" in spec.caption
    assert "Clipped" not in render_markdown(report)


def test_png_global_plot_draws_the_clip_level_dotted_at_its_value():
    pytest.importorskip("matplotlib", reason="png needs the optional matplotlib")
    from gradscope.report import mpl

    report, _ = _clipped_report()
    fig = mpl.figure(next(p for p in all_plots(report) if p.key == "global"))
    (ax,) = fig.axes
    styles = {line.get_label(): line for line in ax.get_lines()}
    assert styles[PRE_CLIP_LABEL].get_linestyle() == "-" and styles[POST_CLIP_LABEL].get_linestyle() == "--"
    level = styles[CLIP_LEVEL_LABEL]
    assert level.get_linestyle() == ":" and level.get_marker() == "_"  # a clip at one step alone shows too
    ys = list(level.get_ydata())
    assert all(math.isnan(v) for v in ys[:3] + ys[8:]) and ys[3:8] == [CLIP] * 5
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [PRE_CLIP_LABEL, POST_CLIP_LABEL, CLIP_LEVEL_LABEL]


# --- a heatmap for each per-block value --------------------------------------------------------


def _with_weights(report, hostile_block: bool = False):
    for r in report.series:
        if r["block"] is not None:
            r["weight_l2"] = 10.0 + r["depth"] + r["step"] / 100
            r["act_grad_l2"] = math.nan  # not recorded at any step: no map
            if hostile_block and r["depth"] == 1:
                r["block"] = rf.HOSTILE
    return report


def test_each_recorded_per_block_value_gets_its_own_heatmap_and_an_absent_one_none():
    plain = rf.synthetic_report(layers=4, tensors_per_layer=1, variants=("pretrained",), steps=12)
    assert [p.key for p in all_plots(plain) if p.key.startswith("heatmap")] == ["heatmap"]
    report = _with_weights(rf.synthetic_report(layers=4, tensors_per_layer=1, variants=("pretrained",), steps=12))
    maps = {p.key: p for p in all_plots(report) if p.key.startswith("heatmap")}
    assert list(maps) == ["heatmap", "heatmap-weight_l2"]
    weights = maps["heatmap-weight_l2"]
    assert weights.column == "weight_l2" and weights.title == "Weight L2 norm per block and training step"
    for r in report.series:
        if r["block"] is not None:
            assert weights.values[r["depth"]][weights.x.index(r["step"])] == r["weight_l2"]
            assert maps["heatmap"].values[r["depth"]][weights.x.index(r["step"])] == r["grad_l2"]
    svgs = RENDERERS["svg"](report)
    assert set(svgs) >= {"heatmap.svg", "heatmap-weight_l2.svg"} and "heatmap-act_grad_l2.svg" not in svgs
    drawn = svgs["heatmap-weight_l2.svg"].decode()
    assert 'id="plot-heatmap-weight_l2"' in drawn and "weight L2 norm (log scale)</text>" in drawn
    assert "NaN or Inf in the gradient" not in drawn  # a weight's map has no red cells to explain


def test_the_page_shows_the_gradient_map_and_folds_each_other_one_with_names_escaped():
    report = _with_weights(rf.synthetic_report(layers=4, tensors_per_layer=1, variants=("pretrained",), steps=12),
                           hostile_block=True)
    page = html_module.render_page(report)
    assert re.search(r'<section id="plots"><h2>Plots</h2><figure id="figure-global">.*?</figure>'
                     r'<figure id="figure-heatmap">.*?</figure><details class="heatmap-choice"><summary>Weight L2 '
                     r'norm per block and training step</summary><figure id="figure-heatmap-weight_l2">', page, re.S)
    assert rf.HOSTILE not in page and html_module._e(rf.HOSTILE) in page
