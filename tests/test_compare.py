"""`gradscope compare`: reports of the demo side by side: ratios, overlaid flow, verdict changes, same formats."""

from __future__ import annotations

import json
import re

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
    rf.demo_report(depth=3).save(tmp_path / "no-json", formats="md,html")
    assert main(["compare", str(a), str(tmp_path / "no-json"), "--out", ""]) == 2
    assert "holds a report without report.json (written without the json format)" in capsys.readouterr().err


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


def test_a_training_run_and_an_analysis_are_not_compared(shallow_and_deep, tmp_path, capsys):
    rf.monitor_report(steps=3).save(tmp_path / "run", formats="json")
    analysis, _ = shallow_and_deep
    assert main(["compare", str(analysis), str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run'} is a training run's report and {analysis} an analysis" in err
    assert not (tmp_path / "out").exists()
    # a comparison of training runs is of training runs
    rf.monitor_report(steps=5).save(tmp_path / "run2", formats="json")
    compare_reports([tmp_path / "run", tmp_path / "run2"]).save(tmp_path / "runs", formats="json")
    assert compare_reports([tmp_path / "runs", tmp_path / "run"]).comparisons
    with pytest.raises(Exception, match="^compare: 1 label for 2 reports$"):
        compare_reports([analysis, shallow_and_deep[1]], labels=["one"])


# --- files that are not gradscope reports ----------------------------------------------------------


def _broken(data, key_path, value):
    """A copy of report data with one field, at a path like ("blocks", 0, "grad_l2"), replaced."""
    data = json.loads(json.dumps(data))
    target = data
    for key in key_path[:-1]:
        target = target[key]
    target[key_path[-1]] = value
    return data


@pytest.mark.parametrize(
    "content, problem",
    [
        ([], "it holds a list ([]), not an object"),
        ({"model": "bert", "layers": 12}, "it has no \"schema\" key"),
        ({"schema": "other.tool/3"}, "its schema is 'other.tool/3', not 'gradscope.report/1'"),
        ({"schema": "gradscope.report/1"}, "it has no 'meta', 'variants', 'summaries', 'findings', 'comparisons', "
                                           "'blocks', 'params', 'series' (every gradscope report has them)"),
        (("blocks", 0, "grad_l2", "0.5"), "blocks[0].grad_l2 is a string ('0.5'), not a number or null"),
        (("blocks", 2, "depth", None), "blocks[2].depth is null, not an integer"),
        (("summaries", 1, "decay", "r2", [1]), "summaries[1].decay.r2 is a list ([1]), not a number or null"),
        (("blocks", 0, "variant", "ghost"), "blocks[0].variant 'ghost' is not one of its variants"),
        (("meta", "model", 5), "meta.model is a number (5), not a string or null"),
        (("summaries", 0, "blocks_no_grad", "x"), "summaries[0].blocks_no_grad is a string ('x'), not a list"),
    ],
)
def test_a_file_that_is_not_a_report_is_refused_naming_what_is_wrong(shallow_and_deep, tmp_path, capsys, content,
                                                                      problem):
    a, _ = shallow_and_deep
    if isinstance(content, tuple):  # a real report with one field broken
        content = _broken(json.loads((a / "report.json").read_text()), content[:-1], content[-1])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    assert main(["compare", str(a), str(bad), "--out", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gradscope: error: {bad} is not a gradscope report: {problem}")
    assert err.count("\n") == 1 and "upgrade" not in err


def test_only_a_newer_schema_says_upgrade(shallow_and_deep, tmp_path, capsys):
    a, _ = shallow_and_deep
    (tmp_path / "report.json").write_text(json.dumps({"schema": "gradscope.report/2"}))
    assert main(["compare", str(a), str(tmp_path), "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "'gradscope.report/2' is not 'gradscope.report/1'" in err and "upgrade gradscope" in err


def test_a_report_without_variants_has_nothing_to_compare(shallow_and_deep, tmp_path, capsys):
    a, _ = shallow_and_deep
    Report().save(tmp_path / "empty", formats="json")
    assert main(["compare", str(a), str(tmp_path / "empty"), "--out", ""]) == 2
    assert "holds no variants: nothing to compare" in capsys.readouterr().err


# --- reports of different models -------------------------------------------------------------------


def _other_model(report_dir, tmp_path):
    """The report of ``report_dir`` as another model would have it: its own name, block and variant names."""
    data = json.loads((report_dir / "report.json").read_text())
    variants = {v["name"]: f"v{i}" for i, v in enumerate(data["variants"])}
    for part in ("variants", "summaries", "findings", "blocks", "params", "comparisons"):
        for row in data[part]:
            for key in ("name", "variant", "base", "a", "b"):
                if row.get(key) in variants:
                    row[key] = variants[row[key]]
            for key in ("block", "name", "first_block", "last_block"):
                if isinstance(row.get(key), str):
                    row[key] = row[key].replace("blocks.", "layer")
    data["meta"]["model"], data["meta"]["source"] = "resnet-ish", "torchvision"
    path = tmp_path / "other" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_different_models_get_a_warning_and_a_note_and_still_compare(shallow_and_deep, tmp_path, capsys):
    a, _ = shallow_and_deep
    other = _other_model(a, tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(other), "--out", str(out), "--format", "json,md,html"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("gradscope: warning:")]
    assert warnings == ["gradscope: warning: other and depth3 are different models (resnet-ish; demo MLP, 3 blocks of "
                        "width 8): variants are paired in order, having no names in common; blocks are matched by "
                        "depth (position from the input), not by name"]
    combined = Report.load(out)
    assert combined.meta["warnings"] == [warnings[0].removeprefix("gradscope: warning: ")]
    assert combined.comparisons and all(c["matched_by"] == "depth" for c in combined.comparisons)
    assert "matched by depth" in (out / "report.md").read_text()
    assert "matched by depth" in (out / "report.html").read_text()
    # the flow table names each value's own block where it is not the row's
    row = next(line for line in captured.out.splitlines() if line.startswith("0 "))
    assert row.split()[1] == "blocks.0" and "(layer0)" in row and "(blocks.0)" not in row


def test_the_same_model_compares_without_a_warning(shallow_and_deep, tmp_path, capsys):
    a, _ = shallow_and_deep
    combined = compare_reports([a, a / "report.json"], labels=("run1", "run2"))
    assert combined.meta["warnings"] == []
    deep = compare_reports([a, shallow_and_deep[1]])
    assert deep.meta["warnings"] == ["depth12 and depth3 are different models (demo MLP, 12 blocks of width 8; demo "
                                     "MLP, 3 blocks of width 8): blocks are matched by name, only those both have"]


ESCAPES = "\x1b[2J\x1b]0;owned\x07\rgradscope: all clear\u202e"  # clear screen, set title, overwrite the line, reorder


def test_names_from_a_report_reach_the_terminal_with_control_characters_shown_not_acted_on(
        shallow_and_deep, tmp_path, capsys):
    a, b = shallow_and_deep
    data = json.loads((a / "report.json").read_text())
    data["meta"]["model"] = "evil" + ESCAPES
    hostile = tmp_path / "hostile" / "report.json"
    hostile.parent.mkdir()
    hostile.write_text(json.dumps(data).replace('"tanh"', json.dumps("tanh" + ESCAPES)))  # a variant's name
    assert main(["compare", str(hostile), str(b), "--labels", "x\x1b[31m,y", "--out", str(tmp_path / "cmp")]) == 0
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert not any(ch in stream for ch in "\x1b\x07\r\u202e")
    assert "evil\\x1b[2J\\x1b]0;owned\\x07\\rgradscope: all clear\\u202e" in captured.out + captured.err
    assert "x\\x1b[31m" in captured.out


def test_an_error_naming_a_path_with_control_characters_shows_them_escaped(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing\x1b[2J"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "missing\\x1b[2J" in err


def test_labels_and_directory_names_reach_the_markdown_escaped(shallow_and_deep, tmp_path):
    a, b = shallow_and_deep
    dirs = [tmp_path / rf.HOSTILE, tmp_path / "run*_[x](http:evil)"]  # labels default to the directory names
    for d in dirs:
        d.mkdir()
        (d / "report.json").write_bytes((b / "report.json").read_bytes())
    out = tmp_path / "cmp"
    assert main(["compare", str(a), *map(str, dirs), "--out", str(out), "--format", "md"]) == 0
    markdown = (out / "report.md").read_text()
    assert not re.search(r"(?<!\\)<img", markdown)  # only as \<img: text, not an element
    assert "- **report \\<img src=x onerror=alert(1)\\>**:" in markdown
    assert "[x](http:evil)" not in markdown and "run\\*\\_\\[x\\](http:evil)" in markdown
    assert main(["compare", str(a), str(b), "--labels", f"{rf.HOSTILE},b", "--out", str(out), "--format", "md",
                 "--force"]) == 0
    assert not re.search(r"(?<!\\)<img", (out / "report.md").read_text())


def test_a_report_that_is_a_device_huge_or_nested_too_deeply_is_refused_in_one_line(shallow_and_deep, tmp_path,
                                                                                   capsys, monkeypatch):
    a, _ = shallow_and_deep
    assert main(["compare", str(a), "/dev/zero"]) == 2  # read forever, once
    assert capsys.readouterr().err.strip() == ("gradscope: error: report /dev/zero is not a regular file (a device, "
                                               "a pipe or a socket); give a file")
    monkeypatch.setenv("GRADSCOPE_MAX_REPORT_MB", "0.015625")  # 16 KiB: the demo report is larger
    assert main(["compare", str(a), str(a)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "is larger than 0.015625 MiB, gradscope's bound for it; set GRADSCOPE_MAX_REPORT_MB to a larger number "
        "of MiB to read it")
    monkeypatch.delenv("GRADSCOPE_MAX_REPORT_MB")
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["compare", str(a), str(nested)]) == 2
    assert capsys.readouterr().err.strip().endswith("its JSON is nested too deeply to be one")


def _nested_comparison(levels: int) -> dict:
    meta = {"kind": "comparison", "reports": [], "warnings": []}
    inner = meta
    for _ in range(levels):
        deeper = {"kind": "comparison", "reports": [], "warnings": []}
        inner["reports"].append({"label": "x", "meta": deeper})
        inner = deeper
    return meta


@pytest.mark.parametrize("meta, says", [
    ({"reports": 5}, "meta.reports is a number (5), not a list or null"),
    ({"reports": [5, "x"]}, "meta.reports[0] is a number (5), not an object"),
    ({"reports": [{"label": 3}]}, "meta.reports[0].label is a number (3), not a string or null"),
    ({"reports": [{"meta": {"reports": [[]]}}]}, "meta.reports[0].meta.reports[0] is a list ([]), not an object"),
    ({"warnings": [{"a": 1}]}, "meta.warnings[0] is an object ({'a': 1}), not a string"),
    (_nested_comparison(100), "meta nests compared reports more than 32 deep"),
])
def test_a_crafted_comparison_report_is_refused_with_what_is_wrong(shallow_and_deep, tmp_path, capsys, meta, says):
    a, _ = shallow_and_deep
    data = json.loads((a / "report.json").read_text())
    data["meta"] = {**data["meta"], "kind": "comparison", **meta}
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(data))
    assert main(["compare", str(crafted), str(a)]) == 2
    assert capsys.readouterr().err == f"gradscope: error: {crafted} is not a gradscope report: {says}\n"


def test_values_at_the_ends_of_the_float_range_are_drawn_in_every_format(shallow_and_deep, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, _ = shallow_and_deep
    data = json.loads((a / "report.json").read_text())
    for row in data["blocks"]:
        row.update(grad_l2=1.5e308, act_grad_l2=1e-308, grad_maxabs=1.7e308, grad_meanabs=5e-324)
    extreme = tmp_path / "extreme.json"
    extreme.write_text(json.dumps(data))
    out = tmp_path / "cmp"
    assert main(["compare", str(extreme), str(a), "--out", str(out), "--format", "json,html,md,svg,png"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (out / "flow.svg").read_text().count("<svg") == 1 and (out / "flow.png").read_bytes()[:4] == b"\x89PNG"
    assert 'id="plot-flow"' in (out / "report.html").read_text()
