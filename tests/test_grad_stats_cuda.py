"""The CUDA kernel: against the fp64 reference, opcheck, determinism, no host sync.

Skipped, with the reason, where no GPU is visible or the CUDA kernel is not built.
"""

from __future__ import annotations

import pytest
import torch
from stats_reference import assert_stats_match

import gradscope

CHUNK_BYTES = 256 * 1024  # csrc/grad_stats_cuda.cu


def cases(device):
    g = torch.Generator().manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        per_chunk = CHUNK_BYTES // torch.tensor([], dtype=dtype).element_size()
        for n in (0, 1, 7, 8, 9, 4096, per_chunk - 1, per_chunk, per_chunk + 1, 3 * per_chunk + 5):
            out.append(torch.randn(n, generator=g).to(dtype).to(device))
    x = torch.randn(10_001, generator=g).to(device)
    x[::97] = float("nan")
    x[5::101] = float("inf")
    x[7::103] = 0.0
    out += [x, x[1:], x[3:].bfloat16(), torch.randn(8, 6, 5, 4, generator=g).to(device, memory_format=torch.channels_last)]
    out += [torch.randn(300, 200, generator=g).to(device).t()[::3], torch.tensor(3.0, device=device)]
    out += [torch.randn(3000, generator=g).to(device) * s for s in (1e-25, 1e25)]
    return out


def test_cuda_matches_reference(fused_cuda):
    tensors = cases(fused_cuda)
    stats = gradscope.grad_stats(tensors, backend="fused")
    assert stats.device == fused_cuda
    assert_stats_match(stats, tensors)


def test_cuda_many_tiny_tensors_one_call(fused_cuda):
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(int(n), generator=g).to(fused_cuda) for n in torch.randint(0, 50, (20_000,), generator=g)]
    assert_stats_match(gradscope.grad_stats(tensors, backend="fused"), tensors)


def test_cuda_opcheck(fused_cuda):
    tensors = [t for t in cases(fused_cuda)[:12]]
    torch.library.opcheck(torch.ops.gradscope.grad_stats.default, (tensors,))


def test_cuda_bitwise_identical_over_100_calls(fused_cuda):
    tensors = cases(fused_cuda)
    first = gradscope.grad_stats(tensors).table
    for _ in range(100):
        assert torch.equal(gradscope.grad_stats(tensors).table, first)


def test_cuda_no_host_sync(fused_cuda):
    tensors = cases(fused_cuda)
    gradscope.grad_stats(tensors)  # warm up allocators
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = gradscope.grad_stats(tensors)
        _ = stats.l2, stats.zero_frac
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_mixed_devices_keep_input_order(fused_cuda):
    a, b, c = torch.randn(100), torch.randn(50).to(fused_cuda), torch.randn(30, dtype=torch.float64)
    tensors = [a, b, None, c]
    stats = gradscope.grad_stats(tensors)
    assert stats.device == a.device
    assert_stats_match(stats, tensors)
