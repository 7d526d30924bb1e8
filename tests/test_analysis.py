"""The analysis layer on its own: synthetic per-block measurements through the summary and the findings.

No model runs here. Each profile is a list of per-block flows (dL/dh L2, depth 0 nearest the input); the rows
around it are what ``block_rows`` and ``parameter_rows`` would write, with a parameter gradient equal to the flow
unless a test says otherwise. Verdicts, shapes and the words for them are checked exactly; R^2 and the decay
factors in the expected words come from numpy's least squares, not from gradscope's fit.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pytest

from gradscope import analysis
from gradscope.analysis import (BlockRow, Decay, Finding, ParamRow, Summary, describe_decay, findings_for,
                                fit_decay, summarize_rows, trend_cell)

REPO = Path(__file__).resolve().parents[1]
PLAIN_RELU_MLP = {"activations": {"ReLU": 6}, "relu_family_activations": 6, "norm_layers": 0, "residual_modules": 0}
SIGMOID_MLP = {"activations": {"Sigmoid": 20}, "relu_family_activations": 0, "norm_layers": 0, "residual_modules": 0}
BERT = {"activations": {"GELU": 6}, "relu_family_activations": 6, "norm_layers": 13, "residual_modules": 12,
        "attention_modules": 6}
WEIGHT_L2 = 8.0  # 64 entries per block: weight RMS 1, so a float32 weight's half ulp is 2**-24 (6e-8)


def rows(flow: list[float], param: list[float] | None = None, maxabs: list[float] | None = None
         ) -> tuple[list[ParamRow], list[BlockRow]]:
    """One 8x8 weight per block, ``b.<depth>``; dL/dh ``flow``; parameter-gradient L2 ``param`` (default: the
    flow); largest gradient entry ``maxabs`` (default: a quarter of the parameter gradient's L2)."""
    param = flow if param is None else param
    maxabs = [g / 4 for g in param] if maxabs is None else maxabs
    params, blocks = [], []
    for d, (f, g, m) in enumerate(zip(flow, param, maxabs)):
        grad = {"grad_l2": g, "grad_mean": 0.0, "grad_std": g / 8, "grad_rms": g / 8, "grad_meanabs": g / 10,
                "grad_maxabs": m, "grad_zero_frac": 0.0, "grad_nonfinite": 0, "weight_l2": WEIGHT_L2,
                "grad_to_weight": g / WEIGHT_L2}
        params.append({"name": f"b.{d}.weight", "depth": d, "variant": "v", "block": f"b.{d}", "shape": [8, 8],
                       "numel": 64, "has_grad": True, **grad})
        blocks.append({"block": f"b.{d}", "depth": d, "variant": "v", "params": 1, "params_no_grad": 0, "numel": 64,
                       **grad, "act_grad_l2": f, "act_grad_rms": f / 8, "act_grad_maxabs": f / 4,
                       "act_grad_nonfinite": 0, "output_nonfinite": 0})
    return params, blocks


def judge(flow, param=None, maxabs=None, inventory=PLAIN_RELU_MLP, variant="v") -> tuple[Summary, list[Finding]]:
    params, blocks = rows(flow, param, maxabs)
    summary = summarize_rows(variant, params, blocks, loss=1.0)
    return summary, findings_for(summary, blocks, inventory)


def r2_of(flow: list[float]) -> str:
    """R^2 of the least-squares line through log10(flow) against depth, as the words print it (numpy's fit)."""
    x, y = np.arange(len(flow)), np.log10(flow)
    residual = y - np.polyval(np.polyfit(x, y, 1), x)
    return f"{1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum():.2f}"


def factor_of(flow: list[float]) -> float:
    """What one block toward the input multiplies the flow by, from numpy's least-squares slope."""
    return 10 ** -np.polyfit(np.arange(len(flow)), np.log10(flow), 1)[0]


# --- shapes, and the words for them ---------------------------------------------------------------------------


def test_a_clean_exponential_decay_is_one_rate():
    flow = [0.5 ** (9 - d) for d in range(10)]
    summary, found = judge(flow)
    decay = summary["decay"]
    assert (decay["shape"], decay["shape_at"], decay["shape_ratio"], decay["trend"]) == ("steady", [], None, "shrinks")
    assert trend_cell(decay) == "halves every 1"
    assert describe_decay(decay) == ("the gradient halves every block toward the input (factor 0.5 per block, "
                                     "R^2 1.00)")
    assert summary["verdict"] == "vanishing"
    assert found[0]["message"] == ("vanishing gradient: the first block gets 0.00195x the last block's gradient, a "
                                   "scale problem that Adam-style optimizers compensate and plain SGD does not")
    assert found[0]["fix"] == analysis._vanishing_fixes(PLAIN_RELU_MLP)  # the depth: activation, init, norm, skips


def test_a_single_step_is_a_step_not_a_rate():
    """MiniLM no-residual's dL/dh on the masked-token surrogate (measured): 9x in one step, depth 5 to 4, and
    within 1.2x after; once read as 'halves every 2 blocks' (R^2 0.49)."""
    flow = [0.00314, 0.00307, 0.00325, 0.00368, 0.00355, 0.0319]
    summary, found = judge(flow, inventory=BERT)
    decay = summary["decay"]
    assert (decay["shape"], decay["shape_at"]) == ("step", [5, 4])
    assert decay["shape_ratio"] == pytest.approx(0.00355 / 0.0319)
    assert trend_cell(decay) == "falls 9x at 5->4"
    assert describe_decay(decay, {5: "layer.5", 4: "layer.4"}) == (
        f"one step carries most of the change: the gradient falls 8.99x from layer.5 to layer.4, toward the input "
        f"(no one rate fits: R^2 {r2_of(flow)})")
    assert r2_of(flow) == "0.49"
    assert summary["verdict"] == "healthy" and "halves" not in found[0]["evidence"]


def test_a_u_names_its_minimum():
    """MiniLM he's dL/dh on the masked-token surrogate (measured): down 5.7x from depth 5 to 2, up 1.8x to 0;
    once read as 'halves every 2.7 blocks' (R^2 0.53)."""
    flow = [0.0101, 0.00604, 0.00562, 0.00781, 0.0161, 0.0319]
    summary, found = judge(flow, inventory=BERT)
    decay = summary["decay"]
    assert (decay["shape"], decay["shape_at"]) == ("trough", [2])
    assert decay["shape_ratio"] == pytest.approx(0.00562 / 0.0319)
    assert trend_cell(decay) == "U: min 0.18 at 2"
    assert describe_decay(decay, {2: "layer.2"}) == (
        f"U-shaped: the gradient is lowest at layer.2, 0.176x its value at the last block (no one rate fits: R^2 "
        f"{r2_of(flow)})")
    assert (summary["lowest_block"], summary["lowest_ratio"]) == ("b.2", pytest.approx(0.00562 / 0.0319))
    assert summary["verdict"] == "healthy"
    mirror = [1 / f for f in [0.5, 0.2, 0.08, 0.05, 0.1, 0.3, 1.0]]
    decay = judge(mirror)[0]["decay"]
    assert (decay["shape"], decay["shape_at"], trend_cell(decay)) == ("peak", [3], "peak: 20 at 3")


def test_a_zigzag_whose_lowest_point_is_inside_is_noise_not_a_u():
    flow = [1.0, 0.3, 1.2, 0.25, 1.1, 0.35, 1.0]
    summary, found = judge(flow)
    decay = summary["decay"]
    assert (decay["shape"], decay["shape_at"], decay["shape_ratio"]) == ("noise", [], pytest.approx(1.2 / 0.25))
    assert trend_cell(decay) == "no trend"
    assert describe_decay(decay) == (f"no trend: the gradient varies 4.8x between blocks with no direction (factor "
                                     f"{factor_of(flow):.3g} per block, R^2 {r2_of(flow)})")


def test_small_scatter_without_a_trend_is_flat():
    flow = [1.0, 1.04, 0.97, 1.02, 1.0]
    decay = judge(flow)[0]["decay"]
    assert (decay["shape"], decay["trend"], trend_cell(decay)) == ("flat", "flat", "flat")
    assert describe_decay(decay) == (f"the gradient is about constant across depth (factor {factor_of(flow):.3g} per "
                                     f"block, R^2 {r2_of(flow)})")


def test_flat_is_a_band_per_block_not_per_stack():
    """1.36x per block on 3 blocks changes the gradient 1.85x across the stack: once 'flat' (under 2x across)."""
    flow = [1 / 1.36 ** 2, 1 / 1.36, 1.0]
    decay = judge(flow)[0]["decay"]
    assert (decay["trend"], decay["shape"], trend_cell(decay)) == ("shrinks", "steady", "halves every 2.3")
    assert analysis.FLAT_FACTOR == 1.05
    inside, outside = [1.049 ** -(4 - d) for d in range(5)], [1.051 ** -(4 - d) for d in range(5)]
    assert (fit_decay(inside)["trend"], fit_decay(inside)["shape"]) == ("flat", "flat")
    assert (fit_decay(outside)["trend"], fit_decay(outside)["shape"]) == ("shrinks", "steady")


def test_a_rate_is_said_only_above_the_r2_threshold():
    """A decay of 2x per block with an alternating wobble: the same trend, read as a rate only while R^2 >= 0.8."""
    assert analysis.RATE_R2 == 0.8

    def wobbly(amplitude: float) -> list[float]:
        return [10 ** (-0.3 * (7 - d) + amplitude * (-1) ** d) for d in range(8)]

    fits, loose = wobbly(0.3), wobbly(0.35)  # R^2 0.82 and 0.76 (numpy)
    assert float(r2_of(fits)) >= 0.8 > float(r2_of(loose))
    assert (fit_decay(fits)["shape"], fit_decay(loose)["shape"]) == ("steady", "uneven")
    assert trend_cell(fit_decay(fits)) == f"halves every {math.log(0.5) / math.log(factor_of(fits)):.2g}"
    uneven = fit_decay(loose)
    assert uneven["shape_ratio"] == pytest.approx(loose[0] / loose[-1])
    assert trend_cell(uneven) == "falls 25x, unevenly"  # 10 ** (2.1 - 0.7)
    assert describe_decay(uneven) == (f"the gradient falls {loose[-1] / loose[0]:.3g}x across the stack toward the "
                                      f"input, unevenly (no one rate fits: R^2 {r2_of(loose)})")


def test_a_two_block_stack_is_one_step_or_flat():
    decay = judge([0.25, 1.0])[0]["decay"]
    assert (decay["shape"], decay["shape_at"], decay["shape_ratio"]) == ("step", [1, 0], 0.25)
    assert trend_cell(decay) == "falls 4x at 1->0"
    assert describe_decay(decay, {0: "b.0", 1: "b.1"}) == (
        "the gradient falls 4x from b.1 to b.0 (two blocks: one step, no rate)")
    assert judge([0.98, 1.0])[0]["decay"]["shape"] == "flat"


def test_blocks_without_a_value_are_left_out_of_the_shape_not_out_of_the_depth():
    decay = fit_decay([0.01, None, 0.0101, math.nan, 0.0099, 1.0])
    assert (decay["shape"], decay["shape_at"], decay["points"], decay["span_blocks"]) == ("step", [5, 4], 4, 5)


# --- verdicts that read the whole profile --------------------------------------------------------------------


def test_an_interior_collapse_is_vanishing_and_names_where_it_bottoms_out():
    """A 20-block sigmoid MLP whose head reads the average of the first and last block outputs: the first block
    gets the head's gradient directly (1x the last's), block 1 gets 0.144**18 = 7.1e-16 of it."""
    flow = [0.03] + [0.03 * 0.144 ** (19 - d) for d in range(1, 20)]
    summary, found = judge(flow, inventory=SIGMOID_MLP)
    assert summary["first_to_last_ratio"] == pytest.approx(1.0)  # the two points the verdict once read
    assert summary["verdict"] == "vanishing"
    assert (summary["lowest_block"], summary["lowest_ratio"]) == ("b.1", pytest.approx(0.144 ** 18))
    assert (summary["decay"]["shape"], summary["decay"]["shape_at"]) == ("trough", [1])
    finding = found[0]
    assert (finding["kind"], finding["block"]) == ("vanishing", "b.1")
    # weights of RMS 1 in float32: Adam's step, 1e-3 * g / (g + 1e-8), under 2**-24 where g < 6e-13, at b.1 to b.6
    stuck = [d for d in range(1, 20) if 1e-3 * (flow[d] / 4) / (flow[d] / 4 + 1e-8) < 2.0 ** -24]
    assert stuck == [1, 2, 3, 4, 5, 6]
    assert finding["message"] == ("vanishing gradient inside the stack: the gradient bottoms out at b.1, 7.09e-16x the "
                                  "last block's, too little for any optimizer to move the weights of 6 block(s)")
    assert finding["evidence"] == (
        "dL/dh at b.1 is 7.09e-16x its value at b.19 (threshold 0.01); dL/dh at b.0 is 1x its value at b.19; "
        f"U-shaped: the gradient is lowest at b.1, 7.09e-16x its value at the last block (no one rate fits: R^2 "
        f"{r2_of(flow)}); from b.19 to b.1, the gradient falls 6.94x per block toward the input (R^2 1.00); at b.1, "
        "b.2, b.3 ... even the largest gradient entry is exactly zero or gives Adam's normalized step (lr 0.001, eps "
        "1e-08) less than half the float32 resolution of the weights, so they never move: no optimizer compensates "
        "that, plain SGD neither")
    assert finding["fix"] == analysis._vanishing_fixes(SIGMOID_MLP)  # a steady decay down to b.1: the depth


def test_an_interior_blow_up_is_exploding():
    summary, found = judge([1.0, 50.0, 400.0, 30.0, 1.0])
    assert summary["verdict"] == "exploding"
    assert (summary["highest_block"], summary["highest_ratio"]) == ("b.2", pytest.approx(400))
    assert found[0]["message"] == (
        "exploding gradient inside the stack: the gradient peaks at b.2, 400x the last block's")


def test_a_collapse_of_the_parameter_gradient_alone_is_not_silent():
    """dL/dh reaches b.3 in full, but its weights get 1e-4 of the last block's gradient (inputs near zero, or
    saturated units): vanishing, for the parameter gradient."""
    summary, found = judge([0.03] * 6, param=[0.1, 0.1, 0.1, 1e-5, 0.1, 0.1])
    assert (summary["decay"]["shape"], summary["lowest_ratio"]) == ("flat", 1.0)
    assert (summary["param_lowest_block"], summary["param_lowest_ratio"]) == ("b.3", pytest.approx(1e-4))
    assert summary["verdict"] == "vanishing"
    assert found[0]["message"] == ("vanishing parameter gradient: b.3's weights get 0.0001x the last block's, a scale "
                                   "problem that Adam-style optimizers compensate and plain SGD does not")
    assert "dL/dh at b.3 is 1x its value at b.5" in found[0]["evidence"]
    assert found[0]["fix"].startswith("the block receives gradient but passes little of it to its weights")


def test_a_step_at_the_top_is_fixed_at_the_top_not_with_fewer_layers():
    """A scratch BERT whose loss only the top block passes on: blocks 0-4 within 1.03x of each other, the top
    1.65e7x above them (more than float32 resolves in one block: what passes is rounding error)."""
    flow = [1e-7 * f for f in (1, 1.01, 1.02, 1.0, 1.03)] + [1.7]
    summary, found = judge(flow, inventory=BERT)
    decay = summary["decay"]
    assert (decay["shape"], decay["shape_at"], trend_cell(decay)) == ("step", [5, 4], "falls 1.7e+07x at 5->4")
    assert summary["verdict"] == "vanishing"
    finding = found[0]
    assert finding["block"] == "b.0"  # the collapse reaches the input end: the first block is within 2x of the lowest
    assert finding["message"] == ("vanishing gradient: the first block gets 5.88e-08x the last block's gradient, less "
                                  "than float32 resolves: what reaches the blocks below b.5 is rounding error")
    assert "per block" not in finding["evidence"]  # once 'falls 11x per block'
    assert finding["fix"] == (
        "the change is at one block, not spread over depth: the gradient falls 1.65e+07x going back through b.5; "
        "fewer layers or residual connections elsewhere would not change it. That is the last block: check what the "
        "objective reads of its output (a loss that the block's final normalization cancels, such as the sum or the "
        "norm of a LayerNorm output, passes almost nothing back through it)")


def test_a_step_inside_names_the_block_to_look_at():
    summary, found = judge([1e-3, 1.05e-3, 1e-3, 0.9, 1.0, 1.0])
    assert summary["verdict"] == "vanishing"
    assert found[0]["fix"] == (
        "the change is at one block, not spread over depth: the gradient falls 900x going back through b.3; fewer "
        "layers or residual connections elsewhere would not change it. Look at what b.3 does to the gradient: "
        "saturated or switched-off units, a normalization, a gate or a detach")


# --- what a vanishing verdict means for training ---------------------------------------------------------------


def test_a_block_is_out_of_reach_when_even_adam_s_step_is_under_half_an_ulp_of_its_weights():
    """Weights of RMS 1 in float32: a step registers from 2**-24; Adam's is 1e-3 * g / (g + 1e-8) (defaults)."""
    threshold = 2.0 ** -24 * 1e-8 / (1e-3 - 2.0 ** -24)  # the g whose Adam step is exactly half an ulp
    (_, below), (_, above) = (rows([1.0], maxabs=[threshold * 0.99]), rows([1.0], maxabs=[threshold * 1.01]))
    assert analysis.step_margin(below[0]) == pytest.approx(0.99, rel=1e-6)
    assert analysis.step_margin(above[0]) == pytest.approx(1.01, rel=1e-6)
    assert analysis.step_margin(rows([1.0], maxabs=[0.0])[1][0]) == 0.0  # exact zeros: nothing moves
    assert analysis.step_margin(below[0], "bfloat16") == pytest.approx(0.99 * 2.0 ** -16, rel=1e-6)


def test_the_demo_s_measured_gradients_fall_on_the_right_sides_of_the_rule():
    """The demo's first blocks (largest gradient entry, weight RMS 0.051): sigmoid 2.7e-19 never moved under
    Adam (not one entry in 50 steps); default-init ReLU 3.5e-10 and tanh 2.4e-7 did, in every entry."""
    def first_block(maxabs: float) -> BlockRow:
        return rows([1.0], maxabs=[maxabs])[1][0] | {"weight_l2": 0.051 * 8}

    assert analysis.step_margin(first_block(2.7e-19)) < 1e-4
    assert 1e4 < analysis.step_margin(first_block(3.5e-10)) < analysis.step_margin(first_block(2.4e-7))


def test_a_scale_problem_and_a_lost_gradient_are_told_apart():
    scale = judge([10 ** -(7 - d) for d in range(8)])[1][0]  # smallest 1e-7: Adam's step is 2e-4 of its lr
    assert scale["message"].endswith("a scale problem that Adam-style optimizers compensate and plain SGD does not")
    assert "Adam, RMSprop) to move its weights (the least, at b.0," in scale["evidence"]
    lost = judge([10 ** -(2 * (7 - d)) for d in range(8)])[1][0]  # 1e-14 at b.0, 1e-12 at b.1
    assert lost["message"].endswith("too little for any optimizer to move the weights of 2 block(s)")
    assert "at b.0, b.1 even the largest gradient entry is exactly zero" in lost["evidence"]


# --- the records, the verdict table, the schema ---------------------------------------------------------------


def test_every_verdict_has_its_own_finding_function():
    assert set(analysis.VERDICT_FINDINGS) == set(analysis.VERDICTS)


def test_a_summary_holds_exactly_the_summary_record_s_fields():
    summary, found = judge([0.5 ** (5 - d) for d in range(6)])
    assert set(summary) == set(Summary.__annotations__) | set(Summary.__required_keys__)
    assert set(summary["decay"]) == set(Decay.__annotations__) | set(Decay.__required_keys__)
    assert all(set(f) == {"variant", "severity", "kind", "block", "message", "evidence", "fix"} for f in found)
    assert set(found[0]) == set(Finding.__annotations__) | set(Finding.__required_keys__)


def _documented(section: str) -> set[str]:
    """The keys in the first column of a section's table in docs/report-schema.md (``decay.x`` as written)."""
    doc = (REPO / "docs" / "report-schema.md").read_text()
    body = doc.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in body.splitlines() if line.startswith("| `")]
    return {key for cell in cells for key in re.findall(r"`([a-z_0-9.\[\]]+)`", cell)}


def _fields(record) -> set[str]:
    return set(record.__required_keys__) | set(record.__optional_keys__)


def test_the_schema_doc_lists_exactly_each_record_s_fields():
    assert {k for k in _documented("summaries") if "." not in k} == _fields(Summary)
    assert {k.split(".", 1)[1] for k in _documented("summaries") if k.startswith("decay.")} == _fields(Decay)
    assert _documented("findings") == _fields(Finding)
    assert _documented("blocks") == _fields(BlockRow)
    assert _documented("params") == _fields(ParamRow)


def test_reading_a_report_checks_the_records_types():
    from gradscope.errors import UsageError
    from gradscope.report import Report

    params, blocks = rows([0.25, 1.0])
    summary = summarize_rows("v", params, blocks, loss=1.0)
    data = Report(meta={"model": "m"}, variants=[{"name": "v"}], summaries=[summary], blocks=blocks,
                  params=params).to_dict()
    assert Report.from_dict(data).to_dict() == data
    data["summaries"][0]["decay"]["shape_at"] = "5 to 4"
    with pytest.raises(UsageError, match=r"summaries\[0\]\.decay\.shape_at is a string \('5 to 4'\), not a list"):
        Report.from_dict(data)
    data["summaries"][0]["decay"]["shape_at"] = [1, 0]
    data["summaries"][0]["lowest_ratio"] = "small"
    with pytest.raises(UsageError, match=r"summaries\[0\]\.lowest_ratio is a string \('small'\), not a number or null"):
        Report.from_dict(data)


# --- one wording everywhere ------------------------------------------------------------------------------------


def test_the_terminal_markdown_html_and_json_say_the_same_shape():
    from gradscope.report import Report
    from gradscope.report.html import render_page
    from gradscope.report.markdown import md, render_markdown
    from gradscope.report.terminal import render_text

    report = Report(meta={"model": "m"})
    for name, flow in (("stepped", [0.00314, 0.00307, 0.00325, 0.00368, 0.00355, 0.0319]),
                       ("u", [0.0101, 0.00604, 0.00562, 0.00781, 0.0161, 0.0319])):
        params, blocks = rows(flow)
        for row in params + blocks:
            row["variant"] = name
        summary = summarize_rows(name, params, blocks, loss=1.0)
        report.variants.append({"name": name, "description": name})
        report.summaries.append(summary)
        report.findings += findings_for(summary, blocks, BERT)
        report.blocks += blocks
        report.params += params
    data = report.to_dict()
    assert [s["decay"]["shape"] for s in data["summaries"]] == ["step", "trough"]
    for cell in ("falls 9x at 5->4", "U: min 0.18 at 2"):  # each renderer escapes it its own way
        assert cell in render_text(report) and md(cell) in render_markdown(report)
        assert f"<td>{html.escape(cell)}</td>" in render_page(report)


def test_every_shape_is_documented_with_the_schema():
    doc = (REPO / "docs" / "report-schema.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `decay.shape` |"))
    assert [s for s in analysis.SHAPES if f"`{s}`" not in row] == []
