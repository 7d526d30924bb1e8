"""The terminal summary: tables wider than the terminal are printed as several that fit, each repeating the
columns that name a row; output that fits is left as it is."""

from __future__ import annotations

import os

import pytest

from gradscope.cli import main
from gradscope.report import Report
from gradscope.report.fmt import num
from gradscope.report.terminal import flow_lines, render_text, summary_lines, terminal_width

# what `gradscope analyze --what-if sigmoid,tanh,no-norm,no-residual,xavier,he` runs: three baselines, six what-ifs
VARIANTS = ("pretrained", "scratch", "shallow", "sigmoid", "tanh", "no-norm", "no-residual", "xavier", "he")


def _wide_report() -> Report:
    """Nine variants of two blocks, ``layer.0`` and ``layer.1``; variant i's dL/dh is (i + 1) / 1000 and 1."""
    report = Report(meta={"model": "m"})
    for i, name in enumerate(VARIANTS):
        report.variants.append({"name": name})
        report.summaries.append({"variant": name, "verdict": "healthy", "loss": 2.5, "blocks": 2,
                                 "first_to_last_ratio": (i + 1) / 1000, "flow_signal": "dL/dh",
                                 "decay": {"trend": "shrinks", "factor_per_block": 0.5, "r2": 1.0,
                                           "halves_every_blocks": 1.0}})
        report.blocks += [{"block": f"layer.{d}", "depth": d, "variant": name, "grad_l2": 1.0,
                           "act_grad_l2": (i + 1) / 1000 if d == 0 else 1.0} for d in range(2)]
    return report


def test_a_per_block_table_wider_than_the_terminal_is_split_into_groups_of_variants():
    lines = flow_lines(_wide_report(), width=60)
    assert lines == [
        "gradient L2 per block (dL/dh; depth 0 is nearest the input)",
        "depth    block  pretrained  scratch  shallow  sigmoid   tanh",  # 60 columns: tanh fits exactly
        "-----  -------  ----------  -------  -------  -------  -----",
        "0      layer.0       0.001    0.002    0.003    0.004  0.005",
        "1      layer.1           1        1        1        1      1",
        "",
        "depth    block  no-norm  no-residual  xavier     he",
        "-----  -------  -------  -----------  ------  -----",
        "0      layer.0    0.006        0.007   0.008  0.009",
        "1      layer.1        1            1       1      1",
    ]


def test_a_summary_table_wider_than_the_terminal_is_split_and_its_legend_wrapped():
    lines = summary_lines(_wide_report(), width=60)
    assert lines[:3] == ["variant      verdict  loss  blocks  first/last  factor/block",
                         "-----------  -------  ----  ------  ----------  ------------",
                         "pretrained   healthy   2.5       2       0.001           0.5"]
    second = lines.index("", 3) + 1  # the second table, after a blank line, repeats the variant column
    assert lines[second:second + 3] == ["variant       R^2  trend toward input  no grad",
                                        "-----------  ----  ------------------  -------",
                                        "pretrained   1.00      halves every 1        0"]
    assert lines[-2:] == ["shape, at the depths named;",  # broken after a clause
                          "flat means within 1.05x per block"]
    assert max(map(len, lines)) <= 60


def test_tables_that_fit_are_printed_as_they_are():
    report = _wide_report()
    assert render_text(report, width=500) == render_text(report)  # no width: no limit, as from Python
    assert flow_lines(report, width=len(flow_lines(report)[1])) == flow_lines(report)  # exactly as wide: fits
    assert len(flow_lines(report, width=len(flow_lines(report)[1]) - 1)) > len(flow_lines(report))


def test_a_column_wider_than_the_terminal_still_gets_a_table():
    lines = flow_lines(_wide_report(), width=10)  # even depth and block do not fit: one variant per table
    headers = [line.split() for line in lines if line.startswith("depth")]
    assert headers == [["depth", "block", name] for name in VARIANTS]


def test_the_width_is_columns_else_the_terminal_s_else_100(monkeypatch):
    monkeypatch.setenv("COLUMNS", "57")
    assert terminal_width() == 57
    monkeypatch.delenv("COLUMNS")

    def no_terminal(fd=None):
        raise OSError("not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_terminal)  # stdout is a file or a pipe
    assert terminal_width() == 100


@pytest.mark.parametrize("columns", ["60", "200"])
def test_the_command_prints_tables_that_fit_columns(monkeypatch, capsys, tmp_path, columns):
    monkeypatch.setenv("COLUMNS", columns)
    out = tmp_path / "demo"
    assert main(["demo", "--depth", "3", "--width", "4", "--batch-size", "4", "--device", "cpu",
                 "--out", str(out), "--format", "json"]) == 0
    printed = capsys.readouterr().out
    report = Report.load(out)
    assert printed == render_text(report, int(columns))
    tables = summary_lines(report, int(columns)) + flow_lines(report, int(columns))
    if columns == "60":  # six variants: the summary and the per-block table are wider than that
        assert max(map(len, tables)) <= 60 and printed != render_text(report)
    else:
        assert printed == render_text(report)


# --- a training monitor's report ---------------------------------------------------------------------------

SPIKE_STEP, NAN_STEP, CLIP_FROM, CLIP_AT, STEPS = 21, 26, 11, 0.5, 31


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A real monitor on a four-block MLP with SGD: weight norms, update ratios, dL/dh every second step, a spike
    of the gradient at step 21, a NaN at step 26 (skipped), clipped at 0.5 from step 11 on. Returns the report, the
    monitor's history, and the directory the report was saved to (json only)."""
    import math
    import warnings

    import torch

    from gradscope import GradientMonitor
    from test_monitor import backward, make

    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN step's warning: its finding is what is checked
        with GradientMonitor(net, opt, weight_norms=True, update_ratios=True, activation_grads=2,
                             on_nonfinite="skip") as monitor:
            for step in range(1, STEPS + 1):
                backward(net, step, scale=50.0 if step == SPIKE_STEP else 1.0)
                if step == NAN_STEP:
                    dict(net.named_parameters())["layers.1.0.weight"].grad[0, 0] = math.nan
                if step >= CLIP_FROM:
                    monitor.clip_grad_norm_(CLIP_AT)
                opt.step()
                opt.zero_grad()
            report, history = monitor.report(), monitor.history
    directory = tmp_path_factory.mktemp("training-run")
    report.save(directory, formats="json")
    return report, history, directory


def _median(values):
    ordered = sorted(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


def test_a_training_report_shows_the_global_norm_before_clipping_with_the_history_s_numbers(training_run):
    report, history, _ = training_run
    steps, glob = history.steps.tolist(), history.global_l2().tolist()
    finite = [(v, s) for v, s in zip(glob, steps) if v == v]
    largest, largest_step = max(finite)
    assert largest_step == SPIKE_STEP and len(finite) == STEPS - 1  # the NaN step has no norm
    text = render_text(report)
    assert text.startswith("gradscope: training of Net (a GradientMonitor report)\nsteps recorded: 31\n")
    assert (f"global gradient L2 norm before clipping, over 31 recorded steps (1 non-finite, left out of the median "
            f"and max): first {num(glob[0])} (step 1), median {num(_median([v for v, _ in finite]))}, max "
            f"{num(largest)} (step {largest_step}), last {num(glob[-1])} (step {STEPS})\n") in text
    over = sum(v > CLIP_AT for v, s in finite if s >= CLIP_FROM)
    assert (f"Clipped at {STEPS - CLIP_FROM + 1} of {STEPS} recorded steps, to max_norm {CLIP_AT:g}; the norm before "
            f"clipping was above it at {over} of them;") in text


def test_a_spike_line_names_the_step_and_the_block_of_the_spike_finding(training_run):
    report, history, _ = training_run
    spikes = [f for f in report.findings if f["kind"] == "grad-spike"]
    lines = render_text(report).splitlines()
    at = lines.index(f"spikes of the global norm: {len(spikes)}")
    assert lines[at + 1:at + 1 + len(spikes)] == [f"  {f['message']}" for f in spikes]  # the findings' own words
    assert lines[at + 1 + len(spikes)] == f"  fix: {spikes[0]['fix']}"
    t = history.steps.tolist().index(SPIKE_STEP)
    carried = history.blocks[int(history.block_l2()[t].argmax())]  # the largest share of the sum of squares
    [line] = [line for line in lines if line.startswith(f"  gradient norm spike at step {SPIKE_STEP}: ")]
    [spike] = [f for f in spikes if f"  {f['message']}" == line]
    assert spike["block"] == carried and f"block {carried} carried" in line
    assert line.startswith(f"  gradient norm spike at step {SPIKE_STEP}: {history.global_l2()[t]:.3g}, ")


def test_a_non_finite_step_is_a_row_with_its_first_block_and_the_finding_s_words(training_run):
    report, _, _ = training_run
    [finding] = [f for f in report.findings if f["kind"] == "non-finite"]
    lines = render_text(report).splitlines()
    at = lines.index(f"steps with a non-finite gradient value: 1 of {STEPS} in the series")
    assert lines[at + 1].split() == ["step", "values", "first", "block", "blocks"]
    assert lines[at + 3].split() == [str(NAN_STEP), "1", "layers.1", "1", "of", "4"]
    assert lines[at + 4] == f"  {finding['message']}" and f"skipped at 1 step(s): {NAN_STEP}" in lines[at + 4]


def test_the_last_step_per_block_shows_each_recorded_value_and_the_step_of_a_sampled_one(training_run):
    report, history, _ = training_run
    lines = render_text(report).splitlines()
    at = lines.index(f"per block at step {STEPS}, the last recorded (depth 0 is nearest the input)")
    header = lines[at + 1]
    assert header.split("  ")[0] == "depth" and [c.strip() for c in header.split("  ") if c.strip()] == [
        "depth", "block", "grad L2", "weight L2", "update ratio", f"dL/dh L2 (step {STEPS - 1})"]
    act = history.block_act_grad_l2()[history.steps.tolist().index(STEPS - 1)]  # recorded at even steps
    for b, block in enumerate(history.blocks):
        cells = lines[at + 3 + b].split()
        assert cells == [str(b), block, num(history.block_l2()[-1, b].item()),
                         num(history.block_weight_l2()[-1, b].item()),
                         num(history.block_update_ratio()[-1, b].item()), num(act[b].item())]
    assert lines[at + 3 + len(history.blocks):] == [
        "update ratio: the block's update-to-weight ratio at that step's optimizer step, ||W after - W before|| / "
        "||W before||",
        "dL/dh L2: the L2 norm of dL/dh, the gradient with respect to the block's output, at that step",
        "a column with a step: that value was recorded every few steps; its last is shown"]


def test_a_saved_training_report_prints_as_the_one_in_memory(training_run):
    report, _, directory = training_run
    assert render_text(Report.load(directory)) == render_text(report)  # NaN written as null reads the same


def test_series_the_run_did_not_record_are_not_shown():
    import report_fixtures as rf

    text = render_text(rf.monitor_report(steps=12))  # no weights, updates, dL/dh, clip, NaN or spike
    for absent in ("weight L2", "update ratio", "dL/dh", "non-finite gradient value", "Clipped", " -  "):
        assert absent not in text
    assert "No clip recorded at any step.\n" in text and "spikes of the global norm: none found\n" in text
    assert "gradient flow over windows of steps: healthy in every window judged (no verdict finding)\n" in text
    table = text.splitlines()[text.splitlines().index("per block at step 12, the last recorded (depth 0 is nearest "
                                                      "the input)") + 1]
    assert table.split() == ["depth", "block", "grad", "L2"]


def test_a_vanishing_run_shows_its_verdict_over_windows_of_steps():
    import torch

    from test_training_report import SigmoidMLP, _train

    torch.manual_seed(0)
    report, _ = _train(SigmoidMLP(), 5)
    [finding] = [f for f in report.findings if f["kind"] == "vanishing"]
    lines = render_text(report).splitlines()
    at = lines.index("gradient flow over windows of steps:")
    assert lines[at + 1] == f"  {finding['message']}" and lines[at + 1].startswith("  steps 1 to 5 (every judged ")
    assert lines[at + 2].startswith("  fix: ")


def test_a_verdict_change_is_shown_at_its_step():
    from gradscope.analysis import training_flow_findings
    from test_training_report import _series

    healthy = [0.9 ** (5 - d) for d in range(6)]
    vanishing = [10.0 ** -(5 - d) for d in range(6)]
    series = _series({s: healthy if s <= 20 else vanishing for s in range(1, 41)})
    findings = training_flow_findings(series)
    report = Report(meta={"kind": "monitor", "model": "m", "steps_recorded": 40, "steps_kept": 40,
                          "series_steps": 40}, variants=[{"name": "training"}], findings=findings, series=series)
    lines = render_text(report).splitlines()
    at = lines.index("gradient flow over windows of steps:")
    healthy, vanished, change = findings
    assert lines[at + 1:at + 4] == [f"  healthy: {healthy['message']}",  # named where its words do not name it
                                    f"  {vanished['message']}", f"  {change['message']}"]
    assert lines[at + 1] == "  healthy: steps 1 to 20: gradient reaches every block"
    assert lines[at + 3] == ("  the gradient flow changed from healthy to vanishing at step 21: steps 11 to 20 were "
                             "healthy, steps 21 to 30 vanishing")


def test_a_report_of_the_trainer_s_clipped_gradient_says_so():
    import report_fixtures as rf

    report = rf.monitor_report(steps=3)
    report.meta.update(clip_stage="after_clip", max_grad_norm=1.0)
    text = render_text(report)
    assert "gradients measured: after the Trainer clipped to max_grad_norm 1.0: the pre-clip norm is the " \
           "Trainer's own grad_norm\n" in text
    assert "global gradient L2 norm after the Trainer's clip, over 3 recorded steps" in text
    assert "No clip recorded" not in text and "before clipping" not in text


def test_a_step_with_a_non_finite_value_in_every_block_names_no_first_block():
    from gradscope.report.fmt import nonfinite_steps

    series = [{"step": 4, "block": f"b.{d}", "depth": d, "grad_l2": None, "grad_nonfinite": 3} for d in (1, 0)]
    series.append({"step": 4, "block": None, "depth": None, "grad_l2": None, "grad_nonfinite": 7})
    [step] = nonfinite_steps(series)
    assert (step.blocks, step.first_block, step.of, step.outside) == (["b.0", "b.1"], "every block", 2, 1)


def test_a_training_report_fits_sixty_columns_through_the_command(training_run, monkeypatch, capsys):
    report, _, directory = training_run
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["show", str(directory)]) == 0
    printed = capsys.readouterr().out
    assert printed == render_text(Report.load(directory), 60)
    assert max(map(len, printed.splitlines())) <= 60 and printed != render_text(report)
    assert "dL/dh L2 (step 30)" in printed  # the per-block table went on in a second table
