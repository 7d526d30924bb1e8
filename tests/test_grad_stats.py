"""grad_stats against an independent fp64 reference, on both backends.

Every case runs through the compiled op ("fused") and the PyTorch reference
path ("reference"); both must agree with NumPy in float64.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys

import pytest
import torch
from stats_reference import assert_stats_match, constant_cases, expected_stats

import gradscope
from gradscope import _ext
from gradscope.stats import unpack_numel

ITEM = 1 << 16  # the CPU kernel's work-item size (csrc/grad_stats_cpu.cpp)
BLOCK = 1024  # its fp32 block size

BACKENDS = [
    pytest.param("fused", marks=pytest.mark.skipif(not _ext.STATUS.cpu, reason=f"no compiled op: {_ext.STATUS.reason}")),
    "reference",
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=seeded(seed), dtype=torch.float64) * scale).to(dtype)


# --- shapes and sizes ----------------------------------------------------------------


def test_empty_list(backend):
    stats = gradscope.grad_stats([], backend=backend)
    assert len(stats) == 0
    assert stats.table.shape == (0, 6)
    assert stats.numel.shape == (0,)


def test_empty_and_zero_dim_tensors(backend):
    tensors = [torch.empty(0), torch.empty(3, 0, 2), torch.tensor(-2.5), torch.tensor(0.0, dtype=torch.float64)]
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert_stats_match(stats, tensors)
    assert stats.numel.tolist() == [0, 0, 1, 1]
    assert stats.maxabs[0].item() == 0.0


@pytest.mark.parametrize(
    "n", [1, 15, 16, 17, BLOCK - 1, BLOCK, BLOCK + 1, ITEM - 1, ITEM, ITEM + 1, 3 * ITEM + 17]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_sizes_around_chunk_boundaries(backend, n, dtype):
    x = randn(n, dtype=dtype, seed=n)
    x[n // 2] = 0.0
    assert_stats_match(gradscope.grad_stats([x], backend=backend), [x])


def test_packed_small_tensors_around_item_boundary(backend):
    # Small tensors share work items; sizes chosen so they straddle item ends.
    sizes = [ITEM // 2 - 1, ITEM // 2 + 2, 5, ITEM - 3, 1, ITEM, 0, 7]
    tensors = [randn(s, seed=i) for i, s in enumerate(sizes)]
    assert_stats_match(gradscope.grad_stats(tensors, backend=backend), tensors)


@pytest.mark.slow
def test_ten_thousand_tiny_tensors(backend):
    g = seeded(1)
    sizes = torch.randint(0, 40, (10_000,), generator=g).tolist()
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    tensors = [randn(s, dtype=dtypes[i % 4], seed=i) for i, s in enumerate(sizes)]
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert_stats_match(stats, tensors)


@pytest.mark.slow
def test_large_tensor_accuracy_beats_fp32_norm():
    # 2^26 + 3 elements: sum of squares within 1e-7 of float64 (torch's fp32
    # norm on the CPU is off by about 4e-3 at this size).
    x = randn(2**26 + 3, seed=7)
    stats = gradscope.grad_stats([x])
    want = expected_stats(x)
    assert abs(stats.sumsq.item() - want["sumsq"]) <= 1e-7 * want["sumsq"]
    assert abs(stats.sum.item() - want["sum"]) <= 1e-7 * want["sumabs"]
    assert abs(stats.sumabs.item() - want["sumabs"]) <= 1e-7 * want["sumabs"]
    assert stats.maxabs.item() == want["maxabs"]


def test_counts_exact_beyond_2_to_the_31():
    # 2^31 + 5 bf16 elements (4 GiB): counts must not wrap at int32, and the
    # sums are known exactly, so no float64 copy is needed.
    n = 2**31 + 5
    x = torch.zeros(n, dtype=torch.bfloat16)
    x[0] = float("nan")
    x[n - 1] = float("inf")
    x[3] = -2.0
    x[2**31 + 1] = 1.0
    stats = gradscope.grad_stats([x])
    del x
    assert stats.numel.item() == n
    assert stats.nonfinite.item() == 2
    assert stats.zeros.item() == n - 4
    assert stats.sum.item() == -1.0
    assert stats.sumsq.item() == 5.0
    assert stats.sumabs.item() == 3.0
    assert stats.maxabs.item() == 2.0


# --- layouts ---------------------------------------------------------------------------


def test_non_contiguous_and_channels_last(backend):
    base = randn(8, 6, 5, 4, seed=3)
    tensors = [
        base.to(memory_format=torch.channels_last),  # dense, permuted strides
        base.transpose(0, 3),  # dense, permuted
        base[:, ::2, 1:, :3],  # gappy view
        randn(300, 200, seed=4).t()[::3],  # gappy, strided rows
        randn(5, 1, seed=5).expand(5, 7),  # overlapping (stride 0)
        randn(4, 4, dtype=torch.bfloat16, seed=6).t(),
        torch._neg_view(randn(9, seed=7)),  # storage holds -x
    ]
    assert_stats_match(gradscope.grad_stats(tensors, backend=backend), tensors)


def test_dense_permuted_layout_matches_contiguous_bitwise():
    # A channels_last tensor is read in storage order without a copy; its
    # statistics equal those of the same values laid out contiguously.
    x = randn(4, 32, 33, 17, seed=8).to(memory_format=torch.channels_last)
    flat_in_storage_order = x.permute(0, 2, 3, 1).contiguous()
    a = gradscope.grad_stats([x]).table
    b = gradscope.grad_stats([flat_in_storage_order]).table
    assert torch.equal(a, b)


def test_sparse_coo_counts_implicit_zeros(backend):
    indices = torch.tensor([[0, 2, 2, 9], [1, 3, 3, 0]])
    values = torch.tensor([1.5, -2.0, 0.5, 0.0])  # (2, 3) appears twice: summed to -1.5
    sparse = torch.sparse_coo_tensor(indices, values, (10, 4))
    hybrid = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), randn(2, 3, seed=9), (6, 3))
    tensors = [sparse, hybrid]
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert_stats_match(stats, tensors)
    assert stats.zeros[0].item() == 40 - 2  # 37 implicit + 1 explicit zero
    assert stats.numel.tolist() == [40, 18]


def test_none_rows_are_marked_not_zero(backend):
    x = randn(10, seed=10)
    stats = gradscope.grad_stats([None, x, None], backend=backend)
    assert stats.present.tolist() == [False, True, False]
    assert stats.numel.tolist() == [0, 10, 0]
    assert_stats_match(stats, [None, x, None])
    assert math.isnan(stats.mean[0].item())  # no elements: no mean, not a mean of 0


# --- values ----------------------------------------------------------------------------


def test_nan_and_inf_are_counted_and_excluded(backend):
    x = randn(5000, seed=11)
    x[[3, 100, 4000]] = float("nan")
    x[[7, 4999]] = float("inf")
    x[[8]] = float("-inf")
    x[[9, 10]] = 0.0
    x[11] = -0.0
    all_bad = torch.tensor([float("nan"), float("inf"), float("-inf")] * 700, dtype=torch.bfloat16)
    tensors = [x, all_bad, x.half(), x.double()]
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert_stats_match(stats, tensors)
    assert stats.nonfinite.tolist()[:2] == [6, 2100]
    assert stats.maxabs[1].item() == 0.0  # no finite element


def test_all_zeros(backend):
    tensors = [torch.zeros(ITEM + 5), torch.zeros(33, dtype=torch.float16), -torch.zeros(17, dtype=torch.bfloat16)]
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert stats.zeros.tolist() == [ITEM + 5, 33, 17]
    assert stats.sumsq.tolist() == [0.0, 0.0, 0.0]
    assert stats.zero_frac.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("scale", [1e15, 3e19, 1e30])
def test_large_values_do_not_overflow(backend, scale):
    # Squares of fp32 values above ~1.8e19 overflow fp32; the kernel re-sums
    # such blocks in fp64, so the result stays finite and exact-ish.
    tensors = [randn(3000, seed=12, scale=scale), randn(2000, dtype=torch.bfloat16, seed=13, scale=scale)]
    if scale <= 1e15:
        tensors.append(randn(100, dtype=torch.float16, seed=14))
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert torch.isfinite(stats.sumsq).all()
    assert_stats_match(stats, tensors)


def test_constant_tensors_do_not_drift(backend):
    # Rounding errors that do not cancel: the fp32 partial sums must stay short.
    tensors = constant_cases("cpu")
    assert_stats_match(gradscope.grad_stats(tensors, backend=backend), tensors)


def test_mixed_dtypes_low_precision_error_bound(backend):
    # fp16/bf16 are widened exactly, so the error against float64 must be no
    # worse than twice that of plain torch fp32 arithmetic on the same values.
    for dtype in (torch.float16, torch.bfloat16):
        x = randn(200_003, dtype=dtype, seed=15)
        want = expected_stats(x)["sumsq"]
        torch_err = abs(x.float().pow(2).sum().item() - want)
        got = gradscope.grad_stats([x], backend=backend).sumsq.item()
        assert abs(got - want) <= max(2 * torch_err, 1e-7 * want)


def test_derived_fields():
    x = torch.tensor([3.0, -4.0, 0.0, float("nan"), 1.0])
    s = gradscope.grad_stats([x])
    finite = [3.0, -4.0, 0.0, 1.0]
    mean = sum(finite) / 4
    assert s.l2.item() == pytest.approx(math.sqrt(26.0))
    assert s.mean.item() == pytest.approx(mean)
    assert s.rms.item() == pytest.approx(math.sqrt(26.0 / 4))
    assert s.std.item() == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in finite) / 4))
    assert s.zero_frac.item() == pytest.approx(1 / 5)
    assert s.finite.item() == 4
    assert s.total_l2().item() == pytest.approx(math.sqrt(26.0))
    d = s.to_dict()
    assert d["nonfinite"] == [1] and d["numel"] == [5] and d["present"] == [True]


def test_results_stay_on_input_device_and_dtype():
    s = gradscope.grad_stats([torch.ones(3)])
    assert s.table.dtype == torch.float64
    assert s.nonfinite.dtype == s.zeros.dtype == s.numel.dtype == torch.int64
    assert s.present.dtype == torch.bool
    assert s.device.type == "cpu"


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, words",
    [
        (torch.ones(3, dtype=torch.int64), "item 1 has dtype torch.int64"),
        (torch.ones(3, dtype=torch.bool), "item 1 has dtype torch.bool"),
        (torch.ones(3, dtype=torch.complex64), "item 1 has dtype torch.complex64"),
        ([1.0, 2.0], "item 1 is a list"),
        ("grad", "item 1 is a str"),
        (torch.eye(3).to_sparse_csr(), "item 1 has layout torch.sparse_csr"),
    ],
)
def test_bad_items_raise_type_error_naming_the_index(backend, bad, words):
    with pytest.raises(TypeError, match=words):
        gradscope.grad_stats([torch.ones(2), bad], backend=backend)


def test_one_tensor_instead_of_a_list_is_a_type_error(backend):
    with pytest.raises(TypeError, match=r"a list of tensors, not one tensor: pass \[tensor\]"):
        gradscope.grad_stats(torch.randn(3, 4), backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        gradscope.grad_stats([torch.ones(2)], backend="fast")


def test_meta_tensors_give_shapes_without_data():
    tensors = [torch.empty(5, 3, device="meta"), torch.empty(7, device="meta", dtype=torch.bfloat16)]
    stats = gradscope.grad_stats(tensors)
    assert stats.table.device.type == "meta"
    assert stats.table.shape == (2, 6)


# --- the raw op ---------------------------------------------------------------------------

needs_op = pytest.mark.skipif(not _ext.STATUS.cpu, reason=f"no compiled op: {_ext.STATUS.reason}")


@needs_op
def test_op_rejects_bad_input_without_crashing():
    op = torch.ops.gradscope.grad_stats
    with pytest.raises(RuntimeError, match="tensor 1 has dtype Long"):
        op([torch.ones(2), torch.ones(2, dtype=torch.int64)])
    with pytest.raises(RuntimeError, match=r"tensors\[1\] has layout Sparse; the op reads dense tensors"):
        op([torch.ones(2), torch.ones(2).to_sparse()])


@needs_op
def test_op_answers_an_empty_list():
    # No tensor names a device: the dispatcher takes the op's fallback kernel.
    empty = torch.ops.gradscope.grad_stats([])
    assert empty.shape == (0, 6) and empty.dtype == torch.float64


@needs_op
def test_opcheck_cpu():
    samples = [
        [randn(10, seed=1), randn(3, 4, dtype=torch.bfloat16, seed=2)],
        [randn(2, 3, 4, 5, seed=3).to(memory_format=torch.channels_last), torch.empty(0, dtype=torch.float16)],
        [randn(ITEM + 1, dtype=torch.float64, seed=4)],
    ]
    for tensors in samples:
        torch.library.opcheck(torch.ops.gradscope.grad_stats.default, (tensors,))


@needs_op
def test_works_inside_torch_compile():
    def stats_of(xs):
        return torch.ops.gradscope.grad_stats(xs)[:, 0].sqrt()

    xs = [randn(100, seed=1), randn(7, 9, seed=2)]
    compiled = torch.compile(stats_of, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(xs), stats_of(xs))


# --- the fast entry (csrc/module.cpp) -----------------------------------------------------

needs_fast = pytest.mark.skipif(not _ext.dense_call, reason=f"no compiled op: {_ext.STATUS.reason}")


@needs_fast
def test_fast_entry_matches_the_op_bitwise():
    tensors = [randn(3 * ITEM + 5, seed=1), randn(40, 3, dtype=torch.bfloat16, seed=2).t(), torch.empty(0),
               randn(7, dtype=torch.float16, seed=3), -randn(9, dtype=torch.float64, seed=4)]
    for items in (tensors, tuple(tensors)):
        table, numel = _ext.dense_call(items, False)
        assert unpack_numel(numel) == tuple(t.numel() for t in tensors)
        assert torch.equal(table, torch.ops.gradscope.grad_stats(list(tensors)))
    stats = gradscope.grad_stats(tensors)
    assert stats.backend == "fused" and stats.present_host == (True,) * len(tensors)
    assert stats.numel_host == tuple(t.numel() for t in tensors) and stats.numel.tolist() == list(stats.numel_host)
    assert_stats_match(stats, tensors)
    moved = stats.to("cpu")
    assert isinstance(moved, gradscope.GradStats) and moved.numel_host == stats.numel_host


def test_grad_stats_fields_are_read_only():
    stats = gradscope.grad_stats([torch.ones(3), None])
    for name in ("table", "numel_host", "present_host", "backend"):
        with pytest.raises(AttributeError):
            setattr(stats, name, None)
    assert stats.numel_host == (3, 0) and stats.present_host == (True, False)
    assert stats.numel.tolist() == [3, 0] and stats.present.tolist() == [True, False]


def test_packed_counts_read_as_the_plain_ones():
    table = torch.zeros(3, 6, dtype=torch.float64)
    packed = gradscope.GradStats.from_packed(table, torch.tensor([5, 0, 2**40], dtype=torch.int64).numpy().tobytes())
    plain = gradscope.GradStats(table, (5, 0, 2**40), (True,) * 3, "fused")
    assert packed.numel.tolist() == plain.numel.tolist() == [5, 0, 2**40]  # the device copy, before the tuple
    assert packed.numel_host == plain.numel_host and packed.present_host == plain.present_host
    assert packed.backend == "fused" and packed.finite.tolist() == [5, 0, 2**40]


@needs_fast
@pytest.mark.parametrize(
    "items",
    [
        [],
        [torch.ones(2), None],
        [torch.ones(2), torch.ones(2).to_sparse()],
        [torch.ones(2), torch.ones(2, dtype=torch.int32)],
        [torch.ones(2), torch.ones(2, device="meta")],
        [torch.ones(2, device="meta")],
        [torch.ones(2), [1.0]],
        [torch.ones(2), torch.ones(2).as_subclass(type("Sub", (torch.Tensor,), {}))],
    ],
    ids=["empty", "none", "sparse", "int", "two-devices", "meta", "not-a-tensor", "subclass"],
)
def test_fast_entry_hands_unusual_lists_back(items):
    assert _ext.dense_call(items, False) is None
    assert _ext.dense_call(iter([torch.ones(2)]), False) is None  # only lists and tuples are read in C++


@needs_fast
def test_fast_entry_leaves_no_graph():
    w = torch.nn.Parameter(torch.randn(4, 3))
    with torch.enable_grad():
        stats = gradscope.grad_stats([w, w.detach() * 2])
    assert not stats.table.requires_grad and stats.table.grad_fn is None
    assert_stats_match(stats, [w.detach(), w.detach() * 2])


@needs_fast
def test_fast_entry_goes_through_the_dispatcher():
    # A dispatch mode sees the op: the fast entry does not call the kernel behind torch's back.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen() as seen:
        gradscope.grad_stats([torch.ones(3), torch.ones(2)])
    assert "gradscope.grad_stats.default" in seen.ops


# --- determinism ------------------------------------------------------------------------


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op thread count set to ``n`` inside, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@needs_op
def test_bitwise_identical_across_runs_and_thread_counts():
    tensors = [randn(3 * ITEM + 11, seed=1), randn(1000, dtype=torch.bfloat16, seed=2)] + [
        randn(50, seed=3 + i) for i in range(300)
    ]
    results = []
    for count in (1, 2, 1, 3):
        with threads(count):
            results.append(gradscope.grad_stats(tensors, backend="fused").table)
    for other in results[1:]:
        assert torch.equal(results[0], other)


@needs_op
def test_bitwise_identical_when_another_process_keeps_a_core_busy():
    # The threads take what is left of each other's items (a slowed thread holds up nobody): which thread reads
    # an item changes with the load, the result must not.
    tensors = [randn(9 * ITEM + 5, seed=4), randn(5 * ITEM, dtype=torch.bfloat16, seed=5)]
    quiet = gradscope.grad_stats(tensors, backend="fused").table
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with threads(max(torch.get_num_threads(), 2)):
            busy = [gradscope.grad_stats(tensors, backend="fused").table for _ in range(20)]
    finally:
        spinner.kill()
        spinner.wait(timeout=30)
    assert all(torch.equal(quiet, table) for table in busy)


# --- a property test ----------------------------------------------------------------------

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    special = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-30, 6e4, -3e19])
    tensor_spec = st.tuples(
        st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
        st.integers(0, 3000),  # numel
        st.integers(0, 2**31 - 1),  # seed
        st.lists(st.tuples(st.integers(0, 2999), special), max_size=5),  # special values at positions
        st.booleans(),  # None instead of a tensor
    )

    @settings(max_examples=60, deadline=None)
    @given(st.lists(tensor_spec, max_size=12), st.sampled_from(["auto", "reference"]))
    def test_property_random_tensor_lists(specs, backend):
        tensors = []
        for dtype, n, seed, specials, missing in specs:
            if missing:
                tensors.append(None)
                continue
            x = randn(n, seed=seed, dtype=torch.float64)
            for pos, value in specials:
                if pos < n:
                    x[pos] = value
            tensors.append(x.to(dtype))
        assert_stats_match(gradscope.grad_stats(tensors, backend=backend), tensors)


# --- real gradients -------------------------------------------------------------------------


def test_real_gradients_of_a_small_bert(backend):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    ids = torch.randint(0, 200, (4, 16), generator=seeded(0))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert len(grads) > 30
    stats = gradscope.grad_stats(grads, backend=backend)
    assert_stats_match(stats, grads)
    assert stats.present.all()


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e-40])
def test_tiny_gradients_keep_their_precision(backend, scale):
    # Vanishing gradients: fp32 squares of values below ~1e-19 underflow. The
    # sum of squares must still match float64, not collapse to zero.
    tensors = [randn(5000, seed=16, scale=scale), randn(300, dtype=torch.bfloat16, seed=17, scale=scale)]
    stats = gradscope.grad_stats(tensors, backend=backend)
    assert (stats.sumsq > 0).all()
    assert_stats_match(stats, tensors)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_an_expanded_view_is_read_without_materializing_it(backend):
    # 2**40 elements: materialized, 4 TiB of float32; read as the one element it repeats
    ones = torch.ones(1).expand(2**40)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 1, 5, generator=g, dtype=torch.float64)
    base[0, 0, 0], base[1, 0, 1], base[2, 0, 2] = 0.0, math.inf, math.nan
    partial = base.float().expand(3, 4, 5)  # stride 0 along one dimension among others
    stats = gradscope.grad_stats([ones, partial, torch.randn(6)], backend=backend)
    assert stats.numel.tolist() == [2**40, 60, 6]
    assert stats.sumsq[0].item() == 2**40 and stats.sum[0].item() == 2**40 and stats.maxabs[0].item() == 1
    assert stats.zeros[0].item() == 0 and stats.nonfinite[0].item() == 0
    ref = expected_stats(partial.contiguous())  # the float64 statistics of every element, repeats included
    for field in ("sumsq", "sum", "sumabs", "maxabs", "nonfinite", "zeros"):
        assert getattr(stats, field)[1].item() == pytest.approx(ref[field], rel=1e-6), field


# --- diff_sumsq: the CPU kernel behind the monitor's update ratios -------------------------------------------


def _diff_reference(a, b):
    return torch.stack([((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b)]) if a else torch.zeros(0)


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_diff_sumsq_matches_float64_for_every_dtype_and_layout():
    g = seeded(5)
    a = [torch.randn(3 * ITEM + 5, generator=g), torch.randn(40, 30, generator=g).t(),  # several items; permuted
         torch.randn(77, generator=g).half(), torch.randn(300, generator=g).bfloat16(),
         torch.randn(5, 3, generator=g).double(), torch.randn(0), torch.randn(9, generator=g)]
    b = [x + (1e-3 * torch.randn(x.shape, generator=g)).to(x.dtype) for x in a]
    b[-1] = a[-1].clone()  # no update: exactly 0
    got = torch.ops.gradscope.diff_sumsq(a, b)
    assert got.dtype == torch.float64 and got.shape == (len(a),)
    ref = _diff_reference(a, b)
    # float32 differences are taken in float32 (exact where the two are within 2x of each other): 1e-9 relative
    assert torch.allclose(got, ref, rtol=1e-9, atol=0) and got[-1] == 0 and got[-2] == 0
    assert torch.equal(torch.ops.gradscope.diff_sumsq([], []), torch.zeros(0, dtype=torch.float64))


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_diff_sumsq_is_the_same_for_any_thread_count_and_marks_non_finite():
    g = seeded(6)
    a = [torch.randn(5 * ITEM + 3, generator=g) for _ in range(3)]
    b = [x * 1.001 for x in a]
    with threads(1):
        one = torch.ops.gradscope.diff_sumsq(a, b)
    assert torch.equal(one, torch.ops.gradscope.diff_sumsq(a, b))  # bitwise
    b[1][7] = float("inf")
    assert math.isinf(torch.ops.gradscope.diff_sumsq(a, b)[1])  # the monitor turns it into NaN


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_diff_sumsq_refuses_pairs_that_do_not_match():
    with pytest.raises(RuntimeError, match="2 tensors in a but 1 in b"):
        torch.ops.gradscope.diff_sumsq([torch.ones(2), torch.ones(2)], [torch.ones(2)])
    with pytest.raises(RuntimeError, match="differs in shape or dtype"):
        torch.ops.gradscope.diff_sumsq([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(RuntimeError, match="expected float32"):
        torch.ops.gradscope.diff_sumsq([torch.ones(2, dtype=torch.int32)], [torch.ones(2, dtype=torch.int32)])


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_opcheck_diff_sumsq():
    g = seeded(7)
    a = [torch.randn(100, generator=g), torch.randn(3, 4, generator=g)]
    torch.library.opcheck(torch.ops.gradscope.diff_sumsq.default, (a, [x + 1 for x in a]))


# --- copy_sumsq: the weights the monitor's update ratios keep, with their norms ---------------------------------


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_copy_sumsq_copies_exactly_and_sums_squares_in_float64_for_every_dtype_and_layout():
    g = seeded(8)
    src = [torch.randn(3 * ITEM + 5, generator=g), torch.randn(40, 30, generator=g).t(),  # several items; permuted
           torch.randn(77, generator=g).half(), torch.randn(300, generator=g).bfloat16(),
           torch.randn(5, 3, generator=g).double(), torch.randn(0), torch.randn(9, generator=g)]
    dst = [torch.full(x.shape, 7.0, dtype=x.dtype) for x in src]
    src.append(torch.randn(ITEM + 3, generator=g)[1:-2])  # an offset view: unaligned reads
    dst.append(torch.empty(ITEM + 1)[1:])  # an offset destination: the streamed stores start after a head
    got = torch.ops.gradscope.copy_sumsq(src, dst)
    assert got.dtype == torch.float64 and got.shape == (len(src),)
    assert all(torch.equal(d, s) for s, d in zip(src, dst))  # bit for bit, whatever the dtype
    ref = torch.stack([x.double().square().sum() for x in src])
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    assert torch.equal(torch.ops.gradscope.copy_sumsq([], []), torch.zeros(0, dtype=torch.float64))


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_copy_sumsq_is_the_same_for_any_thread_count_and_marks_non_finite():
    g = seeded(9)
    src = [torch.randn(5 * ITEM + 3, generator=g) for _ in range(3)]
    dst = [torch.empty_like(x) for x in src]
    with threads(1):
        one = torch.ops.gradscope.copy_sumsq(src, dst)
    assert torch.equal(one, torch.ops.gradscope.copy_sumsq(src, dst))  # bitwise
    src[1][7] = float("inf")
    src[2][3] = float("nan")
    sums = torch.ops.gradscope.copy_sumsq(src, dst)
    assert math.isinf(sums[1]) and math.isnan(sums[2]) and math.isfinite(sums[0])  # the monitor makes both NaN
    assert math.isinf(dst[1][7]) and math.isnan(dst[2][3])


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_copy_sumsq_refuses_what_it_cannot_write():
    with pytest.raises(RuntimeError, match="2 tensors in src but 1 in dst"):
        torch.ops.gradscope.copy_sumsq([torch.ones(2), torch.ones(2)], [torch.ones(2)])
    with pytest.raises(RuntimeError, match="differs in shape or dtype"):
        torch.ops.gradscope.copy_sumsq([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(RuntimeError, match="destination of pair 0 is not contiguous"):
        torch.ops.gradscope.copy_sumsq([torch.ones(3, 2)], [torch.empty(2, 3).t()])  # a copy would take the writes
    with pytest.raises(RuntimeError, match="expected float32"):
        torch.ops.gradscope.copy_sumsq([torch.ones(2, dtype=torch.int32)], [torch.ones(2, dtype=torch.int32)])


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_opcheck_copy_sumsq():
    g = seeded(10)
    src = [torch.randn(100, generator=g), torch.randn(3, 4, generator=g)]
    torch.library.opcheck(torch.ops.gradscope.copy_sumsq.default, (src, [torch.empty_like(x) for x in src]))
