"""Shared fixtures. GPU tests skip, with the reason, where no GPU is visible.

Every test that asks for a GPU (the ``cuda_device`` fixture, directly or through
``fused_cuda``) is marked ``gpu``: ``pytest -m gpu`` runs just those
(benchmarks/gpu_check.sh does). Tests that take about 2 s or more on the 2-core
development machine are marked ``slow``: ``pytest -m "not slow"`` is the quick loop.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying for 30 s


@pytest.fixture
def cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def fused_cuda(cuda_device) -> torch.device:
    from gradscope import _ext

    if not _ext.STATUS.fused_for("cuda"):
        pytest.skip(f"CUDA kernel unavailable: {_ext.STATUS.reason_for('cuda')}")
    return cuda_device


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (asks for the cuda_device fixture)")
    config.addinivalue_line("markers", "slow: about 2 s or more here (subprocesses, several processes, large "
                                       "tensors); `pytest -m 'not slow'` leaves them out of a quick run")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)
