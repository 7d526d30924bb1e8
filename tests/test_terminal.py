"""The terminal summary: tables wider than the terminal are printed as several that fit, each repeating the
columns that name a row; output that fits is left as it is."""

from __future__ import annotations

import os

import pytest

from gradscope.cli import main
from gradscope.report import Report
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
