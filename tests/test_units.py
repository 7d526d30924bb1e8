"""Dead units per block, and a "pretrained" model that was never trained.

Dead units are counted here independently of gradscope, with forward hooks on the ReLU outputs (a unit is dead
when its output is zero for every sample, and at every position of a convolution), and compared per block with
the count gradscope reads from the weight gradients.
"""

from __future__ import annotations

import copy
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.analysis import DEAD_UNIT_FRAC, dead_units_finding
from gradscope.demo import BATCH_SIZE, DEPTH, WIDTH, DeepMLP, demo_batch

import helpers_models as hm

PRETRAINED_ONLY = gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu")


def cross_entropy(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model(batch["x"]), batch["labels"])


def relu_dead_units(model: nn.Module, relus: Callable[[nn.Module], list[nn.Module]], batch: dict) -> list[int]:
    """Per ReLU (``relus(model)``, one per block): its units (dim 1) whose output is zero for every sample and
    position. One forward pass of a copy, in gradscope's modes: eval, batch norm on batch statistics."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    counts: dict[int, int] = {}

    def record(i: int):
        def hook(module, inputs, output):
            alive = (output != 0).transpose(0, 1).flatten(1).any(dim=1)
            counts[i] = int((~alive).sum())
        return hook

    for i, relu in enumerate(relus(model)):
        relu.register_forward_hook(record(i))
    with torch.no_grad():
        model(batch["x"])
    return [counts[i] for i in range(len(counts))]


def dead_finding(report, variant: str = "pretrained") -> list[dict]:
    return [f for f in report.findings if f["variant"] == variant and f["kind"] == "dead-units"]


def expected_message(block: str, dead: int, units: int) -> str:
    return (f"partly dead units: {dead} of the {units} units of {block} ({dead / units:.0%}) get no gradient from "
            "any sample of the batch")


# --- dead units ---------------------------------------------------------------------------------


def test_he_mlp_dead_units_per_block_are_its_relu_units_off_for_the_whole_batch():
    torch.manual_seed(0)
    model = DeepMLP("relu-he")
    batch = demo_batch(BATCH_SIZE, 0)
    expected = relu_dead_units(model, lambda m: [b.act for b in m.blocks], batch)
    report = gradscope.analyze(model, PRETRAINED_ONLY, batch=batch, loss_fn=cross_entropy)

    rows = report.block_rows("pretrained")
    assert [b["units"] for b in rows] == [WIDTH] * DEPTH
    assert [b["dead_units"] for b in rows] == expected
    assert sum(expected) > 0  # the deep blocks have dead units, the point of the comparison
    params = {p["name"]: p for p in report.params}
    assert [params[f"blocks.{i}.linear.weight"]["dead_units"] for i in range(DEPTH)] == expected
    assert params["blocks.0.linear.bias"]["units"] is None and params["blocks.0.linear.bias"]["dead_units"] is None

    # healthy by its verdict, with the dead units said beside it: the block with the largest fraction named
    assert report.summary("pretrained")["verdict"] == "healthy"
    worst = max(range(DEPTH), key=lambda i: expected[i])
    (finding,) = dead_finding(report)
    assert finding["severity"] == "warning" and finding["block"] == f"blocks.{worst}"
    assert finding["message"] == expected_message(f"blocks.{worst}", expected[worst], WIDTH)
    over = [i for i in range(DEPTH) if expected[i] / WIDTH > DEAD_UNIT_FRAC]
    assert finding["evidence"].startswith(f"{len(over)} of {DEPTH} blocks have more than 5% of their units dead: "
                                          f"blocks.{over[0]} {expected[over[0]] / WIDTH:.0%}, ")
    # He init already: the init is not what to change; no normalization: BatchNorm is
    assert finding["fix"] == (
        "use LeakyReLU or GELU (their gradient is not zero for negative inputs); add BatchNorm before the "
        "activation (it centres each unit over the batch, so no unit is off for every sample); check the bias "
        "init (a negative bias switches a unit off for every input); if units died in training, lower the "
        "learning rate")


class ConvNet(nn.Module):
    """A stem, four Conv -> BatchNorm -> ReLU blocks of 8 channels, and a pooled 5-class head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                      for _ in range(4)))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def test_conv_net_dead_channels_per_block_are_its_relu_channels_off_everywhere():
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            block[1].bias[:i] = -50.0  # below any normalized value of a batch this size: off everywhere
    batch = {"x": torch.randn(4, 3, 8, 8), "labels": torch.tensor([0, 1, 2, 3])}
    expected = relu_dead_units(model, lambda m: [b[2] for b in m.blocks], batch)
    assert expected == [0, 1, 2, 3]  # batch norm centres the others: none is off for every sample
    report = gradscope.analyze(model, PRETRAINED_ONLY, batch=batch, loss_fn=cross_entropy)

    rows = report.block_rows("pretrained")
    assert [b["units"] for b in rows] == [8] * 4  # the convolution's output channels; a norm has no units
    assert [b["dead_units"] for b in rows] == expected
    (finding,) = dead_finding(report)
    assert finding["block"] == "blocks.3" and finding["message"] == expected_message("blocks.3", 3, 8)
    assert finding["evidence"].startswith("3 of 4 blocks have more than 5% of their units dead: blocks.1 12%, "
                                          "blocks.2 25%, blocks.3 38% (a unit is dead when")


def test_dense_networks_have_no_dead_units_and_no_finding():
    torch.manual_seed(0)
    gelu = nn.Sequential(nn.Linear(32, 128), *(layer for _ in range(8) for layer in (nn.Linear(128, 128), nn.GELU())),
                         nn.Linear(128, 10))
    batch = demo_batch(64, 0)
    for model in (gelu, DeepMLP("batchnorm")):  # never exactly zero; a ReLU behind batch norm, centred per unit
        report = gradscope.analyze(model, PRETRAINED_ONLY, batch=batch, loss_fn=cross_entropy)
        rows = report.block_rows("pretrained")
        assert rows and all(b["units"] > 0 and b["dead_units"] == 0 for b in rows)
        assert dead_finding(report) == []


def _units_rows(dead: list[int], units: int = 100) -> list[dict]:
    return [{"block": f"blocks.{i}", "units": units, "dead_units": d} for i, d in enumerate(dead)]


def test_dead_unit_finding_starts_above_the_stated_fraction_and_leaves_dead_blocks_to_their_verdict():
    summary = {"variant": "v", "dead_blocks": []}
    assert DEAD_UNIT_FRAC == 0.05
    assert dead_units_finding(summary, _units_rows([0, 5, 5]), [], {}) is None  # 5%: not above
    finding = dead_units_finding(summary, _units_rows([0, 6, 40, 7]), [], {})
    assert finding["block"] == "blocks.2" and finding["message"] == expected_message("blocks.2", 40, 100)
    assert finding["evidence"].startswith("3 of 4 blocks have more than 5% of their units dead: blocks.1 6%, "
                                          "blocks.2 40%, blocks.3 7% (")
    # a block whose gradient is (almost) all zeros is the dead verdict's: the partly dead one is named here
    finding = dead_units_finding({"variant": "v", "dead_blocks": ["blocks.2"]}, _units_rows([0, 6, 100, 7]), [], {})
    assert finding["block"] == "blocks.3"
    # blocks without Linear or convolution weights have no units to count
    assert dead_units_finding(summary, _units_rows([0, 0], units=0), [], {}) is None


def test_dead_unit_fix_names_he_init_where_the_weights_are_below_its_scale_without_normalization():
    rows = _units_rows([0, 30])
    # PyTorch's default Linear init: variance 1/(3 fan_in), so a sum of squares of units/3, against He's 2 units
    params = [{"block": "blocks.1", "units": 100, "weight_l2": (100 / 3) ** 0.5}]
    relu = {"relu_family_activations": 2, "norm_layers": 0}
    fix = dead_units_finding({"variant": "v", "dead_blocks": []}, rows, params, relu)["fix"]
    assert fix.startswith("initialize with He init (nn.init.kaiming_normal_, nonlinearity='relu'): these weights "
                          "have 0.41x its scale; use LeakyReLU or GELU")
    for inventory, weight_l2 in (({**relu, "norm_layers": 2}, (100 / 3) ** 0.5), (relu, 200 ** 0.5)):
        params = [{"block": "blocks.1", "units": 100, "weight_l2": weight_l2}]  # behind a norm; at He's scale
        fix = dead_units_finding({"variant": "v", "dead_blocks": []}, rows, params, inventory)["fix"]
        assert fix.startswith("use LeakyReLU or GELU")


# --- an untrained "pretrained" model ------------------------------------------------------------

UNTRAINED_MESSAGE = ("pretrained looks untrained: it is indistinguishable from scratch, the same architecture freshly "
                     "initialized")
SAME = re.compile(r"the loss \(\S+\), the total gradient L2 and, at all 8 blocks, dL/dh and the parameter-gradient "
                  r"L2 equal scratch's within 1e-05 \(relative\)")
# resnet18: 20 batch norms (weight 1, bias 0); 20 convolutions, the head's weight and its bias drawn at random
FRESH = re.compile(r"all 40 tensors that scratch initializes to a constant \(normalization weights, biases\) hold "
                   r"that constant exactly \(bn1.weight = 1, bn1.bias = 0, ...\), and (\d+) of the 22 others have a "
                   r"weight RMS within max\(5%, 4/sqrt\(entries\)\) of scratch's")


def untrained(report) -> list[dict]:
    return [f for f in report.findings if f["kind"] == "untrained"]


def test_a_freshly_initialized_resnet18_checkpoint_is_found_untrained(tmp_path):
    config = gradscope.AnalyzeConfig(arch="resnet18", baselines=("pretrained", "scratch"), image_size=32,
                                     batch_size=4, device="cpu")
    # Saved with scratch's seed: the same weights, so the same measurement, and weights like a fresh draw.
    same = gradscope.analyze(str(hm.save_resnet18_checkpoint(tmp_path / "seed0.safetensors", seed=0)), config)
    (finding,) = untrained(same)
    assert finding["variant"] == "pretrained" and finding["severity"] == "warning" and finding["block"] is None
    assert finding["message"] == UNTRAINED_MESSAGE
    same_part, fresh_part = finding["evidence"].split("; ")
    assert SAME.fullmatch(same_part)
    assert FRESH.fullmatch(fresh_part).group(1) == "22"
    # Another seed: another measurement, but the weights still those of a fresh initialization.
    other = gradscope.analyze(str(hm.save_resnet18_checkpoint(tmp_path / "seed3.safetensors", seed=3)), config)
    (finding,) = untrained(other)
    assert int(FRESH.fullmatch(finding["evidence"]).group(1)) >= 20


class Tiny(nn.Module):
    """Two Linear -> LayerNorm -> ReLU blocks and a head; no biases, so every drawn tensor has 256+ entries."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(n, 64, bias=False), nn.LayerNorm(64), nn.ReLU())
                                    for n in (16, 64))
        self.head = nn.Linear(64, 4, bias=False)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_a_trained_model_is_not_found_untrained_and_the_same_model_before_training_is():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=generator)
    batch = {"x": x, "labels": (x[:, :4] @ torch.randn(4, 4, generator=generator)).argmax(dim=1)}
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), device="cpu")
    torch.manual_seed(1)  # not scratch's seed: the weights differ from scratch's, their statistics do not
    model = Tiny()
    before = gradscope.analyze(model, config, batch=batch, loss_fn=cross_entropy)
    (finding,) = untrained(before)
    assert finding["message"] == UNTRAINED_MESSAGE and not SAME.search(finding["evidence"])

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        optimizer.zero_grad()
        loss = cross_entropy(model, batch)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * before.summary("pretrained")["loss"]  # it learned
    after = gradscope.analyze(model, config, batch=batch, loss_fn=cross_entropy)
    assert untrained(after) == []


def test_a_bert_saved_fresh_is_found_untrained_and_the_real_minilm_is_not(tmp_path):
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), batch_size=2, seq_len=16, device="cpu")
    fresh = gradscope.analyze(str(hm.save_small_bert(tmp_path, seed=5)), config)
    (finding,) = untrained(fresh)
    assert finding["message"] == UNTRAINED_MESSAGE and "hold that constant exactly" in finding["evidence"]
    real = gradscope.analyze(str(hm.minilm_dir()), config)
    assert untrained(real) == []
