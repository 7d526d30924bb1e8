"""GradscopeLightningCallback in a real lightning.pytorch Trainer (skipped where lightning is not installed)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed (pip install torch-gradscope[lightning])")

from gradscope.integrations.lightning import GradscopeLightningCallback  # noqa: E402
from gradscope.report import Report  # noqa: E402
from stats_reference import update_ratios  # noqa: E402

BLOCKS = ["layers.0", "layers.1", "layers.2"]


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 8)
        self.layers = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)])
        self.head = nn.Linear(8, 1)
        self.reference: dict[int, dict] = {}

    def training_step(self, batch, _):
        x, y = batch
        return ((self.head(torch.tanh(self.layers(self.inp(x)))) - y) ** 2).mean()

    def on_before_optimizer_step(self, optimizer):  # runs after the callbacks' hook, on the same gradients
        grads = {n: p.grad.double().reshape(-1) for n, p in self.named_parameters()}
        norm = lambda gs: torch.linalg.vector_norm(torch.cat(gs)).item()  # noqa: E731
        row = {"global": norm(list(grads.values()))}
        row.update({b: norm([g for n, g in grads.items() if n.startswith(b + ".")]) for b in BLOCKS})
        self.reference[self.trainer.global_step + 1] = row

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Collect(pl.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.metrics: dict[int, dict] = {}

    name, version = "collect", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.setdefault(step, {}).update(metrics)


def test_per_block_norms_match_float64_with_accumulation(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g))
    module, logger = Module(), Collect()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=logger, log_every_n_steps=1,
                         accumulate_grad_batches=2, gradient_clip_val=0.01, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[GradscopeLightningCallback(report_dir=tmp_path / "report")])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    logged = {k: v for m in logger.metrics.values() for k, v in m.items()}
    assert len(module.reference) == 3
    ref = module.reference[3]
    values = [m for m in logger.metrics.values() if "gradscope/pre_clip/grad_norm" in m]
    assert len(values) == 3
    # pre-clip: Lightning clips to 0.01 after the hook, and the logged norm is above that
    assert values[-1]["gradscope/pre_clip/grad_norm"] > 0.01
    assert math.isclose(values[-1]["gradscope/pre_clip/grad_norm"], ref["global"], rel_tol=1e-6)
    for b in BLOCKS:
        assert math.isclose(logged[f"gradscope/pre_clip/grad_norm/{b}"], ref[b], rel_tol=1e-6)
    report = Report.load(tmp_path / "report")
    assert {r["step"] for r in report.series} == {1, 2, 3}


class Failing(Module):
    def training_step(self, batch, index):
        if self.trainer.global_step == 2:
            raise RuntimeError("the data loader broke")
        return super().training_step(batch, index)


def _fit(module, tmp_path, **callback_options):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g))
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[GradscopeLightningCallback(**callback_options)])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))


def test_a_fit_stopped_by_an_error_keeps_its_report_and_lets_the_model_go(tmp_path):
    module = Failing()
    with pytest.raises(RuntimeError, match="data loader broke"):
        _fit(module, tmp_path, report_dir=tmp_path / "report")
    report = Report.load(tmp_path / "report")
    assert sorted({r["step"] for r in report.series}) == [1, 2]  # the steps before the error
    assert report.meta["stopped_by"] == "RuntimeError: the data loader broke"
    module.__class__ = Module  # fixed: the same model fits again under a new callback
    _fit(module, tmp_path, report_dir=tmp_path / "again")
    assert sorted({r["step"] for r in Report.load(tmp_path / "again").series}) == [1, 2, 3]


class ClipReference(Module):
    """Also the float64 global norm after Lightning's clip, read when the step's batch ends."""

    def __init__(self):
        super().__init__()
        self.post: dict[int, float] = {}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        grads = [p.grad.double().reshape(-1) for p in self.parameters() if p.grad is not None]
        if grads and self.trainer.global_step not in self.post:
            self.post[self.trainer.global_step] = torch.linalg.vector_norm(torch.cat(grads)).item()


def test_a_clip_by_norm_is_noted_post_clip_global_and_clip_level(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g))
    module, logger = ClipReference(), Collect()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=logger, log_every_n_steps=1,
                         gradient_clip_val=0.01, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[GradscopeLightningCallback(report_dir=tmp_path / "report")])
    own_clip = trainer.precision_plugin.clip_gradients
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert trainer.precision_plugin.clip_gradients == own_clip  # the wrapper is gone
    values = [m for m in logger.metrics.values() if "gradscope/post_clip/grad_norm" in m]
    assert len(values) == 3
    for step, logged in enumerate(values, start=1):
        assert logged["gradscope/pre_clip/grad_norm"] > 0.01  # clipped
        assert math.isclose(logged["gradscope/pre_clip/grad_norm"], module.reference[step]["global"], rel_tol=1e-6)
        assert math.isclose(logged["gradscope/post_clip/grad_norm"], module.post[step], rel_tol=1e-6)
    report = Report.load(tmp_path / "report")
    glob = sorted((r for r in report.series if r["block"] is None), key=lambda r: r["step"])
    assert [r["clip_max_norm"] for r in glob] == [0.01] * 3
    assert all(math.isclose(r["grad_l2_post_clip"], module.post[r["step"]], rel_tol=1e-6) for r in glob)


class NanAtStepTwo(Module):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def on_before_optimizer_step(self, optimizer):
        pass  # no reference here: the skipped step's gradients are gone

    def on_after_backward(self):
        if self.trainer.global_step == 1:
            self.layers[1].weight.grad[0, 0] = math.nan

    def on_train_batch_start(self, batch, batch_idx):
        self.snapshots = getattr(self, "snapshots", {})
        optimizer = self.trainer.optimizers[0]
        self.snapshots[self.trainer.global_step] = (
            {n: p.detach().clone() for n, p in self.named_parameters()},
            copy.deepcopy(optimizer.state_dict()["state"]))


def test_skip_leaves_the_weights_and_adam_state_of_a_nonfinite_step_as_they_were(tmp_path):
    module = NanAtStepTwo()
    with pytest.warns(RuntimeWarning, match="at step 2; first block .*layers.1.*step was skipped"):
        _fit(module, tmp_path, report_dir=tmp_path / "report", on_nonfinite="skip")
    (w1, s1), (w2, s2) = module.snapshots[1], module.snapshots[2]  # after steps 1 and 2
    assert all(torch.equal(w1[n], w2[n]) for n in w1)
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])
    after = dict(module.named_parameters())
    assert any(not torch.equal(w2[n], after[n]) for n in w2)  # step 3 trained on
    assert all(torch.isfinite(p).all() for p in after.values())
    report = Report.load(tmp_path / "report")
    [finding] = [f for f in report.findings if f["kind"] == "non-finite"]
    assert finding["block"] == "layers.1" and finding["message"].endswith("skipped at 1 step(s): 2")


# --- update ratios: the update of the optimizer step itself ------------------------------------------------


class UpdateReference(Module):
    """float64 update ratios per block and in all, from copies of the weights taken by this module's own step
    hooks on the trainer's torch optimizer (registered after the callback's, so they run after it)."""

    def __init__(self, optimizer: str = "sgd"):
        super().__init__()
        self.optimizer_name = optimizer
        self.ratios: dict[int, dict] = {}

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return torch.optim.AdamW(self.parameters(), lr=0.01)

    def on_fit_start(self):
        optimizer = self.trainer.optimizers[0]
        self.hooks_before_ours = len(optimizer._optimizer_step_post_hooks)
        kept = {}

        def before(opt, *_):
            kept.update({n: p.detach().double().clone() for n, p in self.named_parameters()})

        def after(opt, *_):
            weights = {n: p.detach() for n, p in self.named_parameters()}
            self.ratios[self.trainer.global_step + 1] = update_ratios(kept, weights, BLOCKS)

        optimizer.register_step_pre_hook(before)
        optimizer.register_step_post_hook(after)


@pytest.mark.parametrize("optimizer, accumulate, clip", [("sgd", 1, None), ("adamw", 2, 0.01)])
def test_update_ratios_are_those_of_the_optimizer_step_against_saved_weights_in_float64(
        tmp_path, optimizer, accumulate, clip):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g))
    module, logger = UpdateReference(optimizer), Collect()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", precision="64-true", logger=logger, log_every_n_steps=1,
                         accumulate_grad_batches=accumulate, gradient_clip_val=clip, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[GradscopeLightningCallback(update_ratios=True, report_dir=tmp_path / "report")])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert next(module.parameters()).dtype == torch.float64
    assert sorted(module.ratios) == [1, 2, 3]  # one optimizer step per `accumulate` batches
    values = {m["gradscope/update_ratio/global"]: m for m in logger.metrics.values()
              if "gradscope/update_ratio/global" in m}
    assert len(values) == 3
    for step, logged in enumerate(values.values(), start=1):
        ref = module.ratios[step]
        assert ref["global"] > 0
        # pl_module.log_dict keeps float32 tensors: the logged values are rounded to float32
        assert math.isclose(logged["gradscope/update_ratio/global"], ref["global"], rel_tol=1e-6)
        for b in BLOCKS:
            assert math.isclose(logged[f"gradscope/update_ratio/{b}"], ref[b], rel_tol=1e-6)
            assert logged[f"gradscope/weight_norm/{b}"] > 0
    series = [r for r in Report.load(tmp_path / "report").series if r["block"] in [*BLOCKS, None]]
    assert len(series) == 3 * (len(BLOCKS) + 1)
    for r in series:  # the monitor's float64 values
        assert math.isclose(r["update_ratio"], module.ratios[r["step"]][r["block"] or "global"], rel_tol=1e-9)
    optimizer = trainer.optimizers[0]
    assert module.hooks_before_ours == 1 and len(optimizer._optimizer_step_post_hooks) == 1  # ours went at the end


def _global_ratio_hooks(module: Module) -> None:
    """float64 global update ratios of each step of the module's torch optimizer, from copies of the weights
    taken by this test's own step hooks on it, into ``module.ratios``."""
    module.ratios, kept = {}, {}
    optimizer = module.trainer.optimizers[0]
    optimizer.register_step_pre_hook(lambda *_: kept.update({n: p.detach().double().clone()
                                                              for n, p in module.named_parameters()}))

    def after(opt, *_):
        diff = torch.cat([(p.detach().double() - kept[n]).reshape(-1) for n, p in module.named_parameters()])
        before = torch.cat([kept[n].reshape(-1) for n, _ in module.named_parameters()])
        module.ratios[module.trainer.global_step + 1] = (torch.linalg.vector_norm(diff)
                                                         / torch.linalg.vector_norm(before)).item()

    optimizer.register_step_post_hook(after)


class NanAtStepTwoWithUpdates(NanAtStepTwo):
    def on_fit_start(self):
        _global_ratio_hooks(self)


class NoOptimizerStepAtTwo(Module):
    """Optimizer step 2 runs the closure (forward, backward, the callbacks' hook) but not the torch optimizer,
    as when a GradScaler finds inf/NaN."""

    def on_fit_start(self):
        _global_ratio_hooks(self)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        torch_optimizer = optimizer.optimizer
        if self.trainer.global_step == 1:  # what GradScaler.step does then: the closure runs, the step does not
            torch_optimizer.step = lambda closure=None, **kwargs: closure()
        try:
            optimizer.step(closure=optimizer_closure)  # Lightning counts the step either way
        finally:
            vars(torch_optimizer).pop("step", None)


@pytest.mark.parametrize("skip", ["on_nonfinite='skip'", "optimizer never steps"])
def test_a_skipped_step_has_an_update_ratio_of_zero_and_the_others_match(tmp_path, skip):
    report_dir = tmp_path / "report"
    if skip == "on_nonfinite='skip'":
        module = NanAtStepTwoWithUpdates()
        with pytest.warns(RuntimeWarning, match="step was skipped"):
            _fit(module, tmp_path, report_dir=report_dir, on_nonfinite="skip", update_ratios=True)
        assert module.ratios[2] == 0.0  # the optimizer stepped, without gradients
    else:
        module = NoOptimizerStepAtTwo()
        _fit(module, tmp_path, report_dir=report_dir, update_ratios=True)
        assert 2 not in module.ratios
    glob = {r["step"]: r["update_ratio"] for r in Report.load(report_dir).series if r["block"] is None}
    assert glob[2] == 0.0
    for step in (1, 3):
        assert module.ratios[step] > 0 and math.isclose(glob[step], module.ratios[step], rel_tol=1e-5)


def test_a_module_under_deepspeed_is_refused_with_the_ways_gradscope_follows_deepspeed():
    from types import SimpleNamespace

    from gradscope.errors import UsageError

    module = Module()
    next(module.parameters())._hp_mapping = None  # what DeepSpeed ZeRO-1/2 leaves on the parameters it manages
    callback = GradscopeLightningCallback()
    with pytest.raises(UsageError, match=r"^GradscopeLightningCallback does not follow Lightning's DeepSpeed "
                                         r"strategy.*GradientMonitor\(engine\).*add_gradscope_callback\(trainer\)"):
        callback.on_fit_start(SimpleNamespace(strategy=object(), is_global_zero=True), module)
    assert callback.monitor is None
