"""gradscope.grad_stats against the baselines, on real gradient lists, in one run.

Cases: the parameter lists of BERT-base (202 tensors, 109.5M elements) and
ResNet-50 in fp32 and bf16, a small model (BERT-tiny), and 10,000 tiny tensors.
Per case it times gradscope (public API and raw op), optionally its reference
path, torch._foreach_norm (L2 only), torch.nn.utils.get_total_norm, a
per-parameter loop computing the same six statistics with .item() per tensor
and statistic, and two rooflines over one flat tensor of the same bytes: a sum
(read bandwidth) and a copy. It prints ms, GB/s and ratios measured in this run,
checks gradscope's result against float64 and its run-to-run bit equality, and
writes everything as JSON.

    python benchmarks/bench_grad_stats.py --device cpu --out out/bench_grad_stats_cpu.json
    python benchmarks/bench_grad_stats.py --quick            # smoke run, small cases
"""

from __future__ import annotations

import argparse
import sys

import _common as C
from _targets import target_line
import torch

import gradscope

FULL_CASES = ("bert-base:fp32", "bert-base:bf16", "resnet50:fp32", "resnet50:bf16", "bert-tiny:fp32", "tiny-10000:fp32")
QUICK_CASES = ("bert-tiny:fp32", "bert-tiny:bf16", "resnet18:fp32", "tiny-1000:fp32")

# Targets from issue 2 ("Targets"), checked on the public API's figures.
# (device, case, ratio key, minimum, wording)
TARGETS = (
    ("cpu", "bert-base:fp32", "speedup_vs_foreach_norm", 1.3, "1.3x faster than torch._foreach_norm"),
    ("cpu", "bert-base:fp32", "speedup_vs_loop", 30.0, "30x faster than the six-statistic loop"),
    ("cpu", "bert-base:fp32", "pct_of_flat_sum_bw", 75.0, "75% of the flat-sum bandwidth"),
    ("cuda", "bert-base:fp32", "pct_of_copy_bw", 85.0, "85% of the copy bandwidth (copy counts read + write)"),
    ("cuda", "bert-base:fp32", "speedup_vs_foreach_norm", 1.0, "no slower than torch._foreach_norm"),
    ("cuda", "bert-base:fp32", "speedup_vs_loop", 20.0, "20x the loop on BERT-base"),
    ("cuda", "bert-tiny:fp32", "speedup_vs_loop", 100.0, "100x the loop on a small model (BERT-tiny here)"),
)


def case_shapes(model: str, seed: int):
    if model.startswith("tiny-"):
        count = int(model.split("-", 1)[1])
        return C.tiny_shapes(count, seed=seed), f"{count:,} tiny tensors (1..1000 elements each)"
    return C.model_shapes(model), C.MODEL_LABELS[model]


def check_against_float64(grads: list[torch.Tensor]) -> dict:
    """gradscope's sum of squares and max |g| against float64, per tensor; run before timing."""
    stats = gradscope.grad_stats(grads)
    sumsq = stats.sumsq.double().cpu()
    maxabs = stats.maxabs.double().cpu()
    ref_sumsq = torch.stack([g.double().square().sum() for g in grads]).cpu()
    ref_maxabs = torch.stack([g.double().abs().max() for g in grads]).cpu()
    rel = ((sumsq - ref_sumsq).abs() / ref_sumsq.clamp_min(1e-300)).max().item()
    maxabs_exact = bool(torch.equal(maxabs, ref_maxabs))
    return {
        "backend": stats.backend,
        "sumsq_max_rel_err": rel,
        "maxabs_exact": maxabs_exact,
        "ok": rel <= 1e-5 and maxabs_exact,
    }


def check_repeatable(grads: list[torch.Tensor], calls: int) -> dict:
    """Whether ``calls`` repeated calls give bitwise-identical tables."""
    first = gradscope.grad_stats(grads).table.clone()
    identical = all(torch.equal(gradscope.grad_stats(grads).table, first) for _ in range(calls - 1))
    return {"calls": calls, "bitwise_identical": identical}


def evaluate_targets(device: torch.device, cases: list[dict]) -> list[dict]:
    by_name = {c["name"]: c for c in cases}
    out = []
    for dev, case, key, minimum, wording in TARGETS:
        if dev != device.type:
            continue
        row = {"case": case, "target": wording, "metric": key, "minimum": minimum}
        c = by_name.get(case)
        value = c and c["ratios"].get(C.GRADSCOPE, {}).get(key)
        value_op = c and c["ratios"].get(C.GRADSCOPE_OP, {}).get(key)
        if c is None:
            continue  # the case was not selected (--quick, --cases)
        if c["check"].get("backend") != "fused":
            row["status"] = "not evaluated: gradscope ran its reference path (extension not built/loaded)"
        elif value is None:
            row["status"] = "not measured"
        else:
            row["value"] = value
            row["value_op"] = value_op
            row["status"] = "PASS" if value >= minimum else "FAIL"
        out.append(row)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--cases", help=f"comma-separated model:dtype list (default: {','.join(FULL_CASES)})")
    p.add_argument(
        "--reference-max-mb",
        type=float,
        default=128.0,
        help="time gradscope's reference path on cases up to this size (0: never; default %(default)s)",
    )
    p.add_argument("--repeat-check", type=int, default=None, help="calls compared bitwise per case (default 100; 10 with --quick)")
    args = p.parse_args(argv)
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else (0.5 if args.device == "cuda" else 1.0)
    if args.repeat_check is None:
        args.repeat_check = 10 if args.quick else 100
    if args.cases is None:
        args.cases = ",".join(QUICK_CASES if args.quick else FULL_CASES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device, rotate, meta = C.start_run(args)
    payload = {"schema": C.SCHEMA, "benchmark": "bench_grad_stats", "meta": meta, "cases": []}
    ext = payload["meta"]["extension"]
    print(
        f"gradscope bench_grad_stats · {device} · torch {torch.__version__} · {args.threads} threads · "
        f"fused {device.type}: {'yes' if C.fused_available(device) else 'NO: ' + ext['reason_' + device.type]}"
    )
    if not C.fused_available(device):
        print("  (the 'gradscope' rows below time the PyTorch reference path, not the fused op)")

    deadline = C.Deadline(args.time_budget_s)
    for spec in args.cases.split(","):
        if deadline.expired(spec.strip()):
            payload["left_out"] = {"reason": f"--time-budget-s {args.time_budget_s:g} spent", "cases": deadline.left_out}
            continue
        model, dtype_name = spec.strip().split(":")
        shapes, label = case_shapes(model, args.seed)
        case = C.Case(spec.strip(), label, dtype_name, device, shapes, seed=args.seed, rotate_bytes=rotate)
        reference = args.reference_max_mb > 0 and case.nbytes <= args.reference_max_mb * C.MB
        methods = C.grad_methods(device, reference=reference)
        case.allocate()
        entry = case.describe()
        entry["check"] = check_against_float64(case.grad_sets[0])
        entry["repeatable"] = check_repeatable(case.grad_sets[0], args.repeat_check)
        entry["results"] = C.measure_methods(case, methods, args)
        entry["ratios"] = C.ratios(entry["results"])
        case.release()
        payload["cases"].append(entry)
        C.write_json(args.out, payload)
        _print_case(entry)

    payload["targets"] = evaluate_targets(device, payload["cases"])
    C.write_json(args.out, payload)
    if deadline.left_out:
        print(f"\nleft out (time budget {args.time_budget_s:g} s spent): {', '.join(deadline.left_out)}")
    if payload["targets"]:
        print(f"targets (issue 2), {device.type}:")
        for t in payload["targets"]:
            print(f"  {target_line(t)}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _print_case(entry: dict) -> None:
    title = (
        f"\n{entry['name']}: {entry['label']} · {entry['n_tensors']:,} tensors · {entry['numel'] / 1e6:.1f}M elements · "
        f"{entry['bytes'] / C.MB:.1f} MB · {entry['rotated_copies']} rotated copies"
    )
    C.print_table(title, entry["results"])
    chk, rep = entry["check"], entry["repeatable"]
    print(
        f"  check vs float64: {'ok' if chk['ok'] else 'FAILED'} (backend {chk['backend']}, sumsq max rel err "
        f"{chk['sumsq_max_rel_err']:.1e}, maxabs exact: {chk['maxabs_exact']}); {rep['calls']} calls bitwise identical: "
        f"{rep['bitwise_identical']}"
    )
    for gs, r in entry["ratios"].items():
        parts = [f"{r[k]:.1f}x {k.removeprefix('speedup_vs_')}" for k in r if k.startswith("speedup_vs_")]
        parts += [f"{r[k]:.0f}% of {k.removeprefix('pct_of_').removesuffix('_bw')} GB/s" for k in r if k.startswith("pct_of_")]
        print(f"  {gs}: " + ", ".join(parts))
    print("  (* copy GB/s counts bytes read + written; every other row counts bytes read)")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
