"""Overhead of GradientMonitor(engine) in DeepSpeed ZeRO training steps, against the same steps without it.

Two processes (gloo, one thread each: this machine's two cores), a BERT masked-LM with BERT-base widths and
``--layers`` encoder layers built from a config (no download), a client AdamW, ``--batch`` x 128 tokens per
rank. For each ZeRO stage one engine trains with a monitor attached; monitored steps call ``engine.step()``
(the monitor's wrapper: it records, then DeepSpeed steps), plain steps call the class's ``step`` on the same
engine, bypassing the wrapper. They alternate (AB BA AB ...), so drift hits both alike. Whole steps
(forward, backward, step) vary by a few percent from one to the next here, more than the monitor costs, so
the figure is the monitor's own time: the median over pairs of the monitored ``engine.step()`` call's time
less the plain one's (the slower rank's each), over the median plain step; the ratio of whole steps is
printed beside it. The last flush (the one collective) is timed on its own.

    python benchmarks/bench_deepspeed.py                     # ZeRO-2 and ZeRO-3, 4 layers, 10 pairs
    python benchmarks/bench_deepspeed.py --stages 3 --pairs 4 --features updates

Figures, with the command and machine: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the monitor does inside engine.step(), where the figure is taken (dL/dh is reduced in the backward pass:
# bench_monitor measures it).
FEATURES = {"grads": {}, "updates": {"update_ratios": True}}


def worker(args) -> None:
    import datetime

    import deepspeed
    import torch
    import torch.distributed as dist

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # built on first use: minutes, and unneeded
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=120))
    from transformers import BertConfig, BertForMaskedLM

    from gradscope.monitor import GradientMonitor

    rank = dist.get_rank()
    config = BertConfig(num_hidden_layers=args.layers)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(1000, config.vocab_size, (args.batch, 128), generator=g)
    labels = torch.where(torch.rand(args.batch, 128, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    results = []
    for stage in args.stages:
        torch.manual_seed(0)
        model = BertForMaskedLM(config).train()
        ds = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "steps_per_print": 10 ** 9,
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
                                          config=ds)
        monitor = GradientMonitor(engine, **FEATURES[args.features])
        plain_step = type(engine).step

        def timed(monitored: bool) -> tuple[float, float]:
            """(whole step, its engine.step() call) in seconds, the slower rank's each."""
            dist.barrier()
            start = time.perf_counter()
            engine.backward(engine(input_ids=ids, labels=labels).loss)
            stepping = time.perf_counter()
            engine.step() if monitored else plain_step(engine)
            end = time.perf_counter()
            elapsed = torch.tensor([end - start, end - stepping])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            return elapsed[0].item(), elapsed[1].item()

        for _ in range(args.warmup):
            timed(True), timed(False)
        pairs = []
        for i in range(args.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            times = {monitored: timed(monitored) for monitored in order}
            pairs.append((times[True], times[False]))
        start = time.perf_counter()
        recorded = monitor.flush()
        flush_s = time.perf_counter() - start
        monitor.close()
        plain = statistics.median(p[0] for _, p in pairs)
        extra = statistics.median(m[1] - p[1] for m, p in pairs)  # the wrapper's recording, in engine.step()
        results.append({"stage": stage, "features": args.features, "pairs": len(pairs), "plain_step_s": plain,
                        "monitored_step_s": statistics.median(m[0] for m, _ in pairs),
                        "median_pair_ratio": statistics.median(m[0] / p[0] for m, p in pairs),
                        "step_call_extra_s": extra, "overhead": extra / plain,
                        "flush_s": flush_s, "flushed_steps": recorded})
    if rank == 0:
        Path(args.out).write_text(json.dumps({"layers": args.layers, "batch_per_rank": args.batch,
                                              "world": dist.get_world_size(), "torch": torch.__version__,
                                              "deepspeed": deepspeed.__version__, "results": results}, indent=1))
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences of 128 tokens per rank")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--features", choices=sorted(FEATURES), default="grads")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        os._exit(0)  # gloo's threads can abort a finished process at interpreter exit
    out = Path(args.json or "bench_deepspeed.json").resolve()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    forwarded = ["--stages", *map(str, args.stages), "--layers", str(args.layers), "--batch", str(args.batch),
                 "--pairs", str(args.pairs), "--warmup", str(args.warmup), "--features", args.features]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), __file__, *forwarded, "--worker", "--out", str(out)],
                   env=env, check=True, timeout=3600)
    report = json.loads(out.read_text())
    if not args.json:
        out.unlink()
    print(f"BertForMaskedLM {report['layers']} layers, {report['world']} ranks x {report['batch_per_rank']} x 128 "
          f"tokens, CPU, torch {report['torch']}, deepspeed {report['deepspeed']}")
    for r in report["results"]:
        print(f"ZeRO-{r['stage']} ({r['features']}): plain step {r['plain_step_s'] * 1e3:.0f} ms, monitored "
              f"{r['monitored_step_s'] * 1e3:.0f} ms (median pair ratio {r['median_pair_ratio']:.4f}, {r['pairs']} "
              f"pairs); the monitor in engine.step(): {r['step_call_extra_s'] * 1e3:.1f} ms, "
              f"{r['overhead'] * 100:.2f}% of the plain step; flush of {r['flushed_steps']} steps "
              f"{r['flush_s'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
