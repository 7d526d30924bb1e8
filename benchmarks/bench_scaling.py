"""How the cost of gradient statistics grows with total size and with tensor count.

Four studies, each method timed in the same run (see _common.py for the methods):

- latency: per-call time of small lists (1 to 1,000 fp32 tensors, 64 KiB and
  4 MiB in total), where fixed costs rule: the CUDA target is at most 10 us per
  call for lists under 4 MB;
- bytes: total bytes from 1 MiB up to --max-bytes at a fixed tensor count
  (--bytes-count, equal sizes);
- count: tensor count from 1 to --max-count at fixed total bytes (--count-bytes);
- models: real parameter lists: ResNet-50, BERT-base, BERT-large (fp32, bf16)
  and a 1.1B decoder (bf16), shapes from configs on the meta device.

For gradscope and each baseline it fits ``t = t0 + bytes / BW`` on the bytes
sweep and ``t = t_fixed + count * c`` on the count sweep, and reports where fixed
overhead gives way to bandwidth (the crossover ``t0 * BW``), and from which size
or count gradscope beats each baseline. One log-log PNG per sweep.

    python benchmarks/bench_scaling.py --device cpu --out out/scaling_cpu.json --plot-dir out
    python benchmarks/bench_scaling.py --device cuda --out out/scaling_cuda.json --plot-dir out
    python benchmarks/bench_scaling.py --quick           # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import _common as C
from _targets import target_line
import torch

MIB = 1 << 20
GIB = 1 << 30
SWEEPS = ("latency", "bytes", "count", "models")
LATENCY_COUNTS = (1, 8, 64, 200, 1000)
LATENCY_BYTES = (64 * 1024, 4 * MIB)
LATENCY_METHODS = (C.GRADSCOPE, C.GRADSCOPE_OP, C.FOREACH_NORM, C.TOTAL_NORM)
FULL_MODELS = ("resnet50:fp32", "resnet50:bf16", "bert-base:fp32", "bert-base:bf16", "bert-large:fp32", "bert-large:bf16", "decoder-1b:bf16")
QUICK_MODELS = ("bert-tiny:fp32", "bert-tiny:bf16")
PLOTTED = (C.GRADSCOPE, C.GRADSCOPE_OP, C.FOREACH_NORM, C.TOTAL_NORM, C.LOOP, C.FLAT_SUM, C.COPY)
COMPARED = (C.FOREACH_NORM, C.TOTAL_NORM, C.LOOP)


# --- fits --------------------------------------------------------------------------------


def fit_affine(xs: list[float], ts: list[float]) -> dict:
    """Fits ``t = a + b * x`` minimizing relative error (the points span decades).

    Returns a, b and the crossover ``a / b``: the x where the x-proportional part
    equals the fixed part. A negative a is refitted as a = 0 (no measurable overhead).
    """
    pts = [(x, t) for x, t in zip(xs, ts) if t > 0 and x > 0]
    if len(pts) < 2:
        return {}
    # Rows scaled by 1/t: least squares on (a + b x - t) / t.
    a11 = sum(1 / t**2 for _, t in pts)
    a12 = sum(x / t**2 for x, t in pts)
    a22 = sum(x * x / t**2 for x, t in pts)
    y1 = sum(1 / t for _, t in pts)
    y2 = sum(x / t for x, t in pts)
    det = a11 * a22 - a12 * a12
    a, b = ((a22 * y1 - a12 * y2) / det, (a11 * y2 - a12 * y1) / det) if det > 0 else (float("nan"), float("nan"))
    if not a >= 0:
        a, b = 0.0, y2 / a22
    if not b > 0:
        b = 0.0
    worst = max(abs(a + b * x - t) / t for x, t in pts)
    return {"a": a, "b": b, "crossover": a / b if b > 0 else float("inf"), "max_rel_residual": worst}


def bandwidth_fit(xs, ts) -> dict:
    f = fit_affine(xs, ts)
    if not f:
        return {}
    return {
        "t0_us": f["a"] * 1e6,
        "bandwidth_gbps": 1 / f["b"] / 1e9 if f["b"] > 0 else float("inf"),
        "crossover_bytes": f["crossover"],
        "max_rel_residual": f["max_rel_residual"],
    }


def count_fit(xs, ts) -> dict:
    f = fit_affine(xs, ts)
    if not f:
        return {}
    return {
        "t_fixed_us": f["a"] * 1e6,
        "per_tensor_us": f["b"] * 1e6,
        "crossover_count": f["crossover"],
        "max_rel_residual": f["max_rel_residual"],
    }


def wins_from(points: list[dict], baseline: str, gs: str = C.GRADSCOPE):
    """Smallest x from which gradscope is faster than ``baseline`` at every measured point after."""
    pairs = [
        (p["x"], p["results"][gs]["median_ms"] < p["results"][baseline]["median_ms"])
        for p in points
        if "median_ms" in p["results"].get(gs, {}) and "median_ms" in p["results"].get(baseline, {})
    ]
    if not pairs:
        return None
    from_x = None
    for x, faster in reversed(pairs):
        if not faster:
            break
        from_x = x
    return from_x  # None: slower at the largest measured point


# --- sweeps ------------------------------------------------------------------------------


def bytes_points(args) -> list[int]:
    top = args.max_bytes
    pts, b = [], MIB
    step = 4 if (args.quick or args.coarse) else 2
    while b <= top:
        pts.append(b)
        b *= step
    return pts


def count_points(args) -> list[int]:
    pts, k = [], 0
    while True:
        for m in (1,) if args.coarse else (1, 3):
            n = m * 10**k
            if n > args.max_count:
                return pts if pts[-1] == args.max_count else pts + [args.max_count]
            pts.append(n)
        k += 1


def run_sweep(kind: str, args, device, rotate: int, payload: dict, methods_for, deadline: C.Deadline) -> None:
    sweep = payload["sweeps"][kind]
    guard = C.CostGuard(args.loop_budget_s, capped=(C.LOOP,))
    for dtype_name in args.dtypes:
        elem = torch.empty((), dtype=C.DTYPES[dtype_name]).element_size()
        xs = bytes_points(args) if kind == "bytes" else count_points(args)
        for x in xs:
            if deadline.expired(f"{kind}:{dtype_name}:{x}"):
                continue
            if kind == "bytes":
                shapes = C.equal_shapes(args.bytes_count, x, elem)
                label = f"{args.bytes_count} tensors, {x / MIB:g} MiB"
            else:
                shapes = C.equal_shapes(x, args.count_bytes, elem)
                label = f"{x:,} tensors, {args.count_bytes / MIB:g} MiB"
            case = C.Case(f"{kind}:{dtype_name}:{x}", label, dtype_name, device, shapes, seed=args.seed, rotate_bytes=rotate)
            t = time.perf_counter()
            case.allocate()
            point = case.describe()
            point["x"] = x
            point["results"] = C.measure_methods(case, methods_for(case), args, guard, x)
            point["ratios"] = C.ratios(point["results"])
            point["wall_s"] = time.perf_counter() - t
            case.release()
            sweep["points"].append(point)
            C.write_json(args.out, payload)
            _print_point(kind, point)
        pts = [p for p in sweep["points"] if p["dtype"] == dtype_name]
        if not pts:
            continue
        for m in PLOTTED:
            skipped = [p["x"] for p in pts if "skipped" in p["results"].get(m, {})]
            if skipped:
                unit = (lambda x: f"{x / MIB:g} MiB") if kind == "bytes" else (lambda x: f"{x:,} tensors")
                print(f"  {dtype_name}: {m} skipped at {len(skipped)} points, from {unit(skipped[0])} on: one call predicted over --loop-budget-s {args.loop_budget_s:g} s")
        sweep["fits"][dtype_name] = _fits(kind, pts)
        sweep["gradscope_faster_from"][dtype_name] = {b: wins_from(pts, b) for b in COMPARED}
        C.write_json(args.out, payload)
        _print_fits(kind, dtype_name, sweep)


def _fits(kind: str, pts: list[dict]) -> dict:
    out = {}
    for m in PLOTTED:
        xs = [p["x"] if kind == "count" else p["bytes"] for p in pts if "median_ms" in p["results"].get(m, {})]
        ts = [p["results"][m]["median_ms"] / 1e3 for p in pts if "median_ms" in p["results"].get(m, {})]
        f = count_fit(xs, ts) if kind == "count" else bandwidth_fit(xs, ts)
        if f:
            f["points"] = len(xs)
            out[m] = f
    return out


def run_models(args, device, rotate: int, payload: dict, methods_for, deadline: C.Deadline) -> None:
    guard = C.CostGuard(args.models_loop_budget_s, capped=(C.LOOP,), option="--models-loop-budget-s")
    for spec in args.models:
        if deadline.expired(f"models:{spec}"):
            continue
        model, dtype_name = spec.split(":")
        case = C.Case(spec, C.MODEL_LABELS[model], dtype_name, device, C.model_shapes(model), seed=args.seed, rotate_bytes=rotate)
        case.allocate()
        point = case.describe()
        point["results"] = C.measure_methods(case, methods_for(case), args, guard, case.nbytes)
        point["ratios"] = C.ratios(point["results"])
        case.release()
        payload["sweeps"]["models"]["points"].append(point)
        C.write_json(args.out, payload)
        C.print_table(
            f"\n{spec}: {point['label']} · {point['n_tensors']:,} tensors · {point['numel'] / 1e6:.1f}M elements · "
            f"{point['bytes'] / C.MB:.0f} MB",
            point["results"],
        )
        _print_ratio_line(point)


def run_latency(args, device, rotate: int, payload: dict, deadline: C.Deadline) -> None:
    """Per-call time of small fp32 lists: the fixed costs of a call, by tensor count."""
    sweep = payload["sweeps"]["latency"]
    available = C.grad_methods(device, reference=False)
    methods = {m: available[m] for m in LATENCY_METHODS if m in available}
    for total in LATENCY_BYTES:
        for count in LATENCY_COUNTS:
            name = f"latency:fp32:{count}x{total}"
            if deadline.expired(name):
                continue
            label = f"{count:,} tensors, {total / 1024:g} KiB"
            case = C.Case(name, label, "fp32", device, C.equal_shapes(count, total, 4), seed=args.seed, rotate_bytes=rotate)
            case.allocate()
            point = case.describe()
            point["total_bytes"] = total
            point["results"] = C.measure_methods(case, methods, args)
            case.release()
            sweep["points"].append(point)
            C.write_json(args.out, payload)
            cells = [f"{m}={point['results'][m]['median_ms'] * 1e3:.1f}" for m in methods if "median_ms" in point["results"].get(m, {})]
            print(f"  {label:<24} us per call: " + " ".join(cells))


def latency_table(payload: dict) -> dict[str, dict[str, dict[int, float]]]:
    """{method: {total bytes: {tensor count: us per call}}} from the latency sweep."""
    out: dict = {}
    for p in payload["sweeps"].get("latency", {}).get("points", []):
        for m, r in p["results"].items():
            if "median_ms" in r:
                out.setdefault(m, {}).setdefault(str(p["total_bytes"]), {})[p["n_tensors"]] = r["median_ms"] * 1e3
    return out


# --- targets (issue 6), CUDA only -----------------------------------------------------------


def evaluate_targets(device, payload: dict) -> list[dict]:
    if device.type != "cuda":
        return []
    out = []
    pts = payload["sweeps"].get("bytes", {}).get("points", [])
    def values(method: str, pick) -> list[float]:
        return [v for v in (pick(p, method) for p in pts) if v is not None]

    pct_copy = lambda p, m: p["ratios"].get(m, {}).get("pct_of_copy_bw") if p["bytes"] >= 1e9 else None  # noqa: E731
    big = values(C.GRADSCOPE, pct_copy)
    row = {"target": "at least 85% of the copy bandwidth (read + write) for totals of 1 GB and more", "minimum": 85.0}
    if big:
        op = values(C.GRADSCOPE_OP, pct_copy)
        row.update(value=min(big), value_op=min(op) if op else None, status="PASS" if min(big) >= 85 else "FAIL")
    else:
        row["status"] = "not measured"
    out.append(row)
    call_us = lambda p, m: p["results"].get(m, {}).get("median_ms", None) if p["bytes"] <= 4 * MIB else None  # noqa: E731
    small = [v * 1e3 for v in values(C.GRADSCOPE, call_us)]
    count = payload["sweeps"].get("bytes", {}).get("fixed_count")
    row = {"target": f"at most 10 us per call for lists up to 4 MiB ({count} tensors)", "maximum": 10.0}
    if small:
        op = [v * 1e3 for v in values(C.GRADSCOPE_OP, call_us)]
        row.update(value=max(small), value_op=max(op) if op else None, status="PASS" if max(small) <= 10 else "FAIL")
    else:
        row["status"] = "not measured"
    out.append(row)
    # The same bound by tensor count, from the latency sweep (4 MiB lists): where it holds.
    table = latency_table(payload).get(C.GRADSCOPE, {}).get(str(4 * MIB), {})
    if table:
        held = [n for n, us in sorted(table.items()) if us <= 10.0]
        out.append({
            "target": "at most 10 us per call for a 4 MiB list, by tensor count (latency sweep): "
                      + ", ".join(f"{n:,}: {us:.1f} us" for n, us in sorted(table.items())),
            "maximum": 10.0, "value": max(table.values()),
            "status": "PASS" if len(held) == len(table) else ("PART" if held else "FAIL"),
        })
    return out


# --- plots -------------------------------------------------------------------------------


def plot(kind: str, sweep: dict, args, device) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = [d for d in args.dtypes if any(p["dtype"] == d for p in sweep["points"])]
    if not dtypes:
        return ""
    rows = 2 if kind == "bytes" else 1
    fig, axes = plt.subplots(rows, len(dtypes), figsize=(max(8.5, 6.5 * len(dtypes)), 4.6 * rows), squeeze=False)
    for col, dtype_name in enumerate(dtypes):
        pts = [p for p in sweep["points"] if p["dtype"] == dtype_name]
        for m in PLOTTED:
            xs = [(p["bytes"] / MIB if kind == "bytes" else p["x"]) for p in pts if "median_ms" in p["results"].get(m, {})]
            ts = [p["results"][m]["median_ms"] for p in pts if "median_ms" in p["results"].get(m, {})]
            if not xs:
                continue
            label = m
            if any("skipped" in p["results"].get(m, {}) for p in pts):
                label = f"{m} (not run beyond {xs[-1]:,g}: over --loop-budget-s)"
            style = {"linestyle": "--" if m in C.ROOFLINES else "-", "marker": "o", "markersize": 3, "label": label}
            if m == C.GRADSCOPE:
                style.update(linewidth=2.5, color="black")
            axes[0][col].plot(xs, ts, **style)
            if rows == 2:
                gb = [p["results"][m]["gbps"] for p in pts if "median_ms" in p["results"].get(m, {})]
                axes[1][col].plot(xs, gb, **style)
        fit = sweep["fits"].get(dtype_name, {}).get(C.GRADSCOPE)
        ax = axes[0][col]
        if fit and kind == "bytes" and math.isfinite(fit["crossover_bytes"]) and fit["crossover_bytes"] > 0:
            ax.axvline(fit["crossover_bytes"] / MIB, color="grey", linewidth=0.8, linestyle=":")
            ax.annotate(
                f"gradscope: t0 {fit['t0_us']:.0f} us, {fit['bandwidth_gbps']:.0f} GB/s\ncrossover {fit['crossover_bytes'] / MIB:.2g} MiB",
                xy=(0.02, 0.98), xycoords="axes fraction", va="top", fontsize=8,
            )
        if fit and kind == "count":
            ax.annotate(
                f"gradscope: {fit['per_tensor_us']:.2g} us/tensor, fixed {fit['t_fixed_us']:.0f} us\ncrossover {fit['crossover_count']:,.0f} tensors",
                xy=(0.02, 0.98), xycoords="axes fraction", va="top", fontsize=8,
            )
        for r in range(rows):
            a = axes[r][col]
            a.set_xscale("log")
            a.set_yscale("log")
            a.grid(True, which="both", alpha=0.3)
            a.set_xlabel(
                f"total gradient bytes (MiB), {sweep['fixed_count']} tensors" if kind == "bytes"
                else f"number of tensors, {sweep['fixed_bytes'] / MIB:g} MiB in total"
            )
        axes[0][col].set_ylabel("time per call (ms)")
        axes[0][col].set_title(f"{dtype_name} on {device.type}")
        if rows == 2:
            axes[1][col].set_ylabel("bytes read per second (GB/s; copy: read + write)")
        axes[0][col].legend(fontsize=7, loc="best")
    meta = sweep.get("meta_line", "")
    fig.suptitle(f"gradscope scaling: {'total size' if kind == 'bytes' else 'tensor count'} · {meta}", fontsize=9)
    fig.tight_layout()
    path = Path(args.plot_dir) / f"scaling_{kind}_{device.type}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# --- printing ----------------------------------------------------------------------------


def _print_point(kind: str, p: dict) -> None:
    r = p["results"]
    cells = []
    for m in PLOTTED:
        v = r.get(m, {})
        cells.append(f"{m}={C.fmt_ms(v['median_ms'])}" if "median_ms" in v else f"{m}=({'skipped' if 'skipped' in v else 'error'})")
    gs = r.get(C.GRADSCOPE, {})
    bw = f" · gradscope {gs['gbps']:.1f} GB/s" if "gbps" in gs else ""
    print(f"  {p['dtype']} {p['label']:<24} ms: " + " ".join(cells) + bw, flush=True)
    for m, v in r.items():
        if "error" in v:
            print(f"    {m}: {v['error']}")


def _print_ratio_line(p: dict) -> None:
    for gs, rr in p["ratios"].items():
        parts = [f"{rr[k]:.1f}x {k.removeprefix('speedup_vs_')}" for k in rr if k.startswith("speedup_vs_")]
        parts += [f"{rr[k]:.0f}% of {k.removeprefix('pct_of_').removesuffix('_bw')} GB/s" for k in rr if k.startswith("pct_of_")]
        print(f"  {gs}: " + ", ".join(parts))


def _print_fits(kind: str, dtype_name: str, sweep: dict) -> None:
    print(f"  fits ({dtype_name}):")
    for m, f in sweep["fits"][dtype_name].items():
        if kind == "bytes":
            print(
                f"    {m:<15} t0 {f['t0_us']:9.1f} us  BW {f['bandwidth_gbps']:8.1f} GB/s  "
                f"crossover {f['crossover_bytes'] / MIB:9.3g} MiB  (max rel residual {f['max_rel_residual']:.2f})"
            )
        else:
            print(
                f"    {m:<15} fixed {f['t_fixed_us']:9.1f} us  {f['per_tensor_us']:8.3f} us/tensor  "
                f"crossover {f['crossover_count']:9.3g} tensors  (max rel residual {f['max_rel_residual']:.2f})"
            )
    for b, x in sweep["gradscope_faster_from"][dtype_name].items():
        where = "at no measured size (slower at the largest)" if x is None else (
            f"from {x / MIB:g} MiB on" if kind == "bytes" else f"from {x:,} tensors on"
        )
        print(f"    gradscope faster than {b}: {where}")


# --- main --------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated subset of: %(default)s")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--max-bytes", type=float, default=None, help="largest total of the bytes sweep, in MiB (default: 1024 on CPU, 4096 on CUDA)")
    p.add_argument("--bytes-count", type=int, default=None, help="tensor count of the bytes sweep (default 200; 50 with --quick)")
    p.add_argument("--count-bytes", type=float, default=None, help="total MiB of the count sweep (default: 64 on CPU, 256 on CUDA)")
    p.add_argument("--max-count", type=int, default=None, help="largest tensor count (default 100000)")
    p.add_argument("--models", default=None, help=f"model:dtype list (default: {','.join(FULL_MODELS)})")
    p.add_argument("--loop-budget-s", type=float, default=None, help="skip the loop where one call is predicted to take longer (default: 5 on CPU, 3 on CUDA, 1 with --quick)")
    p.add_argument(
        "--models-loop-budget-s", type=float, default=None,
        help="the same cap for the real lists, which are few (default: 30; 1 with --quick)",
    )
    p.add_argument("--coarse", action="store_true", help="fewer points: bytes x4 apart, counts x10 apart (gpu_check.sh uses it)")
    p.add_argument("--plot-dir", default=None, help="where PNGs go (default: beside --out, else ./out)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.quick:
        args.max_bytes = 16 if args.max_bytes is None else args.max_bytes
        args.bytes_count = args.bytes_count or 50
        args.count_bytes = 4 if args.count_bytes is None else args.count_bytes
        args.max_count = 1000 if args.max_count is None else args.max_count
        args.models = ",".join(QUICK_MODELS) if args.models is None else args.models
        args.min_run_time = 0.02 if args.min_run_time is None else args.min_run_time
        args.loop_budget_s = 1.0 if args.loop_budget_s is None else args.loop_budget_s
        args.models_loop_budget_s = 1.0 if args.models_loop_budget_s is None else args.models_loop_budget_s
    args.max_bytes = int((args.max_bytes if args.max_bytes is not None else (4096 if cuda else 1024)) * MIB)
    args.count_bytes = int((args.count_bytes if args.count_bytes is not None else (256 if cuda else 64)) * MIB)
    args.max_count = args.max_count or 100_000
    args.loop_budget_s = args.loop_budget_s if args.loop_budget_s is not None else (3.0 if cuda else 5.0)
    args.models_loop_budget_s = args.models_loop_budget_s if args.models_loop_budget_s is not None else 30.0
    args.bytes_count = args.bytes_count or 200
    args.models = (args.models or ",".join(FULL_MODELS)).split(",")
    args.min_run_time = args.min_run_time if args.min_run_time is not None else (0.1 if cuda else 0.3)
    args.dtypes = args.dtypes.split(",")
    args.sweeps = args.sweeps.split(",")
    if args.plot_dir is None:
        args.plot_dir = str(Path(args.out).parent) if args.out else "out"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device, rotate, meta = C.start_run(args)
    payload = {"schema": C.SCHEMA, "benchmark": "bench_scaling", "meta": meta, "sweeps": {}}
    meta_line = f"{meta.get('gpu', {}).get('name', meta['cpu'])}, torch {torch.__version__}, {args.threads} threads, {meta['date_utc'][:10]}"
    fused = C.fused_available(device)
    print(
        f"gradscope bench_scaling · {device} · torch {torch.__version__} · {args.threads} threads · "
        f"fused {device.type}: {'yes' if fused else 'NO: ' + meta['extension']['reason_' + device.type]}"
    )
    if args.loop_budget_s:
        print(
            f"  the loop is skipped where one call is predicted to take over {args.loop_budget_s:g} s (--loop-budget-s; "
            f"real lists: {args.models_loop_budget_s:g} s, --models-loop-budget-s)"
        )

    deadline = C.Deadline(args.time_budget_s)

    def methods_for(case):
        return C.grad_methods(device, reference=False)

    # Real lists before the count sweep: under a --time-budget-s they matter more.
    for kind in ("latency", "bytes", "models", "count"):
        if kind not in args.sweeps:
            continue
        if kind == "latency":
            payload["sweeps"]["latency"] = {"points": [], "counts": list(LATENCY_COUNTS), "bytes": list(LATENCY_BYTES)}
            print("\n== latency: per-call time of small fp32 lists")
            run_latency(args, device, rotate, payload, deadline)
            continue
        if kind == "models":
            payload["sweeps"]["models"] = {"points": []}
            print("\n== real gradient lists")
            run_models(args, device, rotate, payload, methods_for, deadline)
            continue
        payload["sweeps"][kind] = {
            "points": [], "fits": {}, "gradscope_faster_from": {}, "meta_line": meta_line,
            "fixed_count": args.bytes_count if kind == "bytes" else None,
            "fixed_bytes": args.count_bytes if kind == "count" else None,
        }
        print(
            f"\n== {kind} sweep: "
            + (f"1 MiB .. {args.max_bytes / MIB:g} MiB in {args.bytes_count} equal tensors" if kind == "bytes"
               else f"1 .. {args.max_count:,} equal tensors, {args.count_bytes / MIB:g} MiB in total")
        )
        run_sweep(kind, args, device, rotate, payload, methods_for, deadline)
        path = plot(kind, payload["sweeps"][kind], args, device)
        payload["sweeps"][kind]["plot"] = path
        print(f"  plot: {path or 'none (no points measured)'}")
        C.write_json(args.out, payload)
    payload["targets"] = evaluate_targets(device, payload)
    if deadline.left_out:
        payload["left_out"] = {"reason": f"--time-budget-s {args.time_budget_s:g} spent", "points": deadline.left_out}
        print(f"\nleft out (time budget {args.time_budget_s:g} s spent): {len(deadline.left_out)} points: {', '.join(deadline.left_out[:8])}{' ...' if len(deadline.left_out) > 8 else ''}")
    C.write_json(args.out, payload)
    if payload["targets"]:
        print("\ntargets (issue 6), cuda:")
        for t in payload["targets"]:
            print(f"  {target_line(t)}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
