"""The CUDA kernel: against the fp64 reference, opcheck, determinism, no host sync.

The kernel has two paths: lists of up to SMALL_LIST tensors pass their
descriptors as a kernel argument (one launch when every tensor fits one chunk;
multi-chunk tensors are combined by a finalize launch, or, in the one-launch
form, by their last chunk block, counted in a per-stream workspace), longer
lists go through a staging buffer. Each path is checked against the reference,
and against the others bitwise; tests of multi-chunk small lists run in both
forms (``_C_cuda._set_one_launch``).

Skipped, with the reason, where no GPU is visible or the CUDA kernel is not built.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from stats_reference import assert_stats_match, constant_cases

import gradscope

CHUNK_BYTES = 256 * 1024  # csrc/grad_stats_cuda.cu: kChunkBytes
SMALL_LIST = 224  # csrc/grad_stats_cuda.cu: kArgTensors


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


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of float64 tables (torch.equal takes -0.0 for +0.0 and NaN for unequal to itself)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int64), b.view(torch.int64))


def test_cuda_matches_reference(fused_cuda):
    tensors = cases(fused_cuda)
    stats = gradscope.grad_stats(tensors, backend="fused")
    assert stats.device == fused_cuda
    assert_stats_match(stats, tensors)


def test_cuda_constant_tensors_do_not_drift(fused_cuda):
    # Every thread rounds the same way on a constant tensor: long fp32 runs would drift past 1e-6.
    tensors = constant_cases(fused_cuda)
    assert_stats_match(gradscope.grad_stats(tensors, backend="fused"), tensors)


def test_cuda_unaligned_views_sum_head_tail_and_vectors_alike_on_both_paths(fused_cuda):
    # Views that start inside a 16-byte word: a scalar head, then vectors, then a scalar tail, or only a head
    # (shorter than the distance to the next word). Every element counts once, on either path, bitwise alike.
    g = torch.Generator().manual_seed(5)
    tensors = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        per_vec = 16 // torch.tensor([], dtype=dtype).element_size()
        per_chunk = CHUNK_BYTES // torch.tensor([], dtype=dtype).element_size()
        base = torch.randn(2 * per_chunk + 64, generator=g).to(dtype).to(fused_cuda)
        for start in range(per_vec):
            tensors += [base[start:start + n] for n in (1, per_vec - 1, per_vec + 1, 5 * per_vec + 3, per_chunk + 7)]
    assert len(tensors) <= SMALL_LIST
    assert_stats_match(gradscope.grad_stats(tensors, backend="fused"), tensors)
    op = torch.ops.gradscope.grad_stats
    pad = [torch.empty(0, device=fused_cuda)] * (SMALL_LIST + 1)  # forces the staging-buffer path
    assert same_bits(op(tensors + pad)[: len(tensors)], op(tensors))


def one_chunk_cases(device, n=SMALL_LIST):
    """n tensors of every dtype, each within one chunk, a few empty."""
    g = torch.Generator().manual_seed(2)
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    out = []
    for i in range(n):
        dtype = dtypes[i % 4]
        size = 0 if i % 37 == 5 else int(torch.randint(1, CHUNK_BYTES // torch.tensor([], dtype=dtype).element_size() + 1, (1,), generator=g))
        out.append((torch.randn(size, generator=g) * 10.0 ** (i % 7 - 3)).to(dtype).to(device))
    if n > 3:
        out[3][0] = float("nan")  # float64, never empty
    return out


@pytest.mark.parametrize("n", [1, 2, SMALL_LIST - 1, SMALL_LIST, SMALL_LIST + 1])
def test_cuda_one_chunk_lists_at_the_small_list_edge(fused_cuda, n):
    tensors = one_chunk_cases(fused_cuda, n)
    assert_stats_match(gradscope.grad_stats(tensors, backend="fused"), tensors)


def test_cuda_paths_agree_bitwise(fused_cuda):
    small = one_chunk_cases(fused_cuda, 100)  # one launch, rows written directly
    multi = cases(fused_cuda)  # small list with multi-chunk tensors
    assert len(multi) <= SMALL_LIST
    pad = [torch.empty(0, device=fused_cuda)] * (SMALL_LIST + 1)  # forces the staging-buffer path
    op = torch.ops.gradscope.grad_stats
    direct = op(small)
    mixed = op(small + multi)
    assert same_bits(mixed[: len(small)], direct)  # rows keep their place beside multi-chunk tensors
    assert same_bits(op(small + pad)[: len(small)], direct)
    staged = op(multi + pad)[: len(multi)]
    assert same_bits(staged, op(multi))
    assert same_bits(mixed[len(small):], staged)


@contextlib.contextmanager
def small_list_launches(one: bool):
    """Multi-chunk tensors of small lists combined in their last chunk block (one launch) or by a second launch."""
    from gradscope import _C_cuda

    previous = _C_cuda._set_one_launch(one)
    try:
        yield
    finally:
        _C_cuda._set_one_launch(previous)


@pytest.fixture(params=[True, False], ids=["one-launch", "two-launch"])
def launches(request, fused_cuda):
    with small_list_launches(request.param):
        yield request.param


def multi_chunk_cases(device):
    """A small list mixing one-chunk and multi-chunk tensors of every dtype, with NaN, Inf and constants."""
    out = cases(device) + constant_cases(device)
    assert len(out) <= SMALL_LIST and any(t.numel() * t.element_size() > CHUNK_BYTES for t in out)
    return out


def test_cuda_one_launch_and_two_launches_agree_bitwise(fused_cuda):
    # A tensor of 300 chunks as well: its last block combines more than 4 rows per lane.
    long = torch.randn(300 * CHUNK_BYTES // 4 + 17, generator=torch.Generator().manual_seed(3)).to(fused_cuda)
    tensors = multi_chunk_cases(fused_cuda) + [long, long[5:].bfloat16()]
    op = torch.ops.gradscope.grad_stats
    with small_list_launches(True):
        one = op(tensors)
    with small_list_launches(False):
        two = op(tensors)
    staged = op(tensors + [torch.empty(0, device=fused_cuda)] * SMALL_LIST)[: len(tensors)]
    assert same_bits(one, two) and same_bits(one, staged)
    assert_stats_match(gradscope.GradStats(one, tuple(t.numel() for t in tensors), (True,) * len(tensors), "fused"), tensors)


@pytest.mark.parametrize("one", [True, False], ids=["one-launch", "two-launch"])
def test_cuda_small_list_launch_count(fused_cuda, one):
    # The switch really changes the path: a finalize kernel runs only in the two-launch form.
    from torch.profiler import ProfilerActivity, profile

    tensors = multi_chunk_cases(fused_cuda)
    with small_list_launches(one):
        torch.ops.gradscope.grad_stats(tensors)  # warm up (the workspace)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.ops.gradscope.grad_stats(tensors)
            torch.cuda.synchronize()
    names = [e.name for e in prof.events() if "gradscope" in e.name or "_kernel" in e.name]
    assert sum("small_list_kernel" in n for n in names) == 1, names
    assert sum("small_finalize_kernel" in n for n in names) == (0 if one else 1), names


def test_cuda_small_list_counters_are_reset_for_the_next_call(fused_cuda, launches):
    # Two lists of the same shapes, other values, in turn: the output block is reused from the caching
    # allocator, so a row that a stale counter left unwritten would hold the other list's values. The
    # expected rows come from the two-launch form, which has no counters.
    a = multi_chunk_cases(fused_cuda)
    b = [t * -3 for t in a]
    op = torch.ops.gradscope.grad_stats
    with small_list_launches(False):
        want_a, want_b = op(a), op(b)
    assert not same_bits(want_a, want_b)
    for _ in range(50):
        assert same_bits(op(a), want_a)
        assert same_bits(op(b), want_b)
    assert_stats_match(gradscope.grad_stats(a), a)
    assert_stats_match(gradscope.grad_stats(b), b)


def test_cuda_small_list_workspace_grows_for_longer_lists(fused_cuda, launches):
    g = torch.Generator().manual_seed(8)
    small = [torch.randn(CHUNK_BYTES // 4 + 3, generator=g).to(fused_cuda)]  # 2 chunks
    big = [torch.randn(5 * CHUNK_BYTES // 4 - 1, generator=g).to(fused_cuda) for _ in range(SMALL_LIST)]  # 1,120
    op = torch.ops.gradscope.grad_stats
    with small_list_launches(False):
        want = [op(t) for t in (small, big, small, big[:7])]
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # keep the device busy: the calls below are all queued before any runs
    got = [op(t) for t in (small, big, small, big[:7])]  # grows while the first call is still queued
    torch.cuda.synchronize()
    assert all(same_bits(x, y) for x, y in zip(got, want))
    for tensors, table in zip((small, big), got):
        assert_stats_match(gradscope.GradStats(table, tuple(t.numel() for t in tensors), (True,) * len(tensors), "fused"), tensors)


def test_cuda_small_lists_on_concurrent_streams(fused_cuda, launches):
    # Each stream has its own workspace: calls in flight on several streams at once must not share counters.
    # A sleep queued first on every stream holds them back, so their calls become ready together and overlap.
    g = torch.Generator().manual_seed(9)
    lists = [[torch.randn(3 * CHUNK_BYTES // 4 + k, generator=g).to(fused_cuda) * (k + 1) for k in range(6 + 2 * i)]
             for i in range(4)]
    op = torch.ops.gradscope.grad_stats
    with small_list_launches(False):
        want = [op(t) for t in lists]
    streams = [torch.cuda.Stream() for _ in lists]
    torch.cuda.synchronize()
    results = [[] for _ in lists]
    for _ in range(20):
        for stream in streams:
            with torch.cuda.stream(stream):
                torch.cuda._sleep(200_000)
        for k, (stream, tensors) in enumerate(zip(streams, lists)):
            with torch.cuda.stream(stream):
                results[k].append(op(tensors))
    torch.cuda.synchronize()
    for k, got in enumerate(results):
        assert all(same_bits(r, want[k]) for r in got), f"stream {k}"


@pytest.mark.parametrize("own_streams", [False, True], ids=["one-stream", "a-stream-each"])
def test_cuda_small_lists_from_threads(fused_cuda, launches, own_streams):
    a = multi_chunk_cases(fused_cuda)
    b = [t * 0.5 for t in a[: len(a) // 2]]
    op = torch.ops.gradscope.grad_stats
    with small_list_launches(False):
        want = {id(a): op(a), id(b): op(b)}
    torch.cuda.synchronize()
    bad: list[str] = []

    def work(tensors):
        stream = torch.cuda.Stream() if own_streams else torch.cuda.current_stream()
        with torch.cuda.stream(stream):
            got = [op(tensors) for _ in range(40)]
            stream.synchronize()
        bad.extend("mismatch" for r in got if not same_bits(r, want[id(tensors)]))

    threads = [threading.Thread(target=work, args=(t,)) for t in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_cuda_fast_entry_matches_the_op(fused_cuda):
    from gradscope import _ext

    tensors = cases(fused_cuda)
    from gradscope.stats import unpack_numel

    table, numel = _ext.dense_call(tensors, True)
    assert unpack_numel(numel) == tuple(t.numel() for t in tensors)
    assert same_bits(table, torch.ops.gradscope.grad_stats(tensors))
    assert _ext.dense_call(tensors, False) is None  # CUDA kernel not loaded: the Python path decides


def test_cuda_graph_capture_replays_with_new_values(fused_cuda, launches):
    # Captured, a long list takes the small-list path in batches (no staging buffer to go stale).
    g = torch.Generator().manual_seed(5)
    sizes = torch.randint(0, 3000, (2 * SMALL_LIST + 7,), generator=g).tolist() + [3 * CHUNK_BYTES // 4 + 5]
    for i in (3, SMALL_LIST + 5):  # a multi-chunk tensor in every batch of SMALL_LIST
        sizes[i] = CHUNK_BYTES // 2 + 9
    tensors = [torch.randn(n, generator=g).to(fused_cuda) for n in sizes]
    op = torch.ops.gradscope.grad_stats
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        op(tensors)  # warm up off the capture
        gradscope.grad_stats(tensors).numel
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = op(tensors)
        captured_numel = gradscope.grad_stats(tensors).numel  # a host-to-device copy, captured
    for t in tensors:
        t.mul_(-2.0)  # new values in place: the replay must read them
    torch.cuda.synchronize()
    for _ in range(3):  # reuse freed pinned host memory: the captured copy must not read it
        gradscope.grad_stats([torch.full((7,), 1.0, device=fused_cuda)] * len(sizes)).numel.sum().item()
    captured_numel.zero_()
    for _ in range(3):  # every replay reads the tensors' values of the moment
        captured.zero_()
        graph.replay()
        torch.cuda.synchronize()
        stats = gradscope.GradStats(captured.clone(), tuple(sizes), (True,) * len(sizes), "fused")
        assert_stats_match(stats, tensors)
        assert same_bits(captured, op(tensors))  # the staging-buffer path, bitwise alike
        for t in tensors:
            t.mul_(0.5)
    assert captured_numel.tolist() == sizes


def test_cuda_many_tiny_tensors_one_call(fused_cuda):
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(int(n), generator=g).to(fused_cuda) for n in torch.randint(0, 50, (20_000,), generator=g)]
    assert_stats_match(gradscope.grad_stats(tensors, backend="fused"), tensors)


def test_cuda_opcheck(fused_cuda):
    tensors = [t for t in cases(fused_cuda)[:12]]
    torch.library.opcheck(torch.ops.gradscope.grad_stats.default, (tensors,))


def test_cuda_bitwise_identical_over_100_calls(fused_cuda, launches):
    tensors = cases(fused_cuda)
    first = gradscope.grad_stats(tensors).table
    for _ in range(100):
        assert same_bits(gradscope.grad_stats(tensors).table, first)


@pytest.mark.parametrize("padding", [0, SMALL_LIST], ids=["small-list", "staging-buffer"])
def test_cuda_no_host_sync(fused_cuda, launches, padding):
    tensors = cases(fused_cuda) + [torch.ones(3, device=fused_cuda)] * padding
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
