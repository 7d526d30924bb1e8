"""gradscope end to end on a CUDA GPU: analyze and the training monitor give the CPU's figures.

Skipped, with the reason, where no GPU is visible or the CUDA kernel is not built.
"""

from __future__ import annotations

import math

import helpers_models as hm
import pytest
import torch

import gradscope
from gradscope import GradientMonitor

pytest.importorskip("transformers", reason="transformers is optional; install torch-gradscope[hf] to test the loaders")


def test_analyze_on_cuda_matches_the_cpu(fused_cuda, tmp_path):
    path = hm.save_tiny_bert(tmp_path)
    common = dict(batch_size=2, seq_len=16, what_ifs=("sigmoid",))
    gpu = gradscope.analyze(str(path), gradscope.AnalyzeConfig(device=str(fused_cuda), **common))
    cpu = gradscope.analyze(str(path), gradscope.AnalyzeConfig(device="cpu", **common))
    assert gpu.meta["device"].startswith(fused_cuda.type) and gpu.meta["backend"] == "fused"
    assert gpu.variant_names == cpu.variant_names
    for variant in gpu.variant_names:
        want = {p["name"]: p for p in cpu.params if p["variant"] == variant}
        got = [p for p in gpu.params if p["variant"] == variant]
        assert [p["name"] for p in got] == list(want)
        for p in got:
            # Same weights, batch and seed; only the device's float rounding differs.
            assert p["grad_l2"] == pytest.approx(want[p["name"]]["grad_l2"], rel=1e-3, abs=1e-12), (variant, p["name"])
            assert p["grad_nonfinite"] == want[p["name"]]["grad_nonfinite"]


def test_monitor_on_cuda_matches_clip_grad_norm(fused_cuda):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 4)).to(fused_cuda)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    norms = []
    with GradientMonitor(net, flush_every=3) as monitor:
        for step in range(7):
            opt.zero_grad()
            net(torch.randn(16, 32, device=fused_cuda)).square().mean().backward()
            monitor.step()
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item())
            opt.step()
        history = monitor.history
    assert history.steps.tolist() == list(range(1, 8))
    for got, want in zip(history.global_l2().tolist(), norms):
        assert math.isclose(got, want, rel_tol=1e-5)
