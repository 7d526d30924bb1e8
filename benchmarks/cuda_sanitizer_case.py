"""A small CUDA case for compute-sanitizer: the fused op on edge-case tensors of every dtype.

Run under ``compute-sanitizer --tool memcheck`` / ``--tool racecheck`` by
gpu_check.sh, with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so that every tensor is
its own cudaMalloc and a read past its end is caught instead of landing in the
caching allocator's pool. It also checks the results against the reference path
and run-to-run bit equality, so a silent wrong number fails too.

Exit codes: 0 all checks passed; 1 a result differs; 3 cannot run here (no GPU,
or the fused CUDA kernel is not loaded: sanitizing the reference path is moot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import gradscope
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import gradscope

import torch

from gradscope import _ext

CHUNK_BYTES = 256 * 1024  # the CUDA kernel's chunk (csrc/grad_stats_cuda.cu, kChunkBytes)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def edge_tensors(dtype: torch.dtype, device: str, g: torch.Generator) -> list[torch.Tensor]:
    esize = torch.empty((), dtype=dtype).element_size()
    chunk = CHUNK_BYTES // esize
    sizes = [0, 1, 3, 7, 8, 9, 31, 33, 255, 257, chunk - 1, chunk, chunk + 1, 2 * chunk + 5]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype).to(device)

    out = [rnd(n) for n in sizes]
    out.append(torch.tensor(1.5, dtype=dtype, device=device))  # 0-dim
    base = rnd(chunk + 64)
    out += [base[k : k + chunk - 3] for k in (1, 2, 3, 5)]  # storage offsets not 16-byte aligned: head/tail paths
    out.append(rnd(64, 96).t())  # transposed: dense, not contiguous
    out.append(rnd(8, 16, 5, 7).to(memory_format=torch.channels_last))
    out.append(rnd(64, 96)[:, ::3])  # not dense: the op copies it
    special = rnd(4099)
    special[::7] = 0
    special[3::11] = float("nan")
    special[5::13] = float("inf")
    special[6::17] = float("-inf")
    out.append(special)
    out.append(torch.zeros(1000, dtype=dtype, device=device))
    return out


def reference(tensors: list[torch.Tensor]) -> torch.Tensor:
    # On host copies: under the sanitizer every device kernel is slow, and only the fused op is under test.
    return gradscope.grad_stats([t.cpu() for t in tensors], backend="reference").table


def compare(fused: torch.Tensor, ref: torch.Tensor, label: str) -> list[str]:
    """Mismatches, in words. Columns: sumsq, sum, sumabs, maxabs, nonfinite, zeros."""
    f, r = fused.cpu(), ref.cpu()
    errs = []
    for i in range(r.shape[0]):
        sumsq_ok = abs(f[i, 0] - r[i, 0]) <= 1e-5 * abs(r[i, 0]) + 1e-300
        sum_ok = abs(f[i, 1] - r[i, 1]) <= 1e-5 * r[i, 2] + 1e-300
        sumabs_ok = abs(f[i, 2] - r[i, 2]) <= 1e-5 * r[i, 2] + 1e-300
        exact_ok = torch.equal(f[i, 3:], r[i, 3:])
        if not (sumsq_ok and sum_ok and sumabs_ok and exact_ok):
            errs.append(f"{label} row {i}: fused {f[i].tolist()} vs reference {r[i].tolist()}")
    return errs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Edge cases of the fused op, for compute-sanitizer.")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run of this script's logic")
    device = parser.parse_args(argv).device
    if device == "cuda" and not torch.cuda.is_available():
        print("cuda_sanitizer_case: no CUDA device visible; nothing to check")
        return 3
    if not _ext.STATUS.fused_for(device):
        print(f"cuda_sanitizer_case: the fused {device} kernel is not loaded: {_ext.STATUS.reason_for(device)}")
        return 3
    g = torch.Generator().manual_seed(0)
    errors: list[str] = []
    mixed: list[torch.Tensor] = []
    for dtype in DTYPES:
        ts = edge_tensors(dtype, device, g)
        mixed += ts
        fused = torch.ops.gradscope.grad_stats(ts)
        again = torch.ops.gradscope.grad_stats(ts)
        errors += compare(fused, reference(ts), str(dtype))
        if not torch.equal(fused, again):
            errors.append(f"{dtype}: two calls on the same tensors differ bitwise")
    # All dtypes in one call; the same with only tensors of one chunk (the one-launch path of
    # small lists); and many small tensors (the staging-buffer path of long lists).
    ref_mixed = reference(mixed)
    fused_mixed = torch.ops.gradscope.grad_stats(mixed)
    errors += compare(fused_mixed, ref_mixed, "mixed")
    if device == "cuda":
        # Both forms of the small-list path for its multi-chunk tensors: a finalize launch, or one launch
        # (each tensor's last chunk block combines it). The same bits.
        from gradscope import _C_cuda

        for one in (True, False):
            previous = _C_cuda._set_one_launch(one)
            try:
                for _ in range(3):  # the one-launch form's counters must be back at zero for each call
                    if not torch.equal(torch.ops.gradscope.grad_stats(mixed), fused_mixed):
                        errors.append(f"mixed, {'one launch' if one else 'two launches'}: differs bitwise from the default")
            finally:
                _C_cuda._set_one_launch(previous)
    one_chunk = [t for t in mixed if t.numel() * t.element_size() <= CHUNK_BYTES]
    errors += compare(torch.ops.gradscope.grad_stats(one_chunk), reference(one_chunk), "one chunk each")
    many = [torch.randn(int(n), generator=g).to(device) for n in torch.randint(1, 300, (1000,), generator=g)]
    errors += compare(torch.ops.gradscope.grad_stats(many), reference(many), "1000 small")
    for label, empty in (("raw op", torch.ops.gradscope.grad_stats([])), ("API", gradscope.grad_stats([], backend="fused").table)):
        if tuple(empty.shape) != (0, 6):
            errors.append(f"empty list ({label}): shape {tuple(empty.shape)}, expected (0, 6)")
    stats = gradscope.grad_stats(mixed, backend="fused")  # the public API on the same data
    errors += compare(stats.table, ref_mixed, "public API")
    n = len(mixed) + len(one_chunk) + len(many)
    if errors:
        print(f"cuda_sanitizer_case: {len(errors)} mismatches over {n} tensors:")
        for e in errors[:20]:
            print("  " + e)
        return 1
    print(f"cuda_sanitizer_case: ok: {n} tensors of {len(DTYPES)} dtypes, results match the reference, repeat calls bitwise equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
