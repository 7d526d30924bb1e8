"""Overhead of GradientMonitor in a training step, against the same loop without it, in one run.

A BERT masked-LM (BERT-base widths, ``--layers`` encoder layers; 4 on CPU, 12
for BERT-base on a GPU) built from a config (no download), AdamW, a fixed
batch. Steps with and without ``monitor.step()`` alternate (AB BA AB ...), so
drift on a shared machine hits both alike. Three figures: the ratio of median
step times, the median of the ratios within each adjacent pair, and, the most
precise on a CPU, the time of ``monitor.step()`` itself over the plain step
(median over pairs, and over the median plain step) (every step monitored, default
``flush_every``; the flushes' host copies are included in the steps that do them).
On a GPU the call returns before its kernel ends, so the monitor's device time
is also taken, with CUDA events around ``monitor.step()``.

    python benchmarks/bench_monitor.py                 # 4-layer BERT, batch 8, seq 128, CPU
    python benchmarks/bench_monitor.py --quick         # fewer steps
    python benchmarks/bench_monitor.py --device cuda --layers 12   # BERT-base on a GPU
    python benchmarks/bench_monitor.py --features updates          # weight norms and update ratios too

``--features``: ``grads`` (the default monitor), ``weights`` (``weight_norms=True``), ``updates``
(``update_ratios=True``, with weight norms; the monitor records from the optimizer's hooks, so monitored
steps use an optimizer with the hooks and plain steps a second AdamW over the same parameters, and the
monitor's cost is the time of ``opt.step()`` over the plain one's plus that of ``monitor.step()``: none),
``act`` (``activation_grads=True``: its cost is in the backward pass, so the forward and backward time over
the plain step's in the same pair counts too; plain steps disarm the hooks). ``--every-n N`` samples
``updates`` and ``act`` (``update_ratios=N``, ``activation_grads=N``): their cost falls on one monitored step in N,
so the figure for them is the mean over pairs (a multiple of N pairs: ``--pairs 20 --every-n 10``).

Targets (issue 5): at most 3% on the CPU case; at most 1% for BERT-base on the H200, where the
figure is the larger of the monitor's device time and its host time, over the plain step.

Figures, with the command and machine: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import gradscope  # noqa: E402


def build(layers: int, device: torch.device, batch: int, seq: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=layers)  # BERT-base widths: 768 hidden, 12 heads, 3072 FFN
    model = BertForMaskedLM(config).to(device).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    inputs = {"input_ids": ids.to(device), "labels": labels.to(device)}
    return model, inputs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=10, help="monitored/plain step pairs timed")
    parser.add_argument("--quick", action="store_true", help="3 pairs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--features", choices=("grads", "weights", "updates", "act"), default="grads")
    parser.add_argument("--every-n", type=int, default=1, metavar="N",
                        help="updates/act: record them every N steps (update_ratios=N, activation_grads=N); the "
                             "cost per step is then the mean over pairs, not the median")
    args = parser.parse_args(argv)
    pairs = 3 if args.quick else args.pairs
    device = torch.device(args.device)

    model, inputs = build(args.layers, device, args.batch, args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    plain_opt = torch.optim.AdamW(model.parameters(), lr=1e-5) if args.features == "updates" else opt
    options = {"weights": {"weight_norms": True}, "updates": {"update_ratios": args.every_n},
               "act": {"activation_grads": args.every_n}}.get(args.features, {})
    hooked = args.features == "updates"
    monitor = gradscope.GradientMonitor(model, opt if hooked else None, **options)

    cuda = device.type == "cuda"

    def train_step(monitored: bool) -> tuple[float, float, float, float, float]:
        """(step seconds, host seconds of monitor.step(), device seconds of its work; 0 where not measured,
        forward and backward seconds, optimizer step seconds)."""
        monitor.active = monitored  # plain steps: the monitor's hooks (dL/dh) stand aside too
        sync(device)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        sync(device)
        forward_backward = time.perf_counter() - start
        call = 0.0
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda and monitored else None
        if monitored and not hooked:
            before = time.perf_counter()
            if events:
                events[0].record()
            monitor.step()
            if events:
                events[1].record()  # the stream runs in order: the time between is the monitor's work
            call = time.perf_counter() - before  # host time of the call (on a GPU the op runs asynchronously)
        before = time.perf_counter()
        (opt if monitored else plain_opt).step()
        sync(device)
        opt_seconds = time.perf_counter() - before
        opt.zero_grad(set_to_none=True)
        sync(device)
        gpu = events[0].elapsed_time(events[1]) / 1e3 if events else 0.0
        return time.perf_counter() - start, call, gpu, forward_backward, opt_seconds

    for _ in range(2):  # warm-up: allocator, kernels, the monitor's buffer
        train_step(True)
        train_step(False)
    plain, monitored, calls, gpu_times, pair_ratios, call_ratios, feature_ratios = [], [], [], [], [], [], []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {}
        for flag in order:
            seconds, call, gpu, forward_backward, opt_seconds = times[flag] = train_step(flag)
            (monitored if flag else plain).append(seconds)
            if flag:
                calls.append(call)
                gpu_times.append(gpu)
        pair_ratios.append(times[True][0] / times[False][0])
        call_ratios.append(calls[-1] / times[False][0])
        # the monitor's time in this pair: its call, plus where its work runs inside the step
        extra = calls[-1]
        if args.features == "act":
            extra += times[True][3] - times[False][3]
        if hooked:
            extra += times[True][4] - times[False][4]
        feature_ratios.append(extra / times[False][0])
    monitor.flush()
    monitor.close()

    plain_ms, mon_ms, call_ms = (statistics.median(x) * 1e3 for x in (plain, monitored, calls))
    gpu_ms = statistics.median(gpu_times) * 1e3 if cuda else None
    result = {
        "case": f"BertForMaskedLM {args.layers} layers, batch {args.batch}, seq {args.seq}, {device}",
        "features": args.features,
        "params": len(monitor.param_names),
        "pairs": pairs,
        "plain_step_ms": plain_ms,
        "monitored_step_ms": mon_ms,
        "monitor_call_ms": call_ms,
        "step_ratio": mon_ms / plain_ms,
        "pair_ratio_median": statistics.median(pair_ratios),
        "call_overhead": call_ms / plain_ms,
        "call_overhead_pair_median": statistics.median(call_ratios),
        "features": args.features,
        # the monitor's time over the plain step, median over pairs: its call, plus for "act" the forward and
        # backward time and for "updates" the optimizer step time over the plain step's in the same pair
        "feature_overhead_pair_median": statistics.median(feature_ratios),
        # sampled features (--every-n N > 1) cost on one step in N: their cost per step is the mean over pairs
        "every_n": args.every_n,
        "feature_overhead_pair_mean": statistics.fmean(feature_ratios),
        # On a GPU: the device time of the monitor's work (CUDA events around monitor.step()), and the
        # overhead that decides the target: the larger of its device and host time, over the plain step.
        "monitor_gpu_ms": gpu_ms,
        "gpu_overhead": max(gpu_ms, call_ms) / plain_ms if cuda else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"{result['case']}: {result['params']} parameter tensors, {pairs} step pairs, "
          f"{result['threads']} threads")
    print(f"  plain step      {plain_ms:9.1f} ms (median)")
    print(f"  monitored step  {mon_ms:9.1f} ms (median)   ratio of medians {result['step_ratio']:.4f}, "
          f"median pair ratio {result['pair_ratio_median']:.4f}")
    print(f"  monitor.step()  {call_ms:9.2f} ms (median)   overhead {100 * result['call_overhead']:.2f}% of the "
          f"median step, median per pair {100 * result['call_overhead_pair_median']:.2f}%")
    print(f"  features {args.features}: monitor's time {100 * result['feature_overhead_pair_median']:.2f}% of the "
          f"plain step (median per pair), {100 * result['feature_overhead_pair_mean']:.2f}% (mean per pair; "
          f"recorded every {args.every_n} step(s))")
    if cuda:
        print(f"  monitor on GPU  {result['monitor_gpu_ms']:9.3f} ms (median, CUDA events)   overhead "
              f"{100 * result['gpu_overhead']:.2f}% of the median step (the larger of device and host time)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
