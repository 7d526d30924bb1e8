"""The demo's physics: measured gradient flow against the factors derived in gradscope/demo.py.

Going back through one block multiplies the squared norm of dL/dh by
``fan_out * Var(W) * E[act'(z)^2]``. PyTorch's default Linear init has
``Var(W) = 1/(3 fan_in)``, and the blocks are square, so:

- sigmoid: ``1/3 * (1/4)^2`` -> factor ``sqrt(1/48) = 0.144`` per block;
- tanh: inputs shrink toward 0 where tanh' = 1 -> ``sqrt(1/3) = 0.577``;
- ReLU: half the units pass -> ``sqrt(1/6) = 0.408``;
- ReLU with He init (``Var(W) = 2/fan_in``): ``sqrt(2 * 1/2) = 1``;
- pre-activation residual ``h + W relu(h)``: ``sqrt(1 + 1/6) = 1.080``;
- BatchNorm (batch statistics) with ReLU: ``sqrt(pi / (pi - 1)) = 1.211`` (Yang et al. 2019).

Over the 19 steps between the first and the last of 20 blocks, that is a first/last ratio of
``0.144^19 = 1e-16`` for sigmoid against ``1.08^19 = 4.3`` for the residual net. Finite width (128)
makes each step's factor fluctuate: the log of the squared norm gets a spread of about
``sqrt(2 / 64)`` per ReLU step (64 active units), ``0.77`` over 19 steps, so the He-init ratio stays
within ``exp(+-0.39 * 3)``, about 1/3.2 to 3.2, at three standard deviations: the test allows 1/4 to 4.
The fitted factors are held to 5%.
"""

from __future__ import annotations

import math
import re

import pytest

from gradscope.demo import DEMO_VARIANTS, demo


@pytest.fixture(scope="module")
def report():
    return demo(device="cpu", seed=0)


EXPECTED_FACTOR = {
    "sigmoid": math.sqrt(1 / 48),
    "tanh": math.sqrt(1 / 3),
    "relu": math.sqrt(1 / 6),
    "relu-he": 1.0,
    "residual": math.sqrt(7 / 6),
    "batchnorm": math.sqrt(math.pi / (math.pi - 1)),
}


def test_all_six_variants_with_twenty_blocks(report):
    assert report.variant_names == list(DEMO_VARIANTS)
    assert all(s["blocks"] == 20 and s["flow_signal"] == "dL/dh" for s in report.summaries)


@pytest.mark.parametrize("variant", DEMO_VARIANTS)
def test_fitted_factor_per_block_matches_the_derivation(report, variant):
    decay = report.summary(variant)["decay"]
    assert decay["factor_per_block"] == pytest.approx(EXPECTED_FACTOR[variant], rel=0.05)


def test_deep_sigmoid_first_block_gets_orders_of_magnitude_less_than_the_last(report):
    sigmoid = report.summary("sigmoid")
    assert sigmoid["first_to_last_ratio"] < 1e-12  # derived 1e-16
    assert sigmoid["verdict"] == "vanishing"
    assert report.summary("tanh")["first_to_last_ratio"] < 1e-3  # derived 0.577^19 = 3e-5
    assert report.summary("relu")["first_to_last_ratio"] < 1e-5  # derived 0.408^19 = 4e-8


def test_fixes_stay_within_a_small_factor(report):
    assert 1 / 4 < report.summary("relu-he")["first_to_last_ratio"] < 4
    assert 2 < report.summary("residual")["first_to_last_ratio"] < 10  # derived 4.3
    for fixed in ("relu-he", "residual", "batchnorm"):
        assert report.summary(fixed)["verdict"] == "healthy"


def test_findings_name_the_fix_a_reader_would_apply(report):
    by_variant = {f["variant"]: f for f in report.findings if f["kind"] == "vanishing"}
    assert set(by_variant) == {"sigmoid", "tanh", "relu"}
    assert "ReLU-family activation" in by_variant["sigmoid"]["fix"]
    assert "He init" in by_variant["relu"]["fix"] and "residual" in by_variant["relu"]["fix"]
    # under one block per halving, the factor per block reads better than "halves every 0.35 blocks"
    falls = re.search(r"the gradient falls ([\d.]+)x per block toward the input", by_variant["sigmoid"]["evidence"])
    assert float(falls.group(1)) == pytest.approx(1 / EXPECTED_FACTOR["sigmoid"], rel=0.05)
    assert re.search(r"the gradient halves every [\d.]+ blocks toward the input", by_variant["tanh"]["evidence"])


def test_same_seed_same_numbers(report):
    again = demo(device="cpu", seed=0, variants=("sigmoid", "relu-he"))
    for name in ("sigmoid", "relu-he"):
        assert [b["act_grad_l2"] for b in again.block_rows(name)] == [b["act_grad_l2"] for b in report.block_rows(name)]
