"""Markdown tables for RESULTS.md from the benchmarks' JSON: figures are copied by a program, not by hand.

    python benchmarks/results_md.py out/bench_grad_stats_cpu.json out/bench_scaling_cpu.json out/bench_monitor_cpu.json

Prints, per file, the run's provenance (date, command, machine, torch, threads,
extension) and its tables. Nothing is recomputed: every number is one the
benchmark wrote, rounded for reading.
"""

from __future__ import annotations

import json
import sys

from _targets import measured

MIB = 1 << 20


def _f(v, fmt: str, scale: float = 1.0) -> str:
    """A number for a table; "–" for null (the JSON holds null for NaN and infinity)."""
    return "–" if v is None else format(v / scale, fmt)


def provenance(meta: dict) -> list[str]:
    ext = meta.get("extension", {})
    machine = meta.get("gpu", {}).get("name") or f"{meta.get('cpu')} ({meta.get('cpu_count')} CPUs)"
    return [
        f"- date (UTC): {meta.get('date_utc')}; machine: {machine}; host `{meta.get('host')}`",
        f"- torch {meta.get('torch')} (CUDA {meta.get('torch_cuda')}), python {meta.get('python')}, torch threads: {meta.get('torch_threads')}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in meta.get('load_average') or [])}",
        f"- gradscope {meta.get('gradscope')}, extension {ext.get('state')}, CPU SIMD {ext.get('cpu_simd', '–')}, "
        f"commit {meta.get('git_commit')}{' (dirty tree)' if meta.get('git_dirty') else ''}",
        f"- command: `{meta.get('command')}`",
    ]


def grad_stats_md(bench: dict) -> list[str]:
    lines = provenance(bench["meta"]) + [
        "",
        "| case | tensors | MB | gradscope ms | GB/s | op ms | × foreach_norm | × get_total_norm | × loop | % flat-sum GB/s | % copy GB/s | check |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in bench.get("cases", []):
        r, q = c["results"], c["ratios"].get("gradscope", {})
        gs = r.get("gradscope", {})
        ok = c["check"].get("ok") and c["repeatable"].get("bitwise_identical")
        lines.append(
            f"| {c['name']} | {c['n_tensors']:,} | {c['bytes'] / 1e6:.1f} | {_f(gs.get('median_ms'), '.3f')} | {_f(gs.get('gbps'), '.1f')} "
            f"| {_f(r.get('gradscope.op', {}).get('median_ms'), '.3f')} | {_f(q.get('speedup_vs_foreach_norm'), '.2f')} "
            f"| {_f(q.get('speedup_vs_get_total_norm'), '.2f')} | {_f(q.get('speedup_vs_loop'), '.0f')} "
            f"| {_f(q.get('pct_of_flat_sum_bw'), '.0f')} | {_f(q.get('pct_of_copy_bw'), '.0f')} "
            f"| {c['check'].get('backend')}, {'ok' if ok else 'FAILED'} |"
        )
    lines += ["", "Baselines, same run (median ms):", "",
              "| case | foreach_norm | get_total_norm | loop | reference | flat sum | copy |", "|---|--:|--:|--:|--:|--:|--:|"]
    for c in bench.get("cases", []):
        r = c["results"]
        cell = lambda m: _f(r.get(m, {}).get("median_ms"), ".3f")  # noqa: E731
        lines.append(f"| {c['name']} | {cell('foreach_norm')} | {cell('get_total_norm')} | {cell('loop')} | {cell('gradscope.reference')} | {cell('flat_sum')} | {cell('copy')} |")
    if bench.get("targets"):
        lines += ["", "Targets (issue 2):", ""]
        lines += [f"- {t['status']}: {t['case']}: {t['target']}" + measured(t, "measured ") for t in bench["targets"]]
    return lines


# Per sweep: the fit's column headings, and its cells.
FIT_COLUMNS = {
    "bytes": (("t0 (us)", "BW (GB/s)", "crossover (MiB)", "max rel. residual"),
              lambda f: (_f(f["t0_us"], ".1f"), _f(f["bandwidth_gbps"], ".1f"), _f(f["crossover_bytes"], ".3g", MIB),
                         _f(f["max_rel_residual"], ".2f"))),
    "count": (("fixed (us)", "per tensor (us)", "crossover (tensors)", "max rel. residual"),
              lambda f: (_f(f["t_fixed_us"], ".1f"), _f(f["per_tensor_us"], ".3f"), _f(f["crossover_count"], ".3g"),
                         _f(f["max_rel_residual"], ".2f"))),
}


def scaling_md(bench: dict) -> list[str]:
    lines = provenance(bench["meta"])
    latency = bench.get("sweeps", {}).get("latency", {}).get("points", [])
    if latency:
        counts = sorted({p["n_tensors"] for p in latency})
        lines += ["", "**latency** (us per call of small fp32 lists, median)", "",
                  "| total | method | " + " | ".join(f"{n:,} tensors" for n in counts) + " |",
                  "|---|---|" + "--:|" * len(counts)]
        for total in sorted({p["total_bytes"] for p in latency}):
            pts = {p["n_tensors"]: p["results"] for p in latency if p["total_bytes"] == total}
            methods = [m for m in ("gradscope", "gradscope.op", "foreach_norm", "get_total_norm")
                       if any(m in r for r in pts.values())]
            for m in methods:
                cells = [_f(pts.get(n, {}).get(m, {}).get("median_ms"), ".1f", 1e-3) for n in counts]
                lines.append(f"| {total / 1024:g} KiB | {m} | " + " | ".join(cells) + " |")
    for kind in ("bytes", "count"):
        sweep = bench.get("sweeps", {}).get(kind)
        if not sweep or not sweep.get("points"):
            continue
        fixed = f"{sweep['fixed_count']} tensors" if kind == "bytes" else f"{sweep['fixed_bytes'] / MIB:g} MiB in total"
        lines += ["", f"**{kind} sweep** ({fixed}; plot `{sweep.get('plot')}`)", ""]
        headings, cells = FIT_COLUMNS[kind]
        lines += ["| dtype | method | " + " | ".join(headings) + " |", "|---|---|" + "--:|" * len(headings)]
        for dtype, fits in sweep["fits"].items():
            for m, f in fits.items():
                lines.append(f"| {dtype} | {m} | " + " | ".join(cells(f)) + " |")
        unit = (lambda x: f"{x / MIB:g} MiB") if kind == "bytes" else (lambda x: f"{x:,} tensors")
        lines.append("")
        for dtype, wins in sweep.get("gradscope_faster_from", {}).items():
            parts = [f"{b}: {'from ' + unit(x) if x is not None else 'not at the largest point'}" for b, x in wins.items()]
            lines.append(f"- {dtype}, gradscope faster than " + "; ".join(parts))
    models = bench.get("sweeps", {}).get("models", {}).get("points", [])
    if models:
        lines += ["", "**Real gradient lists**", "",
                  "| list | tensors | MB | gradscope ms | GB/s | op ms | × foreach_norm | × get_total_norm | × loop | % flat-sum GB/s | % copy GB/s |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for p in models:
            r, q = p["results"], p["ratios"].get("gradscope", {})
            gs = r.get("gradscope", {})
            lines.append(
                f"| {p['name']} | {p['n_tensors']:,} | {p['bytes'] / 1e6:.0f} | {_f(gs.get('median_ms'), '.3f')} | {_f(gs.get('gbps'), '.1f')} "
                f"| {_f(r.get('gradscope.op', {}).get('median_ms'), '.3f')} | {_f(q.get('speedup_vs_foreach_norm'), '.2f')} "
                f"| {_f(q.get('speedup_vs_get_total_norm'), '.2f')} | {_f(q.get('speedup_vs_loop'), '.0f')} "
                f"| {_f(q.get('pct_of_flat_sum_bw'), '.0f')} | {_f(q.get('pct_of_copy_bw'), '.0f')} |"
            )
    if bench.get("targets"):
        lines += ["", "Targets (issue 6):", ""]
        lines += [f"- {t['status']}: {t['target']}" + measured(t, "measured ") for t in bench["targets"]]
    if bench.get("left_out"):
        lines += ["", f"Left out: {len(bench['left_out'].get('points', []))} points ({bench['left_out']['reason']})."]
    return lines


def monitor_md(bench: dict) -> list[str]:
    """bench_monitor's JSON (it has no provenance block: its command, torch and threads are inline)."""
    gpu = bench.get("monitor_gpu_ms") is not None
    overhead = bench["gpu_overhead"] if gpu else bench["call_overhead"]
    lines = [
        f"- command: `python benchmarks/{bench.get('command')}`, torch {bench.get('torch')}, "
        f"{bench.get('threads')} threads",
        f"- {bench.get('case')}, {bench.get('params')} parameter tensors, {bench.get('pairs')} pairs of monitored "
        "and plain steps, alternating",
        "",
        "| plain step (median) | monitored step (median) | `monitor.step()` (median) |"
        + (" monitor on the GPU (median) |" if gpu else "") + " overhead |",
        "|--:|--:|--:|" + ("--:|" if gpu else "") + "--:|",
        f"| {_f(bench['plain_step_ms'], '.1f')} ms | {_f(bench['monitored_step_ms'], '.1f')} ms "
        f"| {_f(bench['monitor_call_ms'], '.2f')} ms |"
        + (f" {_f(bench['monitor_gpu_ms'], '.3f')} ms |" if gpu else "")
        + f" {_f(100 * overhead, '.2f')}% of a step (whole-step ratio of medians {_f(bench['step_ratio'], '.3f')}, "
        f"median pair ratio {_f(bench['pair_ratio_median'], '.3f')}) |",
    ]
    return lines


def _renderer(bench: dict):
    if bench.get("benchmark") == "bench_grad_stats":
        return grad_stats_md
    if bench.get("benchmark") == "bench_scaling":
        return scaling_md
    if "monitored_step_ms" in bench:
        return monitor_md
    return None


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in paths:
        with open(path) as f:
            bench = json.load(f)
        render = _renderer(bench) if isinstance(bench, dict) else None
        if render is None:
            print(f"results_md: {path} is not the JSON of bench_grad_stats, bench_scaling or bench_monitor",
                  file=sys.stderr)
            return 2
        print(f"\n### `{bench.get('benchmark', 'bench_monitor')}` ({path})\n")
        print("\n".join(render(bench)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
