"""Where a small call's time goes on a GPU: host enqueue time against device time, per call.

    python benchmarks/latency_probe.py [--json OUT]

For each case it times N back-to-back calls three ways: wall time per call with one
synchronize at the end (what bench_scaling's Timer sees), host time to enqueue a call
(no synchronize), and device time per call from CUDA events around the N calls. A call
whose wall time is near its host time is host-bound; near its device time, device-bound.
One 4 MiB tensor is also passed as 16 / 64 / 256 equal views, which is what smaller
chunks would give the kernel: more blocks in flight for the same bytes. Small lists with
a tensor of several chunks are timed in both forms of the small-list path: a finalize
launch after the chunk launch, and one launch (the last chunk block of a tensor combines it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import gradscope

CHUNK_BYTES = 256 * 1024  # csrc/grad_stats_cuda.cu: kChunkBytes
SMALL_LIST = 224  # csrc/grad_stats_cuda.cu: kArgTensors


def _time(fn, n: int) -> dict:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    device_span = start.elapsed_time(end) / 1e3 / n  # includes gaps when the host is slower
    return {"wall_us": wall * 1e6, "host_enqueue_us": host * 1e6, "event_span_us": device_span * 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("latency_probe: no CUDA device", file=sys.stderr)
        return 3
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    cases = {}
    # The last: 400 MiB in 200 tensors of 8 chunks, about a BERT-base gradient list (bandwidth-bound).
    for count, total in ((1, 64 << 10), (8, 64 << 10), (200, 64 << 10), (1, 4 << 20), (8, 4 << 20), (200, 4 << 20), (200, 400 << 20)):
        n = total // 4 // count
        cases[f"{count} x {total // count} B"] = [torch.randn(n, device=dev, generator=g) for _ in range(count)]
    big = torch.randn((4 << 20) // 4, device=dev, generator=g)
    for parts in (16, 64, 256):
        cases[f"1 x 4 MiB as {parts} views"] = list(big.view(parts, -1).unbind(0))
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "calls": args.calls, "cases": {}}
    copy_src, copy_dst = torch.randn(16384, device=dev), torch.empty(16384, device=dev)
    out["cases"]["torch copy_ 64 KiB (a one-kernel floor)"] = _time(lambda: copy_dst.copy_(copy_src), args.calls)
    # Where a one-launch call's host time goes: a bare launch through a thin binding, one small
    # allocation (the result table), and the compiled entry without the Python wrapper around it.
    out["cases"]["torch.cuda._sleep(0) (a bare launch)"] = _time(lambda: torch.cuda._sleep(0), args.calls)
    out["cases"]["torch.empty 1 x 6 float64 (the result's allocation)"] = _time(
        lambda: torch.empty((1, 6), dtype=torch.float64, device=dev), args.calls)
    from gradscope import _ext

    single = [torch.randn(16384, device=dev)]
    out["cases"]["compiled entry 1 x 65536 B (no Python wrapper)"] = _time(lambda: _ext.dense_call(single, True), args.calls)
    from gradscope import _C_cuda

    for name, tensors in cases.items():
        out["cases"][f"grad_stats {name}"] = _time(lambda t=tensors: gradscope.grad_stats(t), args.calls)
        out["cases"][f"raw op {name}"] = _time(lambda t=tensors: torch.ops.gradscope.grad_stats(t), args.calls)
        if len(tensors) <= SMALL_LIST and any(t.numel() * t.element_size() > CHUNK_BYTES for t in tensors):
            for one, form in ((False, "two launches"), (True, "one launch")):
                previous = _C_cuda._set_one_launch(one)
                try:
                    out["cases"][f"grad_stats {name} ({form})"] = _time(lambda t=tensors: gradscope.grad_stats(t), args.calls)
                finally:
                    _C_cuda._set_one_launch(previous)
    # Captured into a CUDA graph (as torch.compile's "reduce-overhead" mode does): a replay
    # skips Python, the dispatcher and the launch's host work, so the host cost per call is
    # the replay's.
    for name in ("1 x 65536 B", "8 x 8192 B", "1 x 4194304 B", "200 x 20971 B"):
        tensors = cases[name]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.ops.gradscope.grad_stats(tensors)  # warm up off the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            torch.ops.gradscope.grad_stats(tensors)
        out["cases"][f"graph replay {name}"] = _time(graph.replay, args.calls)
    print(f"{'case':45s} {'wall us':>9s} {'host us':>9s} {'events us':>10s}")
    for name, r in out["cases"].items():
        print(f"{name:45s} {r['wall_us']:9.2f} {r['host_enqueue_us']:9.2f} {r['event_span_us']:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
