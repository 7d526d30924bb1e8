"""The HTML report in a real headless Chromium: it loads with no console error and nothing blocked, shows its
plots and tables, sorts and filters, renders hostile names as text; a screenshot is kept in test-artifacts/.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``; CI installs it). Without it these tests
skip, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import report_fixtures as rf

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium here: apt-get install -y chromium (CI installs it)")


def _open(chromium, page: Path, profile: Path, *extra, fragment: str = "") -> tuple[str, str]:
    """(DOM after load, console lines) of the page in a fresh profile."""
    result = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra,
         page.resolve().as_uri() + fragment],
        capture_output=True, text=True, timeout=60,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A hostile analyze-style report (one parameter without a gradient) and a monitor report with a time series
    and a non-finite step, as HTML."""
    root = tmp_path_factory.mktemp("pages")
    hostile = rf.hostile_report()
    hostile.params[-1].update(has_grad=False, grad_l2=None)
    hostile.save(root / "hostile", formats="html")
    monitor = rf.monitor_report()
    for r in monitor.series:
        if r["step"] == 5:
            r.update(grad_nonfinite=1, grad_l2=None)
    monitor.save(root / "monitor", formats="html")
    return {"hostile": root / "hostile" / "report.html", "monitor": root / "monitor" / "report.html"}


def _attr(dom: str, name: str) -> str:
    match = re.search(rf'<html[^>]*\b{name}="([^"]*)"', dom)
    return match.group(1) if match else ""


@pytest.mark.parametrize("width", [1280, 800])
def test_page_loads_clean_with_plots_table_and_names_as_text(chromium, pages, tmp_path, width):
    dom, console = _open(chromium, pages["hostile"], tmp_path / "profile", "--dump-dom", f"--window-size={width},1000",
                         fragment="#gs-selftest")
    assert _attr(dom, "data-gs-ready") == "1", "our script did not finish setting up the page"
    assert _attr(dom, "data-gs-errors") == "0", re.search(r'<pre id="gs-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert console == [], console
    # the parameter table sorts, filters and shows just the problem rows; a legend entry picks out its series;
    # nothing makes the page wider than the window
    assert _attr(dom, "data-gs-selftest") == "pass"
    for key in ("flow", "ratios", "blocks"):
        assert f'id="plot-{key}"' in dom
    assert 'id="param-table"' in dom
    # the hostile strings are text: no element came of them
    assert "<img" not in dom and "<svg onload" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom


@pytest.mark.slow
def test_monitor_page_has_a_heatmap_and_a_screenshot_is_kept(chromium, pages, tmp_path):
    dom, console = _open(chromium, pages["monitor"], tmp_path / "profile", "--dump-dom")
    assert _attr(dom, "data-gs-ready") == "1" and _attr(dom, "data-gs-errors") == "0" and console == []
    assert 'id="plot-heatmap"' in dom and 'id="plot-global"' in dom
    assert '<section id="incidents">' in dom and 'class="mark"' in dom  # the non-finite step, in text and plots

    ARTIFACTS.mkdir(exist_ok=True)
    for name, page in pages.items():
        shot = ARTIFACTS / f"report-{name}.png"
        shot.unlink(missing_ok=True)
        _open(chromium, page, tmp_path / f"profile-{name}", f"--screenshot={shot}", "--window-size=1400,2000")
        assert shot.exists() and shot.stat().st_size > 20_000, f"no screenshot of the {name} page"
