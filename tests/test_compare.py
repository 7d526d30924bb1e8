"""`gradscope compare`: reports of the demo side by side: ratios, overlaid flow, verdict changes, same formats."""

from __future__ import annotations

import json

import pytest

import report_fixtures as rf
from gradscope.cli import main
from gradscope.compare import compare_reports, report_label
from gradscope.report import Report


@pytest.fixture(scope="module")
def shallow_and_deep(tmp_path_factory):
    """The demo at depth 3 and at depth 12: tanh is healthy at 3 blocks and vanishes at 12."""
    root = tmp_path_factory.mktemp("demo-reports")
    rf.demo_report(depth=3).save(root / "depth3", formats="json")
    rf.demo_report(depth=12).save(root / "depth12", formats="json")
    return root / "depth3", root / "depth12"


def test_compare_two_demo_reports_on_the_command_line(shallow_and_deep, tmp_path, capsys):
    a, b = shallow_and_deep
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b / "report.json"), "--out", str(out), "--format", "json,md,html,csv"]) == 0
    text = capsys.readouterr().out
    assert "gradscope: comparison of depth3, depth12" in text
    assert "depth12/tanh / depth3/tanh:" in text and "verdict changed: healthy -> vanishing" in text

    combined = Report.load(out)
    assert combined.meta["kind"] == "comparison"
    assert [r["label"] for r in combined.meta["reports"]] == ["depth3", "depth12"]
    assert combined.variant_names[:4] == ["depth3/sigmoid", "depth3/tanh", "depth3/relu", "depth3/relu-he"]
    pairs = [(c["a"], c["b"]) for c in combined.comparisons]
    assert pairs == [(f"depth12/{v}", f"depth3/{v}") for v in ("sigmoid", "tanh", "relu", "relu-he")]
    tanh = combined.comparisons[1]
    assert tanh["matched_by"] == "block" and [r["block"] for r in tanh["blocks"]] == ["blocks.0", "blocks.1",
                                                                                     "blocks.2"]
    # the ratio is read from the two reports' own rows, nothing re-measured
    rows_a = {r["block"]: r for r in combined.block_rows("depth12/tanh")}
    rows_b = {r["block"]: r for r in combined.block_rows("depth3/tanh")}
    assert tanh["blocks"][0]["grad_l2_ratio"] == pytest.approx(rows_a["blocks.0"]["grad_l2"] /
                                                               rows_b["blocks.0"]["grad_l2"])

    markdown = (out / "report.md").read_text()
    assert "**healthy → vanishing**" in markdown
    page = (out / "report.html").read_text()
    assert 'id="plot-flow"' in page and 'id="plot-ratios"' in page and 'class="changed"' in page
    assert (out / "comparison_blocks.csv").exists()


def test_compare_refuses_to_overwrite_without_force(shallow_and_deep, tmp_path, capsys):
    a, b = shallow_and_deep
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--format", "md"]) == 0
    assert main(["compare", str(a), str(b), "--out", str(out), "--format", "md"]) == 2
    assert "report.md already exists; pass --force" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--out", str(out), "--format", "md", "--force"]) == 0


def test_different_models_are_matched_by_depth(shallow_and_deep, tmp_path):
    a, _ = shallow_and_deep
    data = json.loads((a / "report.json").read_text())
    for row in data["blocks"] + data["params"]:
        for key in ("block", "name"):
            if isinstance(row.get(key), str):
                row[key] = row[key].replace("blocks.", "layers.")
    other = tmp_path / "renamed.json"
    other.write_text(json.dumps(data))
    combined = compare_reports([a, other], labels=("mlp", "renamed"))
    assert all(c["matched_by"] == "depth" and len(c["blocks"]) == 3 for c in combined.comparisons)
    assert all(r["grad_l2_ratio"] == pytest.approx(1.0) for c in combined.comparisons for r in c["blocks"])


def test_labels_come_from_directories_and_file_names(tmp_path):
    (tmp_path / "fp16").mkdir()
    assert report_label(tmp_path / "fp16") == "fp16"
    assert report_label(tmp_path / "fp16" / "report.json") == "fp16"
    assert report_label(tmp_path / "bf16-run.json") == "bf16-run"


def test_compare_needs_two_readable_reports(shallow_and_deep, tmp_path, capsys):
    a, _ = shallow_and_deep
    assert main(["compare", str(a), "--out", ""]) == 2
    assert "at least two reports" in capsys.readouterr().err
    (tmp_path / "report.json").write_text(json.dumps({"schema": "gradscope.report/7"}))
    assert main(["compare", str(a), str(tmp_path), "--out", ""]) != 0
    assert "gradscope.report/7" in capsys.readouterr().err


def test_training_monitor_reports_compare_too(tmp_path):
    """Monitor reports have no dL/dh and no verdicts; saved NaNs come back as null: ratios are still defined."""
    rf.monitor_report(steps=12).save(tmp_path / "long", formats="json")
    rf.monitor_report(steps=3).save(tmp_path / "short", formats="json")
    data = json.loads((tmp_path / "short" / "report.json").read_text())
    data["blocks"][0]["grad_l2"] = None  # as a block without any gradient is saved
    (tmp_path / "short" / "report.json").write_text(json.dumps(data))
    combined = compare_reports([tmp_path / "long", tmp_path / "short"])
    [pair] = combined.comparisons
    assert (pair["a"], pair["b"]) == ("short/training", "long/training")
    ratios = [r["grad_l2_ratio"] for r in pair["blocks"]]
    assert ratios[0] != ratios[0] and all(r > 0 for r in ratios[1:])  # NaN where a norm is missing
    assert all(r["act_grad_l2_ratio"] != r["act_grad_l2_ratio"] for r in pair["blocks"])
    combined.save(tmp_path / "out", formats="json,md,html")
