"""Size of the HTML report and how fast it opens, for a BERT-large-sized and a 1B-decoder-sized report.

The reports are synthetic (made-up numbers in the shapes ``analyze`` and the
monitor write; ``tests/report_fixtures.py``): the page's size and load time
depend on the number of rows, blocks and steps, not on the values.

- BERT-large: 24 blocks of 16 parameter tensors (384, about BERT-large's 390),
  three variants as ``analyze`` runs them (pretrained, scratch, a 12-block
  shallow copy): 960 parameter rows.
- 1B decoder, analyze: 48 blocks of 12 tensors (GPT-2 XL's layout, 1.5B
  parameters; a Llama-style 1B has fewer tensors, 16 x 9): 1,440 parameter rows.
- 1B decoder, monitor: the same model's training time series, 48 blocks x
  5,000 recorded steps (240,000 series rows; the heatmap shows 600 evenly
  spaced steps).

For each: the time to render the page in Python, its size, and, in headless
Chromium (``apt-get install chromium``), the time from navigation start to
DOMContentLoaded (page parsed and our script run) and to the load event, as
``performance.now()`` reports them; and the wall time of a whole Chromium run
that loads the page and prints its DOM, next to the same for an empty page.

    python benchmarks/bench_report.py

Results (2026-11-29, 2-core CPU shared with other jobs, load ~1.8, Chromium 150, medians of 3 loads; three
runs, the range shown). An empty page's whole Chromium run takes 0.75-0.82 s, so the page itself adds 0.1-0.3 s:

================================  ======  ======  =========  ========  ============  =========  ===========
report                            params  series  render ms  page KiB  DOM ready ms  load ms    Chromium s
================================  ======  ======  =========  ========  ============  =========  ===========
BERT-large (analyze)                 960       0      17-19       454       121-140    134-159    0.92-1.08
1B decoder (analyze)                1440       0      28-35       699       147-182    166-196    1.02-1.19
1B decoder (monitor, 5000 steps)     576  245000    249-346       407       104-118    121-146    0.83-1.10
================================  ======  ======  =========  ========  ============  =========  ===========

The tables' scroll boxes use ``content-visibility: auto``: before it, the same pages took 460-890 ms to DOM
ready and 620-900 ms to load, most of it laying out table rows nobody could see yet.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import report_fixtures as rf  # noqa: E402
from gradscope.report.html import render_page  # noqa: E402

CASES = {
    "BERT-large (analyze)": dict(layers=24, tensors_per_layer=16),
    "1B decoder (analyze)": dict(layers=48, tensors_per_layer=12),
    "1B decoder (monitor, 5000 steps)": dict(layers=48, tensors_per_layer=12, variants=("training",), steps=5000),
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPEATS = 3


def browser_times(chromium: str, page: Path, profile: Path) -> tuple[float, float, float]:
    """(DOMContentLoaded ms, load ms, wall s of the whole Chromium run) for one fresh load."""
    started = time.perf_counter()
    result = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    ready = re.search(r'data-gs-ready-ms="([\d.]+)"', result.stdout)
    load = re.search(r'data-gs-load-ms="([\d.]+)"', result.stdout)
    return (float(ready.group(1)) if ready else float("nan"), float(load.group(1)) if load else float("nan"), wall)


def main() -> None:
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blank = tmp / "blank.html"
        blank.write_text("<!doctype html><title>blank</title>")
        baseline = (statistics.median(browser_times(chromium, blank, tmp / "p-blank")[2] for _ in range(REPEATS))
                    if chromium else float("nan"))
        for name, kwargs in CASES.items():
            report = rf.synthetic_report(**kwargs)
            renders = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                page_text = render_page(report)
                renders.append((time.perf_counter() - started) * 1e3)
            page = tmp / f"{len(rows)}.html"
            page.write_text(page_text, encoding="utf-8")
            times = [browser_times(chromium, page, tmp / f"p{len(rows)}-{i}") for i in range(REPEATS)] if chromium \
                else [(float("nan"),) * 3]
            rows.append((name, len(report.params), len(report.series), statistics.median(renders),
                         page.stat().st_size, *(statistics.median(t[k] for t in times) for k in range(3))))
    print(f"Chromium: {chromium or 'not installed (apt-get install chromium): browser columns are nan'}; "
          f"an empty page's Chromium run takes {baseline:.2f} s")
    print(f"{'report':34} {'params':>6} {'series':>7} {'render ms':>9} {'page KiB':>9} {'ready ms':>9} "
          f"{'load ms':>8} {'run s':>6}")
    for name, params, series, render_ms, size, ready, load, wall in rows:
        print(f"{name:34} {params:6d} {series:7d} {render_ms:9.0f} {size / 1024:9.0f} {ready:9.0f} {load:8.0f} "
              f"{wall:6.2f}")


if __name__ == "__main__":
    main()
