"""The end of gpu_check.sh: one short summary of its stages and figures, printed and saved as summary.json.

Standard library only, so it runs even where torch or the build is broken.

    python benchmarks/gpu_check_summary.py OUTDIR STAGES_TSV INFO_JSON ELAPSED_S
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _targets import target_line


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_stages(path: Path) -> list[dict]:
    stages = []
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
        stages.append({"stage": name, "status": status, "seconds": int(seconds or 0), "detail": detail})
    return stages


def grad_stats_rows(bench: dict) -> list[dict]:
    rows = []
    for case in bench.get("cases", []):
        res, rat = case.get("results", {}), case.get("ratios", {}).get("gradscope", {})
        gs = res.get("gradscope", {})
        rows.append(
            {
                "case": case["name"],
                "tensors": case["n_tensors"],
                "MB": round(case["bytes"] / 1e6, 1),
                "gradscope_ms": gs.get("median_ms"),
                "gradscope_gbps": gs.get("gbps"),
                "op_ms": res.get("gradscope.op", {}).get("median_ms"),
                "x_foreach_norm": rat.get("speedup_vs_foreach_norm"),
                "x_loop": rat.get("speedup_vs_loop"),
                "pct_flat_sum": rat.get("pct_of_flat_sum_bw"),
                "pct_copy": rat.get("pct_of_copy_bw"),
                "backend": case.get("check", {}).get("backend"),
                "check_ok": case.get("check", {}).get("ok"),
                "bitwise_repeatable": case.get("repeatable", {}).get("bitwise_identical"),
            }
        )
    return rows


def scaling_rows(bench: dict) -> dict:
    out = {}
    for kind in ("bytes", "count"):
        sweep = bench.get("sweeps", {}).get(kind, {})
        for dtype, fits in sweep.get("fits", {}).items():
            for method in ("gradscope", "gradscope.op", "foreach_norm", "flat_sum", "copy"):
                if method in fits:
                    out.setdefault(kind, {}).setdefault(dtype, {})[method] = fits[method]
            out.setdefault(kind, {}).setdefault(dtype, {})["gradscope_faster_from"] = sweep.get("gradscope_faster_from", {}).get(dtype)
    return out


def _benches(outdir: Path, name: str, to_rows, summary: dict):
    """Each ``<name>*.json`` in ``outdir`` with its rows; files rows and targets in ``summary`` and prints a heading."""
    key = name.removeprefix("bench_")
    for path in sorted(outdir.glob(f"{name}*.json")):
        bench = _load(path)
        rows = to_rows(bench)
        summary[key][path.name] = rows
        summary["targets"] += [dict(t, source=path.name) for t in bench.get("targets", [])]
        print(f"\n{path.name} ({bench.get('meta', {}).get('device')}):")
        yield bench, rows


def _f(v, fmt: str, scale: float = 1.0) -> str:
    """A number for the summary; "-" for null (the JSON holds null for NaN and infinity)."""
    return "-" if v is None else format(v / scale, fmt)


def main(argv: list[str]) -> int:
    outdir, stages_tsv, info_json, elapsed = Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4])
    stages = read_stages(stages_tsv)
    info = _load(info_json)
    summary = {"elapsed_s": elapsed, "stages": stages, "gradscope_info": info, "grad_stats": {}, "scaling": {}, "monitor": {}, "targets": []}

    print("=" * 30 + " gpu_check summary " + "=" * 30)
    print(f"{'stage':<22} {'status':<8} {'s':>4}  detail")
    for s in stages:
        print(f"{s['stage']:<22} {s['status']:<8} {s['seconds']:>4}  {s['detail'][:110]}")
    if info:
        b, r = info.get("backend", {}), info.get("reason", {})
        print(f"gradscope backends: cpu {b.get('cpu')}{': ' + r['cpu'] if r.get('cpu') else ''}; "
              f"cuda {b.get('cuda')}{': ' + r['cuda'] if r.get('cuda') else ''}; GPUs: {', '.join(info.get('gpus', [])) or 'none'}")

    for bench, rows in _benches(outdir, "bench_grad_stats", grad_stats_rows, summary):
        print(f"  {'case':<17} {'n':>6} {'MB':>7} {'ms':>9} {'GB/s':>7} {'op ms':>9} {'x fnorm':>7} {'x loop':>7} {'%sum':>5} {'%copy':>5}  check")
        for r in rows:
            print(
                f"  {r['case']:<17} {r['tensors']:>6} {r['MB']:>7} {_f(r['gradscope_ms'], '.3f'):>9} {_f(r['gradscope_gbps'], '.0f'):>7} "
                f"{_f(r['op_ms'], '.3f'):>9} {_f(r['x_foreach_norm'], '.2f'):>7} {_f(r['x_loop'], '.0f'):>7} "
                f"{_f(r['pct_flat_sum'], '.0f'):>5} {_f(r['pct_copy'], '.0f'):>5}  "
                f"{r['backend']}, {'ok' if r['check_ok'] else 'FAILED'}, repeat {'ok' if r['bitwise_repeatable'] else 'DIFFERS'}"
            )
        if bench.get("left_out"):
            print(f"  left out: {bench['left_out']}")

    for bench, rows in _benches(outdir, "bench_scaling", scaling_rows, summary):
        for dtype, fits in rows.get("bytes", {}).items():
            for m in ("gradscope", "foreach_norm", "flat_sum"):
                f = fits.get(m)
                if f:
                    print(f"  bytes {dtype} {m:<13} t0 {_f(f['t0_us'], '8.1f')} us  BW {_f(f['bandwidth_gbps'], '8.1f')} GB/s  "
                          f"crossover {_f(f['crossover_bytes'], '8.3g', 2**20)} MiB")
            print(f"  bytes {dtype} gradscope faster from (bytes): {fits.get('gradscope_faster_from')}")
        for dtype, fits in rows.get("count", {}).items():
            for m in ("gradscope", "gradscope.op", "foreach_norm"):
                f = fits.get(m)
                if f:
                    print(f"  count {dtype} {m:<13} fixed {_f(f['t_fixed_us'], '8.1f')} us  {_f(f['per_tensor_us'], '7.3f')} us/tensor")
            print(f"  count {dtype} gradscope faster from (tensors): {fits.get('gradscope_faster_from')}")
        if bench.get("left_out"):
            print(f"  left out: {len(bench['left_out'].get('points', []))} points ({bench['left_out']['reason']})")

    for path in sorted(outdir.glob("bench_monitor*.json")):
        mon = _load(path)
        if not mon:
            continue
        summary["monitor"][path.stem] = mon
        feature = mon.get("features", "grads")
        print(f"\n{path.name}: {mon.get('case')}, {mon.get('params')} parameter tensors, {mon.get('pairs')} pairs")
        print(f"  plain step {_f(mon.get('plain_step_ms'), '.2f')} ms, monitored {_f(mon.get('monitored_step_ms'), '.2f')} ms "
              f"(median pair ratio {_f(mon.get('pair_ratio_median'), '.4f')}); monitor.step() host {_f(mon.get('monitor_call_ms'), '.3f')} ms, "
              f"device {_f(mon.get('monitor_gpu_ms'), '.3f')} ms")
        overhead = mon.get("gpu_overhead")
        if overhead is not None:
            limit = 0.05 if feature == "act" else 0.01  # dL/dh on every step has the looser target
            summary["targets"].append({"target": f"monitor overhead ({feature}) at most {limit:.0%} of a BERT-base step",
                                       "maximum": 100 * limit, "value": 100 * overhead,
                                       "status": "PASS" if overhead <= limit else "FAIL", "source": path.name})

    probe = _load(outdir / "latency_probe.json")
    if probe:
        summary["latency"] = probe
        print(f"\nlatency_probe.json ({probe.get('gpu')}, {probe.get('calls')} calls a case): wall / host / device us per call")
        for name, r in probe.get("cases", {}).items():
            print(f"  {name:<45} {_f(r.get('wall_us'), '7.2f')} {_f(r.get('host_enqueue_us'), '7.2f')} {_f(r.get('event_span_us'), '7.2f')}")

    if summary["targets"]:
        print("\ntargets:")
        for t in summary["targets"]:
            print(f"  {target_line(t)}")

    summary["files"] = sorted(p.name for p in outdir.iterdir() if p.is_file()) + ["summary.json"]
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    bad = [s["stage"] for s in stages if s["status"] in ("FAILED", "timeout")]
    print(f"\ngpu_check: {len(stages)} stages in {elapsed} s; "
          + (f"FAILED or timed out: {', '.join(bad)}" if bad else "none failed")
          + f"; files in {outdir}: {', '.join(summary['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
