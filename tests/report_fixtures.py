"""Reports for the report tests: the demo, a training monitor's, a hostile one, and synthetic ones of any size."""

from __future__ import annotations

import math
import random

HOSTILE = "<img src=x onerror=alert(1)>"


def demo_report(depth: int = 4, seed: int = 0, variants=("sigmoid", "tanh", "relu", "relu-he")):
    from gradscope.demo import demo

    return demo(depth=depth, width=8, batch_size=16, seed=seed, device="cpu", variants=variants)


def monitor_report(steps: int = 12, depth: int = 5):
    """A real GradientMonitor's report over a few SGD steps of a small MLP (it carries a time series)."""
    import torch
    from torch import nn

    from gradscope import GradientMonitor

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(depth)], nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with GradientMonitor(net, opt) as monitor:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return monitor.report()


def hostile_report():
    """The demo's report with markup, table pipes and Markdown in every string a model or run can supply."""
    report = demo_report(depth=3, variants=("sigmoid", "relu"))
    evil_block = f"blocks.0{HOSTILE}|`x`*_[a](javascript:alert(2))"
    rename = {"blocks.0": evil_block}
    report.meta["model"] = f"{HOSTILE} </script><script>alert(3)</script> | `tick` **bold**"
    report.meta["inputs"] = "file <b>bold</b>.txt"
    for rows in (report.blocks, report.params):
        for r in rows:
            if r.get("block") in rename:
                r["block"] = rename[r["block"]]
                r["name"] = r.get("name", "").replace("blocks.0", evil_block) if "name" in r else r.get("name")
    for v in report.variants:
        v["description"] = HOSTILE
    for f in report.findings:
        f["evidence"] += " " + HOSTILE
        f["message"] += " | <svg onload=alert(4)>"
    return report


def synthetic_report(layers: int, tensors_per_layer: int, variants=("pretrained", "scratch", "shallow"),
                     steps: int = 0, seed: int = 0):
    """A report shaped like analyze's (or, with ``steps``, like a monitor's) with made-up, plausible numbers."""
    from gradscope.report import Report

    rng = random.Random(seed)
    report = Report(meta={"model": f"synthetic {layers}-layer model", "source": "synthetic", "seed": seed})
    for k, variant in enumerate(variants):
        depth = layers // 2 if variant == "shallow" else layers
        decay = 0.9 + 0.1 * k
        report.variants.append({"name": variant, "description": f"{variant} variant", "base": None,
                                "changes": {}, "architecture": {}})
        blocks = []
        for d in range(depth):
            scale = decay ** (depth - d) * 10 ** rng.uniform(-0.2, 0.2)
            block = f"model.layers.{d}"
            for t in range(tensors_per_layer):
                g = scale * rng.uniform(0.5, 2)
                report.params.append({"name": f"{block}.part{t}.weight", "depth": d, "variant": variant,
                                      "block": block, "shape": [1024, 1024], "numel": 1 << 20, "has_grad": True,
                                      "grad_l2": g, "grad_mean": g * 1e-6, "grad_std": g / 1024,
                                      "grad_rms": g / 1024, "grad_meanabs": g / 1300, "grad_maxabs": g / 50,
                                      "grad_zero_frac": 0.0, "grad_nonfinite": 0, "weight_l2": 30.0,
                                      "grad_to_weight": g / 30})
            blocks.append({"block": block, "depth": d, "variant": variant, "params": tensors_per_layer,
                           "params_no_grad": 0, "numel": tensors_per_layer << 20, "grad_l2": scale * 4,
                           "grad_meanabs": scale / 1300, "grad_maxabs": scale / 40, "grad_zero_frac": 0.0,
                           "grad_nonfinite": 0, "weight_l2": 100.0, "grad_to_weight": scale / 25,
                           "act_grad_l2": scale * 2, "act_grad_nonfinite": 0, "output_nonfinite": 0})
        report.blocks += blocks
        ratio = blocks[0]["act_grad_l2"] / blocks[-1]["act_grad_l2"]
        report.summaries.append({"variant": variant, "verdict": "healthy" if ratio > 1e-2 else "vanishing",
                                 "loss": 2.5, "blocks": depth, "flow_signal": "dL/dh", "first_to_last_ratio": ratio,
                                 "decay": {"trend": "shrinks", "factor_per_block": decay, "r2": 0.99,
                                           "halves_every_blocks": math.log(0.5) / math.log(decay) if decay < 1
                                           else None, "doubles_every_blocks": None},
                                 "params_no_grad": []})
        report.findings.append({"variant": variant, "severity": "info", "kind": "healthy", "block": None,
                                "message": "gradient reaches every block", "evidence": f"ratio {ratio:.3g}",
                                "fix": ""})
    for step in range(steps):
        for d in range(layers):
            report.series.append({"step": step, "block": f"model.layers.{d}", "depth": d,
                                  "grad_l2": 0.95 ** (layers - d) * (1 + 0.5 * math.sin(step / 20 + d)),
                                  "grad_nonfinite": 0})
        report.series.append({"step": step, "block": None, "depth": None, "grad_l2": 1.0 + 0.1 * math.cos(step),
                              "grad_l2_post_clip": None, "grad_nonfinite": 0})
    return report
