"""Loading the compiled op, the fallback and its one-line warning, `gradscope info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import gradscope
from gradscope import _ext


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


@pytest.mark.slow
def test_import_is_light_and_initializes_no_cuda():
    code = (
        "import sys, json, torch, gradscope\n"
        "heavy = [m for m in ('transformers', 'torchvision', 'matplotlib') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'cuda_initialized': torch.cuda.is_initialized()}))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"heavy": [], "cuda_initialized": False}


@pytest.mark.slow
@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_loaded_extension_imports_silently():
    result = run_python("import gradscope")
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.slow
def test_disabled_extension_warns_once_and_runs_reference():
    code = (
        "import torch, gradscope\n"
        "s = gradscope.grad_stats([torch.ones(4)])\n"
        "print(s.backend, s.sumsq.item())\n"
        "try:\n"
        "    gradscope.grad_stats([torch.ones(4)], backend='fused')\n"
        "except RuntimeError as e:\n"
        "    print('raised:', e)\n"
    )
    result = run_python(code, GRADSCOPE_DISABLE_EXT="1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "GRADSCOPE_DISABLE_EXT=1 is set" in lines[0] and "reference path" in lines[0]
    out = result.stdout.splitlines()
    assert out[0] == "reference 4.0"
    assert out[1].startswith("raised: grad_stats: the fused backend cannot run on cpu tensors: GRADSCOPE_DISABLE_EXT=1")


def test_build_for_another_torch_is_not_loaded(monkeypatch):
    monkeypatch.setattr(_ext, "_read_build_info", lambda: {"torch": "1.0.0", "cuda": False})
    status = _ext._load()
    assert status.state == "torch-mismatch"
    assert not status.cpu and not status.cuda
    assert "built for torch 1.0.0" in status.reason and torch.__version__ in status.reason
    assert "pip install --no-build-isolation" in status.reason


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_a_build_from_older_sources_is_reported_as_stale_not_called(monkeypatch):
    monkeypatch.setattr(_ext, "OPS", _ext.OPS + ("an_op_of_a_later_version",))
    status = _ext._load()
    assert status.state == "stale" and not status.cpu
    assert "built from older sources (it lacks an_op_of_a_later_version)" in status.reason
    assert "pip install --no-build-isolation" in status.reason


def test_missing_build_is_reported_as_not_built(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(_ext.importlib, "import_module", missing)
    monkeypatch.setattr(_ext, "_read_build_info", lambda: {})
    status = _ext._load()
    assert status.state == "not-built"
    assert "gradscope._C is not built" in status.reason


def test_fused_request_raises_with_the_reason(monkeypatch):
    reason = "gradscope._C is not built; rebuild"
    monkeypatch.setattr(_ext, "STATUS", _ext.ExtensionStatus(False, False, "not-built", reason, reason))
    with pytest.raises(RuntimeError, match="fused backend cannot run on cpu tensors: gradscope._C is not built"):
        gradscope.grad_stats([torch.ones(2)], backend="fused")
    assert gradscope.grad_stats([torch.ones(2)]).backend == "reference"


def test_cuda_reason_when_built_without_cuda():
    status = _ext.ExtensionStatus(True, False, "loaded", "", "built without its CUDA kernel")
    assert status.fused_for("cpu") and not status.fused_for("cuda")
    assert status.reason_for("mps") == "gradscope has no kernel for mps tensors"


@pytest.mark.skipif(os.environ.get("GRADSCOPE_REQUIRE_EXT") != "1", reason="GRADSCOPE_REQUIRE_EXT is not set")
def test_required_extension_is_loaded():
    # CI sets GRADSCOPE_REQUIRE_EXT=1: a build that silently fell back would
    # otherwise pass every test on the reference path.
    assert _ext.STATUS.cpu, _ext.STATUS.reason
    assert _ext.STATUS.build_info.get("cuda"), "CI builds the CUDA kernel too (FORCE_CUDA=1)"


@pytest.mark.slow
@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_generic_simd_path_agrees_with_the_fast_one():
    code = (
        "import torch, json, gradscope\n"
        "g = torch.Generator().manual_seed(0)\n"
        "xs = [torch.randn(n, generator=g).to(d) for n, d in [(100003, torch.float32), (5000, torch.bfloat16), (777, torch.float16)]]\n"
        "xs[0][::1000] = float('nan')\n"
        "print(json.dumps({'simd': gradscope._ext.cpu_simd(), 'table': gradscope.grad_stats(xs).table.tolist()}))"
    )
    fast, generic = (json.loads(run_python(code, **env).stdout) for env in ({}, {"GRADSCOPE_CPU_SIMD": "generic"}))
    assert generic["simd"] == "generic"
    for row_fast, row_generic in zip(fast["table"], generic["table"]):
        assert row_fast[3:] == row_generic[3:]  # max and counts exact
        for a, b in zip(row_fast[:3], row_generic[:3]):
            assert abs(a - b) <= 1e-6 * max(abs(row_fast[2]), 1e-30)


@pytest.mark.slow
def test_cli_info_text_and_json():
    result = subprocess.run([sys.executable, "-m", "gradscope", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "backend cpu" in result.stdout and "torch" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "gradscope", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    info = json.loads(result.stdout)
    assert info["torch"] == torch.__version__
    from importlib import metadata

    assert info["packages"]["numpy"] == metadata.version("numpy")  # installed: its version, read from metadata
    assert info["packages"]["lightning"] == _installed_version("lightning")
    text = subprocess.run([sys.executable, "-m", "gradscope", "info"], capture_output=True, text=True, timeout=120)
    packages = next(line for line in text.stdout.splitlines() if line.startswith("packages"))
    assert f"numpy {metadata.version('numpy')}" in packages
    assert info["backend"]["cpu"] == ("fused" if _ext.STATUS.cpu else "reference")


def _installed_version(name: str):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_info_names_a_package_that_is_not_installed_as_none():
    from gradscope.cli import package_versions

    assert package_versions(("numpy", "no-such-package-gradscope-tests")) == {
        "numpy": _installed_version("numpy"), "no-such-package-gradscope-tests": None}


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_the_op_reads_exactly_the_dtypes_python_names():
    # The rule is written once in C++ (csrc/grad_stats.h, is_stat_dtype) and mirrored by stats.FLOAT_DTYPES.
    from gradscope.stats import FLOAT_DTYPES

    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.int8, torch.int32,
              torch.int64, torch.uint8, torch.bool, torch.float8_e4m3fn]
    for dtype in dtypes:
        t = torch.zeros(3, dtype=dtype)
        fast = _ext.dense_call([t], False)
        if dtype in FLOAT_DTYPES:
            assert fast is not None and torch.ops.gradscope.grad_stats([t]).shape == (1, 6)
        else:
            assert fast is None, dtype  # handed to the Python path, which owns the message
            with pytest.raises(RuntimeError, match="expected float32, float16, bfloat16 or float64"):
                torch.ops.gradscope.grad_stats([t])


@pytest.mark.skipif(not _ext.STATUS.cpu, reason="extension not built")
def test_cpu_simd_is_a_diagnostic_of_the_module_not_an_op():
    assert _ext.cpu_simd() in ("avx2", "generic")
    assert not hasattr(torch.ops.gradscope, "cpu_simd")
