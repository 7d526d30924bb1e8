"""gradscope.analyze end to end: loading paths, measurement against plain autograd, verdicts, the report."""

from __future__ import annotations

import copy
import json
import math
import os
import types
import warnings

import pytest
import torch
import torchvision
from torch import nn

import gradscope
from gradscope.errors import GradscopeError, ModelLoadError, UsageError
from gradscope.report import SCHEMA, Report, check_output

import helpers_models as hm

SMALL = dict(batch_size=2, seq_len=16, device="cpu")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return hm.save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_bert_report(tiny_bert):
    return gradscope.analyze(str(tiny_bert), gradscope.AnalyzeConfig(**SMALL))


# --- loading paths ------------------------------------------------------------------


def test_tiny_bert_directory_loads_like_a_hub_model_with_its_masked_lm_head(tiny_bert_report):
    report = tiny_bert_report
    assert report.variant_names == ["pretrained", "scratch", "shallow"]
    assert report.meta["objective"] == "masked-lm"
    assert report.meta["architecture"] == "BertForMaskedLM"
    assert [b["block"] for b in report.block_rows("pretrained")] == [f"bert.encoder.layer.{i}" for i in range(4)]
    assert [b["block"] for b in report.block_rows("shallow")] == [f"bert.encoder.layer.{i}" for i in range(2)]
    assert "built-in corpus" in report.meta["inputs"]
    for summary in report.summaries:
        assert summary["verdict"] in ("healthy", "vanishing", "exploding", "non-finite", "dead")
        assert math.isfinite(summary["loss"])


def test_parameter_and_block_gradients_match_plain_autograd(tiny_bert):
    """Every number gradscope reports for the pretrained variant, against float64 autograd on the same batch."""
    from transformers import BertForMaskedLM

    from gradscope.models import load_subject

    config = gradscope.AnalyzeConfig(baselines=("pretrained",), **SMALL)
    report = gradscope.analyze(str(tiny_bert), config)

    batch = load_subject(str(tiny_bert), config.load_options(), lambda m: None).batches[0]
    model = BertForMaskedLM.from_pretrained(tiny_bert).eval()  # eval: dropout off, as gradscope measures
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                output_hidden_states=True)
    for h in out.hidden_states:
        h.retain_grad()
    out.loss.backward()

    assert report.summary("pretrained")["loss"] == pytest.approx(out.loss.item(), rel=1e-6)
    rows = {r["name"]: r for r in report.params}
    for name, p in model.named_parameters():
        row = rows[name]
        if p.grad is None:
            assert not row["has_grad"] and math.isnan(row["grad_l2"])
            continue
        g = p.grad.double()
        assert row["grad_l2"] == pytest.approx(g.norm().item(), rel=1e-5, abs=1e-12), name
        assert row["grad_maxabs"] == pytest.approx(g.abs().max().item(), rel=1e-6, abs=1e-12), name
        assert row["grad_meanabs"] == pytest.approx(g.abs().mean().item(), rel=1e-5, abs=1e-12), name
        assert row["grad_zero_frac"] == (g == 0).double().mean().item(), name
        # The mean cancels: two float32 backward passes may differ by rounding in each element,
        # so its tolerance scales with mean |g|, not with the (possibly tiny) mean itself.
        assert row["grad_mean"] == pytest.approx(g.mean().item(), abs=1e-5 * g.abs().mean().item()), name
        assert row["weight_l2"] == pytest.approx(p.detach().double().norm().item(), rel=1e-6), name
    # dL/dh: hidden_states[i + 1] is the output of encoder layer i.
    for block in report.block_rows("pretrained"):
        h_grad = out.hidden_states[block["depth"] + 1].grad.double()
        assert block["act_grad_l2"] == pytest.approx(h_grad.norm().item(), rel=1e-5)
        members = [p.grad.double() for n, p in model.named_parameters() if n.startswith(block["block"] + ".")]
        flat = torch.cat([g.flatten() for g in members])
        assert block["grad_l2"] == pytest.approx(flat.norm().item(), rel=1e-5)
        assert block["grad_meanabs"] == pytest.approx(flat.abs().mean().item(), rel=1e-5)
        assert block["grad_maxabs"] == flat.abs().max().item()


def test_same_seed_same_numbers_other_seed_other_masking(tiny_bert):
    def numbers(seed):
        report = gradscope.analyze(str(tiny_bert), gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"),
                                                                            seed=seed, **SMALL))
        return [(r["variant"], r["name"], r["grad_l2"]) for r in report.params]

    first = numbers(0)
    assert numbers(0) == first
    assert numbers(1) != first


def test_tiny_gpt2_gets_causal_lm_and_seeded_ids_without_tokenizer(tmp_path):
    progress = []
    report = gradscope.analyze(str(hm.save_tiny_gpt2(tmp_path)), gradscope.AnalyzeConfig(**SMALL),
                               progress=progress.append)
    assert report.meta["objective"] == "causal-lm"
    assert "seeded random token ids" in report.meta["inputs"]
    assert any("no tokenizer" in line for line in progress)
    assert [b["block"] for b in report.block_rows("pretrained")] == [f"transformer.h.{i}" for i in range(3)]
    assert len(report.block_rows("shallow")) == 2  # ceil(3 / 2)


def test_sequence_length_fits_the_model_positions(tmp_path):
    directory = str(hm.save_tiny_gpt2(tmp_path))  # 64 positions
    progress = []
    report = gradscope.analyze(directory, gradscope.AnalyzeConfig(baselines=("pretrained",), batch_size=2, device="cpu"),
                               progress=progress.append)
    assert "2 x 64" in report.meta["inputs"]  # the default 128 would index past the position table
    assert "the model has 64 positions: sequences of 64 tokens" in progress
    with pytest.raises(UsageError, match="`seq_len=100` is longer than the model's 64 positions; use `seq_len=64`"):
        gradscope.analyze(directory, gradscope.AnalyzeConfig(baselines=("pretrained",), seq_len=100, device="cpu"))


def test_no_residual_what_if_on_a_pre_norm_decoder(tmp_path):
    report = gradscope.analyze(str(hm.save_tiny_gpt2(tmp_path)),
                               gradscope.AnalyzeConfig(baselines=("scratch",), what_ifs=("no-residual",), **SMALL))
    variant = next(v for v in report.variants if v["name"] == "no-residual")
    assert variant["changes"] == {"residuals_removed": 6}  # attention and MLP, per block
    flow = {v: [b["grad_l2"] for b in report.block_rows(v)] for v in ("scratch", "no-residual")}
    assert len(flow["no-residual"]) == 3 and all(g > 0 for g in flow["no-residual"])
    assert flow["no-residual"] != pytest.approx(flow["scratch"], rel=1e-3)  # the skips carried gradient


def test_base_model_gets_the_tied_embedding_surrogate_and_no_gradient_for_its_pooler(tmp_path):
    directory = hm.save_tiny_bert(tmp_path, head="BertModel")
    report = gradscope.analyze(str(directory), gradscope.AnalyzeConfig(baselines=("pretrained",), **SMALL))
    assert report.meta["objective"] == "surrogate-masked-lm"
    assert report.meta["missing_weights"] == 0  # the surrogate adds no random head
    no_grad = report.summary("pretrained")["params_no_grad"]
    assert no_grad == ["pooler.dense.weight", "pooler.dense.bias"]
    rows = {r["name"]: r for r in report.params}
    assert rows["pooler.dense.weight"]["has_grad"] is False and math.isnan(rows["pooler.dense.weight"]["grad_l2"])
    assert any(f["kind"] == "no-gradient" and "pooler.dense.weight" in f["evidence"] for f in report.findings)


def test_hf_image_classifier_gets_cross_entropy_on_synthetic_images(tmp_path):
    report = gradscope.analyze(str(hm.save_tiny_hf_resnet(tmp_path)),
                               gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), batch_size=2,
                                                       device="cpu"))
    assert report.meta["objective"] == "cross-entropy"
    assert "synthetic images 2 x 3 x 32 x 32" in report.meta["inputs"]
    assert len(report.block_rows("pretrained")) == 4  # two stages of two layers


def test_torchvision_checkpoint_with_arch(tmp_path):
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    config = gradscope.AnalyzeConfig(arch="resnet18", image_size=32, batch_size=2, device="cpu",
                                     what_ifs=("no-residual",))
    report = gradscope.analyze(str(path), config)
    assert report.meta["objective"] == "cross-entropy" and report.meta["source"] == "checkpoint"
    blocks = [b["block"] for b in report.block_rows("pretrained")]
    assert blocks == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]  # execution order
    assert [b["block"] for b in report.block_rows("shallow")] == [f"layer{s}.0" for s in range(1, 5)]
    # Without skips, the downsample branches get no gradient, and say so.
    no_grad = report.summary("no-residual")["params_no_grad"]
    assert no_grad and all(".downsample." in name for name in no_grad)


def test_pickled_checkpoint_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "whole-model.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)  # a pickled module, not a state dict
    with pytest.raises(ModelLoadError, match="needs pickled code.*weights_only=True"):
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", device="cpu"))


def test_plain_state_dict_pt_checkpoint_loads(tmp_path):
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.pt")
    report = gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", baselines=("pretrained",),
                                                                  image_size=32, batch_size=2, device="cpu"))
    assert report.summary("pretrained")["blocks"] == 8


def test_offline_torchvision_name_reads_the_cache_and_never_downloads(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what --offline sets
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("--offline must not download"))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    with pytest.raises(ModelLoadError, match="offline .*: the pretrained weights of resnet18 are not in the torch hub "
                                             "cache .*with `arch='resnet18'`"):
        gradscope.analyze("resnet18", gradscope.AnalyzeConfig(device="cpu"))

    (tmp_path / "checkpoints").mkdir()
    hm.save_resnet18_checkpoint(tmp_path / "checkpoints" / "cached.pt", num_classes=1000)
    (tmp_path / "checkpoints" / "cached.pt").rename(tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    report = gradscope.analyze("resnet18", gradscope.AnalyzeConfig(baselines=("pretrained",), image_size=32,
                                                                   batch_size=2, device="cpu"))
    assert report.meta["source"] == "torchvision" and report.summary("pretrained")["blocks"] == 8


def test_unknown_torchvision_name_lists_close_matches():
    with pytest.raises(ModelLoadError, match="unknown torchvision model 'resnet19'; close matches: .*resnet18"):
        gradscope.analyze("resnet19")


def test_unreachable_hub_id_says_so_and_how_to_pass_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze("nobody-here/no-such-model")
    message = str(info.value)
    assert "\n" not in message
    assert "'nobody-here/no-such-model'" in message and "local directory" in message
    assert "HF_HUB_OFFLINE" in message


def test_a_hub_id_that_fails_online_says_why(monkeypatch, tmp_path):
    """The hub client's error in the chain transformers raises tells a missing or gated model from no network."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("gradscope.models.hf.offline", lambda: False)

    def failing(kind):
        cause = type(kind, (Exception,), {})("404 Client Error")

        def from_pretrained(*args, **kwargs):
            raise OSError("org/model is not a local folder and is not a valid model identifier") from cause
        return from_pretrained

    for kind, why in (("RepositoryNotFoundError", "the Hugging Face hub has no such model, or it is private"),
                      ("GatedRepoError", "it is a gated model: accept its terms"),
                      ("ConnectError", "the Hugging Face hub could not be reached")):
        monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", failing(kind))
        with pytest.raises(ModelLoadError, match=f"^cannot load model 'org/model': {why}.*`hf download org/model"):
            gradscope.analyze("org/model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # models/tiny-bert-clss: a typo in a local path, read as a hub id
    with pytest.raises(ModelLoadError, match="nor is it a local directory: models/ has no tiny-bert-clss"):
        gradscope.analyze("models/tiny-bert-clss")


def test_real_minilm_pretrained_differs_from_scratch_as_stated(tmp_path):
    """all-MiniLM-L6-v2 (real weights) against the same architecture from scratch, same batch.

    Stated difference: scratch blocks are interchangeable at init (LayerNorm weights 1, Linear std 0.02), so
    their weight norms agree within 1% and their gradient norms within 10%; the trained blocks carry weights
    at least 1.5x larger (measured 75-88 against 38) and, on the masked-token surrogate, gradients at least
    2x larger in every block (measured 3-5.5x for parameters, 2.8-3.7x for dL/dh).
    """
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), batch_size=4, seq_len=32, device="cpu")
    # the surrogate: the folder without its sentence-transformers files (with them, the contrastive loss)
    report = gradscope.analyze(str(hm.minilm_without_modules(tmp_path / "minilm")), config)
    pretrained, scratch = report.block_rows("pretrained"), report.block_rows("scratch")
    assert len(pretrained) == len(scratch) == 6
    scratch_w = [b["weight_l2"] for b in scratch]
    assert max(scratch_w) / min(scratch_w) < 1.01
    scratch_g = [b["grad_l2"] for b in scratch]
    assert max(scratch_g) / min(scratch_g) < 1.1
    for p, s in zip(pretrained, scratch):
        assert p["weight_l2"] > 1.5 * s["weight_l2"], p["block"]
    comparison = next(c for c in report.comparisons if (c["a"], c["b"]) == ("pretrained", "scratch"))
    assert all(row["grad_l2_ratio"] > 2 for row in comparison["blocks"])
    assert all(row["act_grad_l2_ratio"] > 2 for row in comparison["blocks"])


# --- nn.Module API and bad input ------------------------------------------------------


class Stack(nn.Module):
    def __init__(self, depth=4, unused=False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(depth))
        self.head = nn.Linear(8, 3)
        self.unused = nn.Linear(8, 8) if unused else None

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


BATCH = (torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3)


def test_module_api_every_variant_sees_the_same_batch_and_model_is_left_as_it_was():
    seen = []

    def loss_fn(model, batch):
        seen.append(batch)
        return _ce(model, batch)

    model = Stack()
    model.eval()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(what_ifs=("sigmoid", "he"), device="cpu"),
                               batch=BATCH, loss_fn=loss_fn)
    assert report.variant_names == ["pretrained", "scratch", "shallow", "sigmoid", "he"]
    # five measurements, and two forward passes without gradient that check the shallow cut keeps the output
    assert len(seen) == 7 and all(b is seen[0] for b in seen)
    assert not model.training and torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    json.dumps(report.to_dict(), allow_nan=False)


def test_module_api_measures_a_compiled_model_under_its_own_names():
    model = Stack()
    config = gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu")
    plain = gradscope.analyze(model, config, batch=BATCH, loss_fn=_ce)
    compiled = gradscope.analyze(torch.compile(model, backend="aot_eager"), config, batch=BATCH, loss_fn=_ce)
    assert [r["name"] for r in compiled.params] == [n for n, _ in model.named_parameters()]
    assert compiled.to_dict()["variants"] == plain.to_dict()["variants"]


def test_module_api_names_a_model_with_wrapped_blocks_as_the_plain_model():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = Stack()
    config = gradscope.AnalyzeConfig(device="cpu")  # pretrained, scratch and shallow
    plain = gradscope.analyze(model, config, batch=BATCH, loss_fn=_ce)
    wrapped = copy.deepcopy(model)
    for i, block in enumerate(wrapped.layers):
        wrapped.layers[i] = checkpoint_wrapper(block)
    report = gradscope.analyze(wrapped, config, batch=BATCH, loss_fn=_ce)
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    assert [(r["variant"], r["name"]) for r in report.params] == [(r["variant"], r["name"]) for r in plain.params]
    assert report.to_dict()["variants"] == plain.to_dict()["variants"]


def test_no_trainable_parameters_is_a_clear_error():
    model = Stack().requires_grad_(False)
    with pytest.raises(GradscopeError, match="no trainable parameters"):
        gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                          batch=BATCH, loss_fn=_ce)


def test_unused_parameters_are_no_gradient_not_zero():
    report = gradscope.analyze(Stack(unused=True), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    rows = {r["name"]: r for r in report.params}
    assert rows["unused.weight"]["has_grad"] is False
    assert math.isnan(rows["unused.weight"]["grad_l2"]) and rows["head.weight"]["grad_l2"] > 0
    assert report.summary("pretrained")["params_no_grad"] == ["unused.weight", "unused.bias"]
    saved = report.to_dict()["params"]
    assert next(r for r in saved if r["name"] == "unused.weight")["grad_l2"] is None  # JSON null, not 0


def test_nan_loss_is_reported_non_finite_naming_the_first_block():
    class Poisoned(Stack):
        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i == 2:
                    x = x * float("nan")
            return self.head(x)

    report = gradscope.analyze(Poisoned(), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    summary = report.summary("pretrained")
    assert summary["verdict"] == "non-finite" and math.isnan(summary["loss"])
    # NaN is injected between layers.2 and layers.3: layers.3 is the first block whose output holds NaN.
    assert summary["first_nonfinite"]["block"] == "layers.3"
    finding = next(f for f in report.findings if f["kind"] == "non-finite")
    assert "layers.3" in finding["message"] and "the loss is nan" in finding["evidence"]


def test_batch_is_required_for_a_module_and_forbidden_for_a_name():
    with pytest.raises(UsageError, match="batch="):
        gradscope.analyze(Stack())
    with pytest.raises(UsageError, match="go with an nn.Module"):
        gradscope.analyze("resnet18", batch=BATCH)


def test_config_is_frozen_and_validated():
    config = gradscope.AnalyzeConfig(what_ifs="sigmoid,he")
    assert config.what_ifs == ("sigmoid", "he")
    with pytest.raises(Exception):
        config.seed = 3
    with pytest.raises(UsageError, match="`what_ifs`: unknown variant relu2"):
        gradscope.AnalyzeConfig(what_ifs=("relu2",))
    with pytest.raises(UsageError, match="`batch_size` must be at least 1"):
        gradscope.AnalyzeConfig(batch_size=0)


# --- the report ---------------------------------------------------------------------


def test_report_round_trip_and_refusal_to_overwrite(tiny_bert_report, tmp_path):
    out = tmp_path / "out"
    written = tiny_bert_report.save(out)  # default formats: json, html, md
    assert [p.name for p in written] == ["report.json", "report.html", "report.md"]
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == SCHEMA == "gradscope.report/1"
    assert list(data["params"][0])[:2] == ["name", "depth"]
    loaded = Report.load(out)
    assert loaded.to_dict() == tiny_bert_report.to_dict()
    with pytest.raises(GradscopeError, match="already exists; pass `force=True`"):
        tiny_bert_report.save(out)
    tiny_bert_report.save(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]  # no temporary files


def test_report_of_unknown_schema_is_refused(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"schema": "gradscope.report/99"}))
    with pytest.raises(GradscopeError, match="schema 'gradscope.report/99'"):
        Report.load(tmp_path)


def test_failed_write_leaves_nothing(tiny_bert_report, tmp_path, monkeypatch):
    import gradscope.report as report_module

    def broken(report):
        raise OSError(28, "No space left on device")

    out = tmp_path / "out"
    monkeypatch.setitem(report_module.RENDERERS, "json", lambda r: {"report.json": b"{}"})
    out.mkdir()
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: broken(None))
    with pytest.raises(GradscopeError, match="No space left"):
        tiny_bert_report.save(out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(out.iterdir()) == []


def test_unwritable_output_and_unknown_formats_are_usage_errors(tiny_bert_report, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        tiny_bert_report.save(blocker / "out")
    with pytest.raises(UsageError, match="give at least one format"):
        tiny_bert_report.save(tmp_path / "out", formats=" , ")
    with pytest.raises(UsageError, match="`formats='xls'`: unknown format"):
        tiny_bert_report.save(tmp_path / "out", formats=("xls",))
    assert not (tmp_path / "out").exists()
    if os.path.isdir("/proc/self"):  # permission bits let root write there; creating a file does not
        with pytest.raises(UsageError, match=r"^`directory='/proc/gradscope-out'`: cannot create a file in /proc"):
            check_output("/proc/gradscope-out")


def test_public_api_names_survive_importing_the_analyzer_module():
    import gradscope.analyzer  # noqa: F401  (a submodule import must not shadow the function)

    assert callable(gradscope.analyze) and gradscope.analyze.__name__ == "analyze"
    assert gradscope.AnalyzeConfig is gradscope.analyzer.AnalyzeConfig


def test_averaging_over_batches_equals_one_batch_of_the_same_sequences(tmp_path):
    """Causal LM: every sequence has the same number of predicted tokens, so the mean loss over two batches
    of one equals the mean loss over one batch of two, and so do the gradients."""
    directory = str(hm.save_tiny_gpt2(tmp_path))
    base = dict(baselines=("pretrained",), seq_len=16, device="cpu")
    one = gradscope.analyze(directory, gradscope.AnalyzeConfig(batch_size=2, batches=1, **base))
    two = gradscope.analyze(directory, gradscope.AnalyzeConfig(batch_size=1, batches=2, **base))
    for a, b in zip(one.params, two.params):
        assert a["grad_l2"] == pytest.approx(b["grad_l2"], rel=1e-5), a["name"]
    assert one.summary("pretrained")["loss"] == pytest.approx(two.summary("pretrained")["loss"], rel=1e-6)


def _image_dir(root):
    from PIL import Image

    images = root / "images"
    images.mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 30), color).save(images / f"{i}.png")
    (images / "notes.txt").write_text("not an image")
    return images


def test_images_directory_goes_through_the_weights_preprocessing(tmp_path):
    images = _image_dir(tmp_path)
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    report = gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", baselines=("pretrained",),
                                                                  images=str(images), batch_size=4, device="cpu"))
    # Three files for a batch of four: the inputs line says they repeat.
    assert report.meta["inputs"].startswith(f"4 images from the 3 files in {images} (repeated; the weights' "
                                            "preprocessing)")
    assert report.summary("pretrained")["blocks"] == 8


def test_an_image_past_the_decompression_bomb_bound_is_a_usage_error(tmp_path, monkeypatch):
    from PIL import Image

    images = _image_dir(tmp_path)  # 40 x 30 = 1,200 pixels each
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL refuses above twice the bound: as a bomb would be
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    with pytest.raises(UsageError, match=r"^`images`: .*0\.png has more than 1000 pixels, past PIL's bound against "
                                         r"decompression bombs; remove it or give a smaller image$"):
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", baselines=("pretrained",),
                                                             images=str(images), batch_size=4, device="cpu"))


def test_bfloat16_runs_and_is_recorded(tmp_path):
    report = gradscope.analyze(str(hm.save_tiny_gpt2(tmp_path)),
                               gradscope.AnalyzeConfig(baselines=("pretrained",), dtype="bfloat16", **SMALL))
    assert report.meta["dtype"] == "bfloat16"
    assert report.summary("pretrained")["verdict"] in ("healthy", "vanishing", "exploding")


def test_dead_block_is_reported_as_dead():
    model = Stack()
    with torch.no_grad():
        model.layers[1][0].bias.fill_(-100.0)  # every ReLU unit of layers.1 is off: nothing flows below it
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    summary = report.summary("pretrained")
    assert summary["verdict"] == "dead" and summary["dead_blocks"] == ["layers.0", "layers.1"]
    assert report.block_rows("pretrained")[0]["grad_zero_frac"] == 1.0


def test_a_model_without_blocks_gets_no_depth_not_healthy(tmp_path):
    class Named(nn.Module):  # layers with names of their own, each run once: no stack, nothing repeated
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 8)
            self.hidden = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.sigmoid(self.hidden(torch.sigmoid(self.embed(x)))))

    torch.manual_seed(0)
    report = gradscope.analyze(Named(), gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    for variant in ("pretrained", "scratch"):
        summary = report.summary(variant)
        assert summary["verdict"] == "no-depth" and summary["blocks"] == 0
        kinds = [f["kind"] for f in report.findings if f["variant"] == variant]
        assert kinds[0] == "no-depth" and "healthy" not in kinds
    finding = next(f for f in report.findings if f["kind"] == "no-depth")
    assert "0 block(s) found" in finding["message"] and "ALBERT" in finding["fix"]
    assert all(r["has_grad"] for r in report.params)  # the per-parameter table still has every gradient
    page = report.save(tmp_path, formats=("html",))[0].read_text()
    assert '<span class="verdict v-no-depth">no-depth</span>' in page


class Recurrent(nn.Module):
    """One layer run five times, each run on the last one's output, as ALBERT runs its shared layer group."""

    def __init__(self, runs=5):
        super().__init__()
        self.runs = runs
        self.layer = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x, keep=None):
        for _ in range(self.runs):
            x = self.layer(x)
            if keep is not None:
                x.retain_grad()
                keep.append(x)
        return self.head(x)


def test_a_layer_run_again_on_its_own_output_is_a_block_per_run():
    torch.manual_seed(0)
    model = Recurrent()
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    summary = report.summary("pretrained")
    assert summary["verdict"] != "no-depth" and summary["blocks"] == 5
    assert summary["repeated_blocks"] == {"layer": 5}
    assert [b["block"] for b in report.block_rows("pretrained")] == [f"layer#{k}" for k in range(5)]

    # dL/dh at each run's output, against float64 autograd
    reference = copy.deepcopy(model).double()
    outputs: list = []
    _ce(lambda x: reference(x, outputs), (BATCH[0].double(), BATCH[1])).backward()
    for block, h in zip(report.block_rows("pretrained"), outputs):
        assert block["act_grad_l2"] == pytest.approx(h.grad.norm().item(), rel=1e-5)
        assert block["params"] == 0 and math.isnan(block["grad_l2"])  # the weights belong to every run
    # the shared weights' gradient is the sum over the runs, under the layer's own name, at no depth
    row = next(r for r in report.params if r["name"] == "layer.0.weight")
    assert row["block"] == "layer" and row["depth"] is None
    assert row["grad_l2"] == pytest.approx(reference.layer[0].weight.grad.norm().item(), rel=1e-5)
    finding = next(f for f in report.findings if f["kind"] == "shared-weights")
    assert finding["block"] == "layer" and "runs 5 times" in finding["message"]
    # dead units in the shared layer: its weights' gradient, the sum over the runs, is all zeros
    dead = Recurrent()
    dead.layer[1] = nn.ReLU()
    with torch.no_grad():
        dead.layer[0].bias.fill_(-100.0)
    report_dead = gradscope.analyze(dead, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                                    batch=BATCH, loss_fn=_ce)
    assert report_dead.summary("pretrained")["verdict"] == "dead"
    assert report_dead.summary("pretrained")["dead_blocks"] == ["layer"]
    assert gradscope.Report.from_dict(json.loads(json.dumps(report.to_dict()))).block_rows("pretrained")
    from gradscope.report.plots import flow_plot
    plot = flow_plot(report)
    assert ("layer runs several times with the same weights: each run (#k) is a block with a dL/dh, and no "
            "parameter gradient of its own.") in plot.caption
    assert plot.caption.startswith("L2 norm of dL/dh") and all(line.dashed for line in plot.lines)  # no empty panel
    from gradscope.report.plots import bar_plot
    assert bar_plot(report) is None  # no |g| per block: the runs have no parameter gradient of their own


def test_one_stack_run_on_two_inputs_sums_the_runs_per_block():
    """Runs that do not take the last run's output (a siamese encoder) are one block, as several batches are."""
    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.stack = Stack()

        def forward(self, x, keep=None):
            outs = []
            for half in (x, x.flip(0)):
                half = self.inp(half)  # the second run's input has a graph, which never reaches the first run
                for layer in self.stack.layers:
                    half = layer(half)
                    if keep is not None:
                        half.retain_grad()
                        keep.append(half)
                outs.append(half)
            return self.stack.head(outs[0] * outs[1])

    torch.manual_seed(0)
    model = Siamese()
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    blocks = report.block_rows("pretrained")
    assert [b["block"] for b in blocks] == [f"stack.layers.{i}" for i in range(4)]
    assert report.summary("pretrained")["repeated_blocks"] == {}
    outputs: list = []
    reference = copy.deepcopy(model).double()
    _ce(lambda x: reference(x, outputs), (BATCH[0].double(), BATCH[1])).backward()
    for i, block in enumerate(blocks):  # runs i and 4 + i are layer i's
        both = torch.cat([outputs[i].grad.flatten(), outputs[4 + i].grad.flatten()])
        assert block["act_grad_l2"] == pytest.approx(both.norm().item(), rel=1e-5)
        assert block["act_grad_maxabs"] == pytest.approx(both.abs().max().item(), rel=1e-6)


def test_a_residual_around_a_repeated_layer_still_chains_its_runs():
    """h = norm(h + cell(h)), five times: each run's input is computed from the run before it, a few operations
    back; the norm is no block of its own. dL/dh is at the cell's output, as for any block."""
    class ResidualLoop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 3)

        def forward(self, x, keep=None):
            for _ in range(5):
                out = self.cell(x)
                if keep is not None:
                    out.retain_grad()
                    keep.append(out)
                x = self.norm(x + out)
            return self.head(x)

    torch.manual_seed(0)
    model = ResidualLoop()
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    assert [b["block"] for b in report.block_rows("pretrained")] == [f"cell#{k}" for k in range(5)]
    outputs: list = []
    reference = copy.deepcopy(model).double()
    _ce(lambda x: reference(x, outputs), (BATCH[0].double(), BATCH[1])).backward()
    for block, out in zip(report.block_rows("pretrained"), outputs):
        assert block["act_grad_l2"] == pytest.approx(out.grad.norm().item(), rel=1e-5)


def test_a_recurrent_cell_is_a_block_per_time_step():
    """An LSTM cell run over time on its own (h, c): dL/dh per step is backpropagation through time."""
    from gradscope.measure import measure

    class Unrolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x, keep=None):
            h = c = torch.zeros_like(x)
            for t in range(6):
                h, c = self.cell(x * (t + 1) / 6, (h, c))
                if keep is not None:
                    h.retain_grad()
                    keep.append(h)
            return self.head(h)

    torch.manual_seed(0)
    model = Unrolled()
    m = measure(model, [BATCH], _ce)
    assert m.blocks == [f"cell#{t}" for t in range(6)] and m.repeated == {"cell": 6}
    outputs: list = []
    reference = copy.deepcopy(model).double()
    _ce(lambda x: reference(x, outputs), (BATCH[0].double(), BATCH[1])).backward()
    expected = torch.stack([h.grad.norm() for h in outputs])
    torch.testing.assert_close(m.act_grad.sumsq.sqrt(), expected, rtol=1e-5, atol=0)


def test_a_group_of_layers_run_again_in_turn_is_a_block_per_run_and_shallow_keeps_that_axis():
    """Two layers run in turn three times (l0 l1 l0 l1 l0 l1, as ALBERT with two layers per group): each run
    takes the output of the block run before it; the shallow variant is measured on the blocks it still has."""
    class Group(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2))

        def forward(self, x, keep=None):
            for layer in self.layers:
                x = layer(x)
                if keep is not None:
                    x.retain_grad()
                    keep.append(x)
            return x

    class Looped(nn.Module):
        def __init__(self):
            super().__init__()
            self.group = Group()
            self.head = nn.Linear(8, 3)

        def forward(self, x, keep=None):
            for _ in range(3):
                x = self.group(x, keep)
            return self.head(x)

    torch.manual_seed(0)
    model = Looped()
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(device="cpu"), batch=BATCH, loss_fn=_ce)
    expected = [f"group.layers.{i}#{k}" for k in range(3) for i in range(2)]
    assert [b["block"] for b in report.block_rows("pretrained")] == expected
    outputs: list = []
    reference = copy.deepcopy(model).double()
    _ce(lambda x: reference(x, outputs), (BATCH[0].double(), BATCH[1])).backward()
    for block, h in zip(report.block_rows("pretrained"), outputs):
        assert block["act_grad_l2"] == pytest.approx(h.grad.norm().item(), rel=1e-5)
        assert block["params"] == 0 and math.isnan(block["weight_l2"])  # the weights are every run's
    # shallow cut the group to one layer: its runs are blocks of pretrained's axis, by name
    assert [b["block"] for b in report.block_rows("shallow")] == [f"group.layers.0#{k}" for k in range(3)]
    from gradscope.report.terminal import comparison_lines
    assert "parameter gradient n/a, dL/dh x" in comparison_lines(report)[0]


def test_finding_repeated_blocks_never_breaks_a_model_it_cannot_watch():
    """The pass that looks for repeated blocks runs without gradients and hooks every module: a loss that
    differentiates (a gradient penalty) or a scripted submodule measures as before, with no repeated block."""
    class Penalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.head = torch.jit.script(nn.Linear(8, 3))

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    def penalty_loss(model, batch):
        x = batch[0].clone().requires_grad_(True)
        out = model(x)
        (slope,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return nn.functional.cross_entropy(out, batch[1]) + slope.pow(2).mean()

    torch.manual_seed(0)
    report = gradscope.analyze(Penalized(), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=penalty_loss)
    assert report.summary("pretrained")["repeated_blocks"] == {}
    assert all(r["has_grad"] for r in report.params)


def test_a_repeated_block_under_reentrant_checkpointing_says_why_its_runs_have_no_gradient():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(Recurrent):
        def forward(self, x, keep=None):
            for _ in range(self.runs):
                x = checkpoint(self.layer, x, use_reentrant=True)
            return self.head(x)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checkpoint's note that the first input needs no gradient
        report = gradscope.analyze(Checkpointed(), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                                   batch=BATCH, loss_fn=_ce)
    assert report.summary("pretrained")["verdict"] == "no-depth"
    finding = next(f for f in report.findings if f["kind"] == "no-depth")
    assert "use_reentrant=False" in finding["fix"]


def test_albert_s_shared_layer_group_gives_a_block_per_layer(tmp_path):
    hm.save_small(tmp_path / "albert", "AlbertForMaskedLM", "AlbertConfig", vocab_size=200, embedding_size=16,
                  hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64)
    hm.save_small(tmp_path / "groups", "AlbertForMaskedLM", "AlbertConfig", vocab_size=200, embedding_size=16,
                  hidden_size=32, num_hidden_layers=6, num_hidden_groups=3, num_attention_heads=2,
                  intermediate_size=64)
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), **SMALL)
    group = "albert.encoder.albert_layer_groups"
    report = gradscope.analyze(str(tmp_path / "albert"), gradscope.AnalyzeConfig(**SMALL))
    for variant in ("pretrained", "scratch"):
        summary = report.summary(variant)
        assert summary["verdict"] in ("healthy", "vanishing", "exploding") and summary["blocks"] == 6
        assert summary["first_block"] == f"{group}.0#0" and summary["last_block"] == f"{group}.0#5"
    # shallow: no stack to cut, so the shared group runs half as many times, its weights kept
    shallow = next(v for v in report.variants if v["name"] == "shallow")
    assert shallow["changes"] == {"runs_kept": {f"{group}.0": [3, 6]}}
    assert [b["block"] for b in report.block_rows("shallow")] == [f"{group}.0#{k}" for k in range(3)]
    assert report.summary("shallow")["loss"] != report.summary("pretrained")["loss"]
    # three groups of two layers: each group's two runs are blocks of their own, in execution order
    report = gradscope.analyze(str(tmp_path / "groups"), config)
    assert [b["block"] for b in report.block_rows("pretrained")] == [
        f"{group}.{g}#{k}" for g in range(3) for k in range(2)]
    assert report.summary("pretrained")["repeated_blocks"] == {f"{group}.{g}": 2 for g in range(3)}


class SharedLayer(nn.Module):
    """One layer run ``config.num_hidden_layers`` times, as ALBERT runs its shared group: no stack of blocks."""

    def __init__(self, layers=4):
        super().__init__()
        self.config = types.SimpleNamespace(num_hidden_layers=layers)
        self.embed = nn.Linear(8, 8)
        self.layer = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        for _ in range(self.config.num_hidden_layers):
            h = torch.tanh(self.layer(h))
        return self.head(h)


def test_the_repeated_blocks_are_found_once_before_the_variants_and_only_where_read(monkeypatch):
    import gradscope.analyzer as analyzer

    calls = []
    counted = analyzer.repeated_blocks
    monkeypatch.setattr(analyzer, "repeated_blocks", lambda *args, **kwargs: calls.append(1) or counted(*args,
                                                                                                          **kwargs))
    torch.manual_seed(0)
    report = gradscope.analyze(SharedLayer(), gradscope.AnalyzeConfig(device="cpu"), batch=BATCH, loss_fn=_ce)
    assert calls == [1]  # the depth axis and shallow both read it: one forward pass
    shallow = next(v for v in report.variants if v["name"] == "shallow")
    assert shallow["changes"] == {"runs_kept": {"layer": [2, 4]}}
    assert [b["block"] for b in report.block_rows("shallow")] == ["layer#0", "layer#1"]
    assert [b["block"] for b in report.block_rows("pretrained")] == [f"layer#{k}" for k in range(4)]
    report = gradscope.analyze(SharedLayer(2), gradscope.AnalyzeConfig(device="cpu"), batch=BATCH, loss_fn=_ce)
    assert report.meta["skipped"] == {"shallow": "layer runs 2 times, and a single run of it leaves no depth to "
                                                 "compare"}  # a single run would be a block of another name
    calls.clear()  # a model with a stack of blocks to cut: no forward pass looks for them
    gradscope.analyze(Stack(), gradscope.AnalyzeConfig(device="cpu"), batch=BATCH, loss_fn=_ce)
    assert calls == []


def test_stacks_split_an_encoder_decoder_only():
    from gradscope.analysis import stacks

    rows = lambda *names: [{"block": n} for n in names]  # noqa: E731
    assert stacks(rows("bert.encoder.layer.0", "bert.encoder.layer.1")) == [[0, 1]]
    assert stacks(rows("layer1.0", "layer1.1", "layer2.0")) == [[0, 1, 2]]  # stages of one path
    assert stacks(rows("model.encoder.layers.0", "model.encoder.layers.1", "model.decoder.layers.0",
                       "model.decoder.layers.1")) == [[0, 1], [2, 3]]
    assert stacks([]) == [[]]


def test_a_zero_initialized_head_is_named_as_why_blocks_are_dead():
    model = Stack()
    with torch.no_grad():
        model.head.weight.zero_()  # as torchvision's ViT initializes its head
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    summary = report.summary("pretrained")
    assert summary["verdict"] == "dead" and summary["zero_weights"] == ["head.weight"]
    finding = next(f for f in report.findings if f["kind"] == "dead")
    assert finding["fix"].startswith("head.weight is all zeros (a zero-initialized layer)")
    assert "LeakyReLU" not in finding["fix"]


def test_a_shallow_cut_that_breaks_the_model_is_skipped_or_refused_when_asked_for():
    class Narrowing(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))  # cut in half: 16 wide out
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.body(x))

    torch.manual_seed(0)
    model = Narrowing()
    messages = []
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(device="cpu"), batch=BATCH, loss_fn=_ce,
                               progress=messages.append)
    assert report.variant_names == ["pretrained", "scratch"]
    assert list(report.meta["config"]["baselines"]) == ["pretrained", "scratch"]  # what ran
    assert any(m.startswith("skipping the shallow baseline: ") and "body" in m for m in messages)
    assert list(report.meta["skipped"]) == ["shallow"] and "body" in report.meta["skipped"]["shallow"]
    with pytest.raises(UsageError, match="shallow: .*body.*; drop 'shallow' from `baselines`"):
        gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained", "shallow"), device="cpu"),
                          batch=BATCH, loss_fn=_ce)


def test_blocks_without_a_gradient_are_left_out_of_the_ratio_and_named():
    model = Stack(depth=5)
    model.layers[0].requires_grad_(False)  # frozen: no gradient at the first block, and none below it
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    summary = report.summary("pretrained")
    rows = {r["block"]: r for r in report.block_rows("pretrained")}
    assert summary["blocks_no_grad"] == ["layers.0"] and summary["verdict"] != "no-depth"
    assert (summary["first_block"], summary["last_block"]) == ("layers.1", "layers.4")
    assert math.isclose(summary["param_first_to_last_ratio"], rows["layers.1"]["grad_l2"] / rows["layers.4"]["grad_l2"])
    verdict = next(f for f in report.findings if f["kind"] == summary["verdict"])
    assert "none reached layers.0" in verdict["evidence"]
    model.layers[1:4].requires_grad_(False)  # one block with a gradient is left: no depth to compare
    report = gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=BATCH, loss_fn=_ce)
    finding = next(f for f in report.findings if f["kind"] == "no-depth")
    assert finding["message"].startswith("fewer than two blocks received a gradient")
    assert finding["evidence"] == "no gradient at 4 of 5 blocks: layers.0, layers.1, layers.2, layers.3"


def test_a_model_that_rejects_its_input_is_one_line_but_a_gradscope_bug_keeps_its_traceback(monkeypatch):
    class Picky(Stack):
        def forward(self, x):
            assert x.shape[-1] == 9, "expects 9 features"
            return super().forward(x)

    with pytest.raises(GradscopeError, match="variant pretrained: the forward/backward pass failed: .*9 features"):
        gradscope.analyze(Picky(), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                          batch=BATCH, loss_fn=_ce)
    import gradscope.measure as measure

    monkeypatch.setattr(measure, "find_blocks", lambda model: ["no_such_block"])  # a bug: a block that is not there
    with pytest.raises(AttributeError, match="no module named 'no_such_block'"):  # not "the forward failed"
        gradscope.analyze(Stack(), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                          batch=BATCH, loss_fn=_ce)


def test_exploding_and_vanishing_on_known_gains():
    """Linear blocks W = gain * I with no activation: dL/dh is multiplied by exactly ``gain`` per block back."""

    def chain(gain):
        model = nn.Module()
        model.blocks = nn.ModuleList(nn.Linear(8, 8, bias=False) for _ in range(6))
        model.head = nn.Linear(8, 3)
        with torch.no_grad():
            for block in model.blocks:
                block.weight.copy_(gain * torch.eye(8))
        return model

    def loss_fn(model, batch):
        h = batch[0]
        for block in model.blocks:
            h = block(h)
        return nn.functional.cross_entropy(model.head(h), batch[1])

    config = gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu")
    for gain, verdict in ((3.0, "exploding"), (0.3, "vanishing"), (1.0, "healthy")):
        summary = gradscope.analyze(chain(gain), config, batch=BATCH, loss_fn=loss_fn).summary("pretrained")
        assert summary["verdict"] == verdict
        assert summary["first_to_last_ratio"] == pytest.approx(gain ** 5, rel=1e-5)
        assert summary["decay"]["factor_per_block"] == pytest.approx(gain, rel=1e-5)
        assert summary["decay"]["r2"] == pytest.approx(1.0) or gain == 1.0


def test_images_for_a_hf_classifier_go_through_its_image_processor(tmp_path):
    from transformers import ConvNextImageProcessor

    directory = hm.save_tiny_hf_resnet(tmp_path / "model")
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(directory)
    images = _image_dir(tmp_path)
    report = gradscope.analyze(str(directory), gradscope.AnalyzeConfig(baselines=("pretrained",), images=str(images),
                                                                       batch_size=2, device="cpu"))
    assert report.meta["inputs"].startswith(f"2 images from {images} (the model's image processor)")


def test_options_for_the_other_kind_of_model_are_usage_errors_not_ignored(tiny_bert, tmp_path):
    images = tmp_path / "images"  # inputs that exist: the model's kind is what is wrong
    images.mkdir()
    torchvision = pytest.importorskip("torchvision")
    torchvision.io.write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(images / "a.png"))
    text = tmp_path / "text.txt"
    text.write_text("some words to read\n")
    with pytest.raises(UsageError, match="`images` is for vision models"):
        gradscope.analyze(str(tiny_bert), gradscope.AnalyzeConfig(images=str(images), **SMALL))
    with pytest.raises(UsageError, match="`image_size` is for vision models; this is a text model"):
        gradscope.analyze(str(tiny_bert), gradscope.AnalyzeConfig(image_size=64, **SMALL))
    resnet = hm.save_tiny_hf_resnet(tmp_path / "resnet")
    with pytest.raises(UsageError, match="`seq_len` is for text models; this is an image classifier"):
        gradscope.analyze(str(resnet), gradscope.AnalyzeConfig(seq_len=16, device="cpu"))
    checkpoint = hm.save_resnet18_checkpoint(tmp_path / "resnet18.safetensors")
    with pytest.raises(UsageError, match="`text` is for text models"):
        gradscope.analyze(str(checkpoint), gradscope.AnalyzeConfig(arch="resnet18", text=str(text), device="cpu"))


def _summary_for(flow: list[float]) -> dict:
    """The summary of blocks b.0, b.1, ... with this flow (None: a block without a gradient; see test_analysis)."""
    from gradscope.analysis import summarize_rows
    from test_analysis import rows

    params, blocks = rows([math.nan if f is None else f for f in flow])
    return summarize_rows("v", params, blocks, loss=1.0)


def test_a_steady_trend_inside_the_thresholds_is_a_warning_with_the_depth_it_would_cross_at():
    from gradscope.analysis import findings_for

    inventory = {"activations": {"GELU": 6}, "relu_family_activations": True, "norm_layers": 6,
                 "residual_modules": 6}
    plain_mlp = {"activations": {"ReLU": 6}, "relu_family_activations": 6, "norm_layers": 0, "residual_modules": 0}
    shrinking = findings_for(_summary_for([0.6 ** (5 - d) for d in range(6)]), [], plain_mlp)
    assert [f["kind"] for f in shrinking] == ["healthy", "vanishing-trend"]
    warning = shrinking[1]
    assert warning["severity"] == "warning"
    assert "about 11 blocks would be vanishing" in warning["message"]  # 0.6 ** 10 < 0.01 < 0.6 ** 9
    assert "0.0778x" in warning["evidence"] and "He init" in warning["fix"]
    growing = findings_for(_summary_for([1.5 ** (6 - d) for d in range(7)]), [], inventory)
    assert [f["kind"] for f in growing] == ["healthy", "exploding-trend"]
    assert "about 13 blocks would be exploding" in growing[1]["message"]  # 1.5 ** 12 > 100 > 1.5 ** 11
    assert "scale residual branches down" in growing[1]["fix"] and "add normalization" not in growing[1]["fix"]
    # Not steady (a poor fit), or too small a change across the blocks: no warning.
    noisy = [1.0, 0.2, 1.0, 0.2, 1.0, 0.15]
    gentle = [0.7 ** (5 - d) for d in range(6)]  # 0.17x across six blocks: not yet a decade
    for flow in (noisy, gentle):
        assert [f["kind"] for f in findings_for(_summary_for(flow), [], inventory)] == ["healthy"]
    # Blocks without a gradient are left out of the fit, not out of the depth: 0.7 per block over a span of 7
    # blocks is 0.082x, a decade, though only four blocks were fitted.
    gaps = [0.7 ** (7 - d) if d in (0, 3, 5, 7) else None for d in range(8)]
    assert [f["kind"] for f in findings_for(_summary_for(gaps), [], plain_mlp)] == ["healthy", "vanishing-trend"]
    # the shallow baseline is the model's own first half: the whole model, measured beside it, shows the rate
    shallow = {**_summary_for([0.6 ** (5 - d) for d in range(6)]), "variant": "shallow"}
    assert [f["kind"] for f in findings_for(shallow, [], plain_mlp)] == ["healthy"]


def test_vanishing_fixes_name_the_model_s_own_activation():
    from gradscope.analysis import _vanishing_fixes

    bert = {"activations": {"GELU": 12, "Tanh": 1}, "relu_family_activations": 12, "norm_layers": 25,
            "residual_modules": 24}  # the one Tanh is the pooler's
    assert _vanishing_fixes(bert) == "use fewer layers or start from pretrained weights"
    sigmoid_mlp = {"activations": {"Sigmoid": 20}, "relu_family_activations": 0, "norm_layers": 0,
                   "residual_modules": 0}
    fixes = _vanishing_fixes(sigmoid_mlp)
    assert fixes.startswith("replace sigmoid with a ReLU-family activation") and "Xavier" in fixes
    assert "add normalization" in fixes and "add residual connections" in fixes
    relu_mlp = {"activations": {"ReLU": 20}, "relu_family_activations": 20, "norm_layers": 0, "residual_modules": 0}
    assert _vanishing_fixes(relu_mlp).startswith("initialize with He init")
    # a transformer whose skips gradscope cannot edit (OPT, T5, ViT) has them all the same; after no-residual, not
    opt = {"activations": {"ReLU": 12}, "relu_family_activations": 12, "norm_layers": 25, "residual_modules": 0,
           "attention_modules": 12, "residuals_removed": 0}
    assert "add residual connections" not in _vanishing_fixes(opt)
    no_residual_bert = {**bert, "residual_modules": 0, "attention_modules": 12, "residuals_removed": 24}
    assert "add residual connections" in _vanishing_fixes(no_residual_bert)


def test_densenet_s_dense_connections_count_as_skips():
    from gradscope.analysis import _exploding_fixes, _vanishing_fixes
    from gradscope.variants import describe_architecture

    inventory = describe_architecture(torchvision.models.densenet121())
    assert inventory["dense_modules"] == 58 and inventory["residual_modules"] == 0
    assert "residual" not in _vanishing_fixes(inventory)
    assert "residual" not in _exploding_fixes(inventory)  # neither add them nor scale residual branches
    plain = {**inventory, "dense_modules": 0}
    assert "add residual connections" in _vanishing_fixes(plain)


def test_the_architecture_counts_attention_layers_and_removed_skips():
    transformers = pytest.importorskip("transformers")
    from gradscope.variants import describe_architecture, remove_residuals

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=32))
    before = describe_architecture(bert)
    assert (before["attention_modules"], before["residual_modules"], before["residuals_removed"]) == (2, 4, 0)
    remove_residuals(bert)
    after = describe_architecture(bert)
    assert (after["attention_modules"], after["residual_modules"], after["residuals_removed"]) == (2, 0, 4)


def test_a_model_without_a_block_stack_skips_shallow_and_its_config_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))  # no stack of numbered blocks
    messages = []
    report = gradscope.analyze(model, batch=torch.randn(6, 4), loss_fn=lambda m, x: m(x).pow(2).mean(),
                               progress=messages.append)
    assert report.variant_names == ["pretrained", "scratch"]
    assert list(report.meta["config"]["baselines"]) == ["pretrained", "scratch"]
    assert any("skipping the shallow baseline" in m for m in messages)
    assert report.meta["skipped"] == {"shallow": "the model has no stack of numbered blocks to shorten"}
    with pytest.raises(UsageError, match="drop 'shallow' from `baselines`"):
        gradscope.analyze(model, gradscope.AnalyzeConfig(baselines=("shallow",)), batch=torch.randn(6, 4),
                          loss_fn=lambda m, x: m(x).pow(2).mean())


class _FirstLastAverage(nn.Module):
    """20 Linear -> Sigmoid blocks (PyTorch's default init) whose head reads the average of the first and the
    last block's outputs, as sentence encoders' first-last-avg pooling does (U-Nets and early exits alike)."""

    def __init__(self, depth: int = 20, width: int = 128):
        super().__init__()
        self.stem = nn.Linear(32, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Sigmoid()) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.stem(x)
        outputs = []
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        return self.head((outputs[0] + outputs[-1]) / 2)


def test_a_collapse_inside_the_stack_is_vanishing_though_first_and_last_agree():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(256, 32, generator=generator), torch.randint(0, 10, (256,), generator=generator))
    report = gradscope.analyze(_FirstLastAverage(), gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu"),
                               batch=batch, loss_fn=_ce)
    summary = report.summary("pretrained")
    flow = [b["act_grad_l2"] / report.block_rows("pretrained")[-1]["act_grad_l2"]
            for b in report.block_rows("pretrained")]
    assert flow[0] == pytest.approx(1.0, rel=0.1)  # the head's own path: first/last reads about 1
    assert 1e-16 < flow[1] < 1e-15 and 1e-8 < flow[10] < 1e-7  # sqrt(1/48) per block: 1e-16 and 3e-8
    assert summary["verdict"] == "vanishing"  # it read 'healthy' from first/last alone
    assert (summary["lowest_block"], summary["lowest_ratio"]) == ("blocks.1", flow[1])
    assert (summary["decay"]["shape"], summary["decay"]["shape_at"]) == ("trough", [1])
    assert summary["param_lowest_block"] == "blocks.1" and summary["param_lowest_ratio"] < 1e-14
    finding = next(f for f in report.findings if f["kind"] == "vanishing")
    assert finding["block"] == "blocks.1"
    assert finding["message"].startswith("vanishing gradient inside the stack: the gradient bottoms out at blocks.1")
    assert "replace sigmoid with a ReLU-family activation" in finding["fix"]


def test_a_loss_that_the_last_block_s_layernorm_cancels_is_a_step_at_the_top():
    """The sum of a BERT's last hidden state: its final LayerNorm removes the mean over the features, so what
    goes back through the last block is rounding error, the same at every block below it."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                                     intermediate_size=64)
    ids = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(0))
    report = gradscope.analyze(transformers.BertModel(config), gradscope.AnalyzeConfig(baselines=("pretrained",),
                                                                                      device="cpu"),
                               batch=ids, loss_fn=lambda model, batch: model(batch).last_hidden_state.sum())
    summary = report.summary("pretrained")
    assert summary["verdict"] == "vanishing"
    assert (summary["decay"]["shape"], summary["decay"]["shape_at"]) == ("step", [5, 4])
    assert summary["decay"]["shape_ratio"] < 2.0 ** -23  # one block: more than float32 resolves
    finding = next(f for f in report.findings if f["kind"] == "vanishing")
    assert finding["message"].endswith("what reaches the blocks below encoder.layer.5 is rounding error")
    assert finding["fix"].startswith("the change is at one block, not spread over depth")
    assert "That is the last block: check what the objective reads of its output" in finding["fix"]
    assert "use fewer layers" not in finding["fix"] and "add residual connections" not in finding["fix"]


def test_a_float64_loss_beyond_float32_range_stays_finite_in_the_report(tmp_path):
    model = Stack().double()

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0].double()), batch[1]) * 1e38 + 8.3e38

    config = gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu", dtype="auto")  # float64, as built
    report = gradscope.analyze(model, config, batch=BATCH,
                               loss_fn=loss_fn)
    summary = report.summary("pretrained")
    assert math.isfinite(summary["loss"]) and summary["loss"] > 8.3e38
    assert summary["verdict"] != "non-finite"
    report.save(tmp_path / "out", formats="json,html,md,csv,svg")  # every renderer takes the large number
    assert gradscope.Report.load(tmp_path / "out").summary("pretrained")["loss"] == summary["loss"]


def test_what_a_vanishing_gradient_means_for_training_is_judged_at_the_weights_own_resolution():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Sigmoid()) for _ in range(12)], nn.Linear(8, 3))

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0].to(next(m.parameters()).dtype)).float(), batch[1])

    evidence = {}
    for dtype in ("float32", "bfloat16"):
        config = gradscope.AnalyzeConfig(baselines=("pretrained",), device="cpu", dtype=dtype)
        report = gradscope.analyze(copy.deepcopy(model), config, batch=BATCH, loss_fn=loss_fn)
        (finding,) = [f for f in report.findings if f["kind"] == "vanishing"]
        evidence[dtype] = finding["evidence"]
    # the same stack: its first block is within Adam's reach in float32 weights, out of it in bfloat16 ones
    assert "every block's gradient is still large enough for a per-parameter normalized step" in evidence["float32"]
    assert "less than half the bfloat16 resolution of the weights, so they never move" in evidence["bfloat16"]
