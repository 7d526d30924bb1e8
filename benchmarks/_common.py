"""What both benchmarks share: gradient lists, the methods timed, timing, run metadata.

Gradient lists are built from model *shapes* only (models are instantiated on the
meta device: no weights, no download) and filled with seeded random values: the
op reads the same bytes whether they came from a backward pass or not.

Every method is timed with ``torch.utils.benchmark.Timer`` (it synchronizes
CUDA before reading the clock) in the same process, so ratios compare runs under
the same conditions. Inputs are rotated among several copies when one copy would
fit in the last-level cache, so small cases measure memory, not cache.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent

try:  # an installed gradscope, or the checkout on PYTHONPATH
    import gradscope  # noqa: F401
except ImportError:  # run from a checkout: `python benchmarks/bench_x.py`
    sys.path.insert(0, str(REPO_ROOT))
    import gradscope  # noqa: F401

import torch
import torch.utils.benchmark as torch_benchmark

from gradscope import _ext

SCHEMA = "gradscope-bench/1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
MB = 1e6  # decimal: GB/s figures below are 1e9 bytes per second

# Method names, in table order. "gradscope" is the public API (what users call);
# "gradscope.op" the raw registered op (no Python wrapper); rooflines last.
GRADSCOPE = "gradscope"
GRADSCOPE_OP = "gradscope.op"
GRADSCOPE_REF = "gradscope.reference"
FOREACH_NORM = "foreach_norm"
TOTAL_NORM = "get_total_norm"
LOOP = "loop"
FLAT_SUM = "flat_sum"
COPY = "copy"
BASELINES = (FOREACH_NORM, TOTAL_NORM, LOOP, GRADSCOPE_REF)
ROOFLINES = (FLAT_SUM, COPY)

METHOD_HELP = {
    GRADSCOPE: "gradscope.grad_stats(grads): six statistics per tensor, public API",
    GRADSCOPE_OP: "torch.ops.gradscope.grad_stats(grads): the raw op, without the Python wrapper",
    GRADSCOPE_REF: 'gradscope.grad_stats(grads, backend="reference"): the PyTorch fallback path',
    FOREACH_NORM: "torch._foreach_norm(grads): L2 norm per tensor only",
    TOTAL_NORM: "torch.nn.utils.get_total_norm(grads): one total L2 norm",
    LOOP: "per-tensor Python loop, six statistics, .item() per tensor per statistic",
    FLAT_SUM: "flat.sum() over one tensor of the same total size and dtype: read-bandwidth roofline",
    COPY: "dst.copy_(flat), same size: copy bandwidth, GB/s counts bytes read + written",
}


# --- gradient lists --------------------------------------------------------------------


def _meta_param_shapes(build: Callable[[], torch.nn.Module]) -> list[tuple[int, ...]]:
    with torch.device("meta"):
        model = build()
    # named_parameters() skips tied duplicates, as an optimizer would see them.
    return [tuple(p.shape) for _, p in model.named_parameters()]


@functools.lru_cache(maxsize=None)
def model_shapes(name: str) -> tuple[tuple[int, ...], ...]:
    """Parameter shapes of a named model, built on the meta device (no weights, no download)."""
    if name.startswith("bert-"):
        from transformers import BertConfig, BertForMaskedLM

        configs = {
            "bert-base": BertConfig(),  # 202 tensors, 109.5M elements
            "bert-large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
            "bert-tiny": BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
        }
        config = configs[name]
        return tuple(_meta_param_shapes(lambda: BertForMaskedLM(config)))
    if name in ("resnet50", "resnet18"):
        import torchvision

        return tuple(_meta_param_shapes(lambda: getattr(torchvision.models, name)(weights=None)))
    if name == "decoder-1b":
        from transformers import LlamaConfig, LlamaForCausalLM

        # TinyLlama-1.1B's shape: 22 layers, hidden 2048, MLP 5632, GQA with 4 KV heads.
        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        )
        return tuple(_meta_param_shapes(lambda: LlamaForCausalLM(config)))
    raise ValueError(f"unknown model {name!r}")


MODEL_LABELS = {
    "bert-base": "BERT-base (BertForMaskedLM, BertConfig())",
    "bert-large": "BERT-large (BertForMaskedLM, 24 layers, hidden 1024)",
    "bert-tiny": "BERT-tiny (BertForMaskedLM, 2 layers, hidden 128): a small model",
    "resnet50": "ResNet-50 (torchvision, weights=None)",
    "resnet18": "ResNet-18 (torchvision, weights=None)",
    "decoder-1b": "1.1B decoder (LlamaForCausalLM, TinyLlama-1.1B shapes)",
}


def tiny_shapes(count: int, seed: int = 0, max_numel: int = 1000) -> tuple[tuple[int, ...], ...]:
    """``count`` 1-D shapes of 1..max_numel elements (seeded): per-tensor overhead dominates."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_numel + 1, (count,), generator=g).tolist()
    return tuple((n,) for n in sizes)


def equal_shapes(count: int, total_bytes: int, element_size: int) -> tuple[tuple[int, ...], ...]:
    """``count`` 1-D shapes of equal size whose total is ``total_bytes`` (rounded down to whole elements)."""
    per = max(1, total_bytes // (count * element_size))
    return tuple((per,) for _ in range(count))


def numel_of(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


POOL_NUMEL = 1 << 22


@functools.lru_cache(maxsize=8)
def _random_pool(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(12345)
    return torch.empty(POOL_NUMEL, dtype=dtype, device=device).normal_(0.0, 1e-3, generator=g)


def alloc_grads(shapes, dtype: torch.dtype, device: torch.device, seed: int) -> list[torch.Tensor]:
    """One separate allocation per shape (aligned like real gradients), seeded N(0, 1e-3) values.

    Values are copied from a seeded random pool at seed-dependent offsets (a copy is
    ten times faster than drawing gigabytes of normals); never zeros, which can run
    faster than real data.
    """
    pool = _random_pool(dtype, device)
    rng = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        t = torch.empty(s, dtype=dtype, device=device)
        flat = t.view(-1)
        n = flat.numel()
        start = 0
        while start < n:
            m = min(n - start, POOL_NUMEL // 2)
            off = int(torch.randint(0, POOL_NUMEL - m + 1, (1,), generator=rng))
            flat[start : start + m].copy_(pool[off : off + m])
            start += m
        out.append(t)
    return out


# --- the methods -----------------------------------------------------------------------


def loop_six_stats(grads: list[torch.Tensor]) -> list[tuple]:
    """The six statistics the way per-parameter tools compute them: one ``.item()`` each.

    (Cockpit's GradNorm and most training loggers do this; it is the cost gradscope removes.)
    """
    out = []
    for g in grads:
        a = g.abs()
        out.append(
            (
                g.square().sum().item(),
                g.sum().item(),
                a.sum().item(),
                a.max().item(),
                (~g.isfinite()).sum().item(),
                (g == 0).sum().item(),
            )
        )
    return out


def total_norm_fn() -> tuple[Callable, str]:
    """``torch.nn.utils.get_total_norm`` where it exists (torch >= 2.6), else its foreach equivalent."""
    fn = getattr(torch.nn.utils, "get_total_norm", None)
    if fn is not None:
        return fn, "torch.nn.utils.get_total_norm"

    def fallback(grads):
        return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))

    return fallback, "fallback: vector_norm(stack(_foreach_norm)) (this torch has no get_total_norm)"


def fused_available(device: torch.device) -> bool:
    return _ext.STATUS.fused_for(device.type)


def grad_methods(device: torch.device, reference: bool) -> dict[str, Callable[[list], object]]:
    """Methods that take the gradient list, in table order."""
    total_norm, _ = total_norm_fn()
    methods: dict[str, Callable] = {GRADSCOPE: lambda g: gradscope.grad_stats(g)}
    if fused_available(device):
        methods[GRADSCOPE_OP] = lambda g: torch.ops.gradscope.grad_stats(g)
    if reference:
        methods[GRADSCOPE_REF] = lambda g: gradscope.grad_stats(g, backend="reference")
    methods[FOREACH_NORM] = torch._foreach_norm
    methods[TOTAL_NORM] = total_norm
    methods[LOOP] = loop_six_stats
    return methods


# --- cases and timing --------------------------------------------------------------------


def cache_bytes(device: torch.device) -> int:
    """Last-level cache size: the GPU's L2, or the largest CPU cache sysfs reports (32 MiB if unknown)."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20))
    best = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = size_file.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            pass
    return best or 32 << 20


def default_rotate_bytes(device: torch.device) -> int:
    """How many bytes the rotated copies of a case should span to defeat the cache.

    4x the GPU's L2; 2x the CPU's last-level cache, capped at 1 GiB (this VM reports
    a 480 MiB L3 shared with its host; more copies would cost minutes of filling).
    """
    if device.type == "cuda":
        return 4 * cache_bytes(device)
    return min(2 * cache_bytes(device), 1 << 30)


@dataclass
class Case:
    """One gradient list, with rotated copies and the roofline buffers of the same size."""

    name: str
    label: str
    dtype_name: str
    device: torch.device
    shapes: tuple
    seed: int = 0
    rotate_bytes: int = 0
    max_sets: int = 1024
    max_tensors: int = 200_000  # over all copies: tensor objects cost host memory and set-up time
    grad_sets: list = field(default_factory=list)
    flat_sets: list = field(default_factory=list)
    copy_dst: Optional[torch.Tensor] = None

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def numel(self) -> int:
        return numel_of(self.shapes)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def n_sets(self) -> int:
        if self.rotate_bytes <= 0 or self.nbytes == 0:
            return 1
        cap = min(self.max_sets, self.max_tensors // max(1, len(self.shapes)))
        return max(1, min(cap, math.ceil(self.rotate_bytes / self.nbytes)))

    def allocate(self) -> "Case":
        for k in range(self.n_sets):
            self.grad_sets.append(alloc_grads(self.shapes, self.dtype, self.device, self.seed + 1000 * k))
            self.flat_sets.append(alloc_grads([(self.numel,)], self.dtype, self.device, self.seed + 1000 * k + 1)[0])
        self.copy_dst = torch.empty(self.numel, dtype=self.dtype, device=self.device)
        return self

    def release(self) -> None:
        self.grad_sets.clear()
        self.flat_sets.clear()
        self.copy_dst = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "dtype": self.dtype_name,
            "device": str(self.device),
            "n_tensors": len(self.shapes),
            "numel": self.numel,
            "bytes": self.nbytes,
            "rotated_copies": self.n_sets,
        }

    def runners(self, methods: dict[str, Callable]) -> dict[str, Callable[[], object]]:
        """A no-argument callable per method, each call on the next rotated copy."""
        out = {}
        for name, fn in methods.items():
            sets = itertools.cycle(self.grad_sets)
            out[name] = (lambda fn=fn, sets=sets: fn(next(sets)))
        flats = itertools.cycle(self.flat_sets)
        out[FLAT_SUM] = lambda: next(flats).sum()
        srcs = itertools.cycle(self.flat_sets)
        dst = self.copy_dst
        out[COPY] = lambda: dst.copy_(next(srcs))
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    runner: Callable[[], object],
    *,
    device: torch.device,
    threads: int,
    min_run_time: float,
    max_call_s: float,
    nbytes: int,
    bytes_factor: int = 1,
) -> dict:
    """Median time of ``runner`` with ``torch.utils.benchmark.Timer.blocked_autorange``.

    A first call is the warm-up and the probe: if it takes longer than ``max_call_s``
    that single time is reported (``runs: 1``) instead of a median, and said so.
    """
    torch.set_num_threads(threads)
    _sync(device)
    t0 = time.perf_counter()
    runner()
    _sync(device)
    first_s = time.perf_counter() - t0
    if first_s > max_call_s:
        median_s, iqr_s, runs, blocks = first_s, float("nan"), 1, 1
        note = f"single call: one call took {first_s:.2f} s > --max-call-s {max_call_s:g}"
    else:
        timer = torch_benchmark.Timer(stmt="runner()", globals={"runner": runner}, num_threads=threads)
        m = timer.blocked_autorange(min_run_time=min_run_time)
        median_s, runs, blocks = m.median, len(m.times) * m.number_per_run, len(m.times)
        iqr_s = m.iqr if blocks >= 4 else float("nan")  # an IQR of fewer blocks says nothing
        note = ""
    result = {
        "median_ms": median_s * 1e3,
        "iqr_ms": iqr_s * 1e3,
        "runs": runs,
        "blocks": blocks,
        "gbps": bytes_factor * nbytes / median_s / 1e9 if median_s > 0 else float("nan"),
    }
    if note:
        result["note"] = note
    return result


class CostGuard:
    """Skips a method at a size where its predicted time per call is over budget.

    The prediction scales the method's last measured time linearly with the swept
    quantity (bytes or tensor count), which no method beats by much.
    """

    def __init__(self, budget_s: float, capped: tuple[str, ...], option: str = "--loop-budget-s"):
        self.budget_s = budget_s
        self.capped = capped
        self.option = option
        self.last: dict[tuple, tuple[float, float]] = {}

    def skip_reason(self, method: str, key: tuple, x: float) -> str:
        if method not in self.capped or (method, key) not in self.last:
            return ""
        x_last, t_last = self.last[(method, key)]
        predicted = t_last * max(1.0, x / x_last)
        if predicted > self.budget_s:
            return f"predicted {predicted:.3g} s per call > budget {self.budget_s:g} s ({self.option})"
        return ""

    def record(self, method: str, key: tuple, x: float, seconds: float) -> None:
        self.last[(method, key)] = (x, seconds)


def measure_methods(case: Case, methods: dict[str, Callable], opts, guard: Optional[CostGuard] = None, x: float = 0.0) -> dict:
    """Times every method (and both rooflines) on one allocated case; errors are recorded, not raised."""
    results = {}
    key = (case.dtype_name,)
    for name, runner in case.runners(methods).items():
        reason = guard.skip_reason(name, key, x) if guard else ""
        if reason:
            results[name] = {"skipped": reason}
            continue
        try:
            r = time_call(
                runner,
                device=case.device,
                threads=opts.threads,
                min_run_time=opts.min_run_time,
                max_call_s=opts.max_call_s,
                nbytes=case.nbytes,
                bytes_factor=2 if name == COPY else 1,
            )
        except Exception as exc:  # a baseline that cannot run here is a finding, not a crash
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
            continue
        results[name] = r
        if guard:
            guard.record(name, key, x, r["median_ms"] / 1e3)
    return results


def ratios(results: dict) -> dict:
    """Speed-ups of gradscope (API and op) over each baseline; its share of the roofline bandwidths."""
    out = {}
    for gs in (GRADSCOPE, GRADSCOPE_OP):
        r = results.get(gs, {})
        if "median_ms" not in r:
            continue
        entry = {}
        for b in BASELINES:
            rb = results.get(b, {})
            if "median_ms" in rb and b != gs:
                entry[f"speedup_vs_{b}"] = rb["median_ms"] / r["median_ms"]
        for roof in ROOFLINES:
            rr = results.get(roof, {})
            if "gbps" in rr:
                entry[f"pct_of_{roof}_bw"] = 100.0 * r["gbps"] / rr["gbps"]
        out[gs] = entry
    return out


# --- run metadata and output ----------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_metadata(device: torch.device, args) -> dict:
    """Machine, versions, date and the exact command: what RESULTS.md quotes next to a figure."""
    status = _ext.STATUS
    meta = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gradscope": getattr(gradscope, "__version__", "?"),
        "git_commit": _git("rev-parse", "--verify", "-q", "HEAD") or "none (no commit yet)",
        "git_dirty": bool(_git("status", "--porcelain")),
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cache_bytes": cache_bytes(device),
        "extension": {
            "state": status.state,
            "fused_cpu": status.fused_for("cpu"),
            "fused_cuda": status.fused_for("cuda"),
            "reason_cpu": status.reason_for("cpu"),
            "reason_cuda": status.reason_for("cuda"),
            "build_info": status.build_info,
        },
        "total_norm_impl": total_norm_fn()[1],
        "methods": METHOD_HELP,
    }
    if status.cpu:
        try:
            meta["extension"]["cpu_simd"] = _ext.cpu_simd()
        except (AttributeError, RuntimeError):
            pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
        }
    return meta


def write_json(path: Optional[str], payload: dict) -> None:
    """Writes atomically: a run killed mid-way leaves the last complete file."""
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=1, default=_json_default, allow_nan=False) + "\n")
    tmp.replace(p)


def _finite(obj):
    """Strict JSON: NaN and infinities (an IQR of one block, an unbounded crossover) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj):
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def add_common_args(parser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small cases and short timings: a smoke run")
    parser.add_argument("--out", metavar="FILE", help="write the figures as JSON here (rewritten after each case)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per method (blocked_autorange)")
    parser.add_argument("--max-call-s", type=float, default=20.0, help="a method whose first call exceeds this is timed once")
    parser.add_argument(
        "--rotate-mb",
        type=float,
        default=None,
        help="rotate among copies of each input spanning at least this many MB (default: 4x GPU L2, or 2x CPU LLC capped at 1 GiB); 0 disables",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="stop starting new cases after this many seconds (the JSON says what was left out)",
    )


class Deadline:
    """Whether a run's --time-budget-s is spent; what was left out is recorded, not silently dropped."""

    def __init__(self, budget_s: Optional[float]):
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.left_out: list[str] = []

    def expired(self, what: str) -> bool:
        if self.budget_s is not None and time.perf_counter() - self.start > self.budget_s:
            self.left_out.append(what)
            return True
        return False


def start_run(args) -> tuple[torch.device, int, dict]:
    """What every benchmark starts with: its device, torch threads, the rotation size, the run's metadata."""
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    return device, rotate_bytes_from(args, device), run_metadata(device, args)


def rotate_bytes_from(args, device: torch.device) -> int:
    if args.rotate_mb is None:
        # A smoke run only needs the rotation to run, not to defeat the cache.
        return int(16 * MB) if args.quick else default_rotate_bytes(device)
    return int(args.rotate_mb * MB)


def fmt_ms(ms: float) -> str:
    if ms != ms:  # NaN
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 1:
        return f"{ms:.2f}"
    if ms >= 0.01:
        return f"{ms:.3f}"
    return f"{ms * 1e3:.1f}us"


def method_rows(results: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(method, ms, IQR ms, runs, GB/s, gradscope speed-up over it) rows for printing."""
    gs = results.get(GRADSCOPE, {}).get("median_ms")
    rows = []
    for name, r in results.items():
        if "median_ms" not in r:
            rows.append((name, r.get("skipped") or r.get("error", "?"), "", "", "", ""))
            continue
        speedup = f"{r['median_ms'] / gs:.2f}x" if gs and name not in ROOFLINES else ""
        gbps = f"{r['gbps']:.1f}" + ("*" if name == COPY else "")
        rows.append((name, fmt_ms(r["median_ms"]), fmt_ms(r["iqr_ms"]), str(r["runs"]), gbps, speedup))
    return rows


def print_table(title: str, results: dict, out=sys.stdout) -> None:
    header = ("method", "ms", "IQR ms", "runs", "GB/s", "gradscope speed-up")
    rows = method_rows(results)
    widths = [max([len(header[i])] + [len(r[i]) for r in rows if r[2] or i == 0]) for i in range(6)]
    print(title, file=out)
    print("  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))), file=out)
    for r in rows:
        if not r[2] and r[1] and not r[1][0].isdigit():  # skipped / error: one free-text cell
            print(f"  {r[0].ljust(widths[0])}  {r[1]}", file=out)
        else:
            print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))), file=out)
    out.flush()
