"""GradscopeCallback inside a real transformers.Trainer on a tiny BERT built from a config (no download)."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from gradscope.errors import GradscopeError, UsageError  # noqa: E402
from gradscope.integrations.hf import GradscopeCallback, add_gradscope_callback  # noqa: E402
from gradscope.report import Report  # noqa: E402
from stats_reference import update_ratios  # noqa: E402

LAYERS = [f"bert.encoder.layer.{i}" for i in range(2)]


class Reference(transformers.TrainerCallback):
    """float64 norms of the gradients the optimizer is about to consume, per step."""

    def __init__(self):
        self.steps: dict[int, dict] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        named = [(n, p.grad.double().reshape(-1)) for n, p in model.named_parameters() if p.grad is not None]
        norm = lambda gs: torch.linalg.vector_norm(torch.cat(gs)).item()  # noqa: E731
        row = {"global": norm([g for _, g in named])}
        for block in LAYERS:
            row[block] = norm([g for n, g in named if n.startswith(block + ".")])
        self.steps[state.global_step + 1] = row


def tiny_trainer(tmp_path, *, max_grad_norm=0.0, accumulation=1, steps=3, logging_steps=1):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    model = transformers.BertForMaskedLM(config)
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(16):
        ids = torch.randint(5, 64, (12,), generator=g)
        labels = torch.where(torch.rand(12, generator=g) < 0.3, ids, torch.full_like(ids, -100))
        labels[0] = ids[0]
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
        max_steps=steps, logging_steps=logging_steps, max_grad_norm=max_grad_norm, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=data)


def logged(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_global_norm_equals_trainer_grad_norm_and_blocks_match_float64(tmp_path, accumulation):
    trainer = tiny_trainer(tmp_path, accumulation=accumulation)
    callback = add_gradscope_callback(trainer, report_dir=tmp_path / "report")
    reference = Reference()
    trainer.add_callback(reference)
    trainer.train()
    rows = logged(trainer)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        # the Trainer's norm is fp32 foreach norms; ours sums fp32 lanes into fp64
        assert math.isclose(row["gradscope/no_clip/grad_norm"], row["grad_norm"], rel_tol=1e-5)
        ref = reference.steps[row["step"]]
        assert math.isclose(row["gradscope/no_clip/grad_norm"], ref["global"], rel_tol=1e-6)
        for block in LAYERS:
            assert math.isclose(row[f"gradscope/no_clip/grad_norm/{block}"], ref[block], rel_tol=1e-6)
        assert row["gradscope/nonfinite"] == 0
    assert callback.monitor is None  # closed at the end of training
    report = Report.load(tmp_path / "report")
    assert report.meta["clip_stage"] == "no_clip"
    assert report.meta["gradient_accumulation_steps"] == accumulation
    assert {r["step"] for r in report.series} == {1, 2, 3}


class ReferenceClip:
    """Wraps the trainer's ``accelerator.clip_grad_norm_`` before training: float64 norms of the gradients the
    clip receives (pre-clip), per step, and what it returns."""

    def __init__(self, trainer):
        self.steps: dict[int, dict] = {}
        self.trainer = trainer
        original = trainer.accelerator.clip_grad_norm_

        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            parameters = list(parameters)
            named = {id(p): n for n, p in trainer.model.named_parameters()}
            grads = [(named[id(p)], p.grad.double().reshape(-1)) for p in parameters if p.grad is not None]
            norm = lambda gs: torch.linalg.vector_norm(torch.cat(gs)).item()  # noqa: E731
            row = {"global": norm([g for _, g in grads])}
            row.update({b: norm([g for n, g in grads if n.startswith(b + ".")]) for b in LAYERS})
            self.steps[trainer.state.global_step + 1] = row
            return original(parameters, max_norm, *args, **kwargs)

        trainer.accelerator.clip_grad_norm_ = clip_grad_norm_
        self.wrapped = clip_grad_norm_


def test_with_clipping_the_main_series_is_pre_clip_and_the_post_clip_global_is_kept(tmp_path):
    trainer = tiny_trainer(tmp_path, max_grad_norm=0.05, steps=3)
    pre = ReferenceClip(trainer)
    add_gradscope_callback(trainer, report_dir=tmp_path / "report")
    post = Reference()  # at on_pre_optimizer_step: after the clip
    trainer.add_callback(post)
    trainer.train()
    rows = logged(trainer)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert not any(k.startswith(("gradscope/no_clip", "gradscope/after_clip")) for k in row)
        ref = pre.steps[row["step"]]
        assert ref["global"] > 0.05  # every step was clipped
        assert math.isclose(row["gradscope/pre_clip/grad_norm"], ref["global"], rel_tol=1e-6)
        assert math.isclose(row["gradscope/pre_clip/grad_norm"], row["grad_norm"], rel_tol=1e-5)  # the Trainer's
        for block in LAYERS:
            assert math.isclose(row[f"gradscope/pre_clip/grad_norm/{block}"], ref[block], rel_tol=1e-6)
        assert math.isclose(row["gradscope/post_clip/grad_norm"], post.steps[row["step"]]["global"], rel_tol=1e-6)
    assert trainer.accelerator.clip_grad_norm_ is pre.wrapped  # ours is gone, the one set before is back
    report = Report.load(tmp_path / "report")
    assert report.meta["clip_stage"] == "pre_clip"
    glob = sorted((r for r in report.series if r["block"] is None), key=lambda r: r["step"])
    assert [r["clip_max_norm"] for r in glob] == [0.05] * 3
    assert all(math.isclose(r["grad_l2"], pre.steps[r["step"]]["global"], rel_tol=1e-6) for r in glob)
    assert all(math.isclose(r["grad_l2_post_clip"], post.steps[r["step"]]["global"], rel_tol=1e-6) for r in glob)


def test_a_callback_that_never_sees_its_trainer_says_its_values_are_after_the_clip(tmp_path):
    trainer = tiny_trainer(tmp_path, max_grad_norm=0.05, steps=2)
    trainer.add_callback(GradscopeCallback())
    reference = Reference()
    trainer.add_callback(reference)
    with pytest.warns(RuntimeWarning, match="after the Trainer's clipping.*add_gradscope_callback"):
        trainer.train()
    for row in logged(trainer):
        assert "gradscope/pre_clip/grad_norm" not in row
        after = row["gradscope/after_clip/grad_norm"]
        assert row["grad_norm"] > 0.05 >= after * (1 - 1e-6)
        assert math.isclose(after, reference.steps[row["step"]]["global"], rel_tol=1e-6)


class Snapshots(transformers.TrainerCallback):
    """The weights and the optimizer's state after each optimizer step."""

    def __init__(self):
        self.steps: dict[int, tuple[dict, dict]] = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.steps[state.global_step] = (weights, copy.deepcopy(optimizer.state_dict()["state"]))


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.05])
def test_skip_leaves_the_weights_and_adam_state_of_a_nonfinite_step_as_they_were(tmp_path, max_grad_norm):
    trainer = tiny_trainer(tmp_path, max_grad_norm=max_grad_norm, steps=3)
    _nan_at_step(trainer.model, 2)
    callback = add_gradscope_callback(trainer, on_nonfinite="skip", report_dir=tmp_path / "report")
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    with pytest.warns(RuntimeWarning, match="at step 2; first block .*bert.encoder.layer.1.*step was skipped"):
        trainer.train()
    (w1, s1), (w2, s2), (w3, s3) = (snapshots.steps[k] for k in (1, 2, 3))
    assert all(torch.equal(w1[n], w2[n]) for n in w1)  # step 2 changed no weight ...
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])  # ... and no moment, no step count
    changed = [n for n in w2 if not torch.equal(w2[n], w3[n])]
    assert changed and all(torch.isfinite(w).all() for w in w3.values())  # step 3 trained on
    assert callback.monitor is None
    report = Report.load(tmp_path / "report")
    [finding] = [f for f in report.findings if f["kind"] == "non-finite"]
    assert finding["block"] == "bert.encoder.layer.1" and finding["severity"] == "warning"
    assert finding["message"].endswith("; the optimizer step was skipped at 1 step(s): 2")


def test_plain_callbacks_argument_warns_when_report_to_would_miss_values(tmp_path):
    trainer = tiny_trainer(tmp_path, steps=1)
    callback = GradscopeCallback()
    trainer.add_callback(callback)
    trainer.args.report_to = ["none-such"]  # only read by the callback's check
    with pytest.warns(RuntimeWarning, match="add_gradscope_callback"):
        callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=trainer.model)
    callback.monitor.close()


def test_monitor_options_pass_through_and_only_training_logs_get_values(tmp_path):
    trainer = tiny_trainer(tmp_path, steps=5, logging_steps=2)
    callback = add_gradscope_callback(trainer, every=2, flush_every=1)
    assert callback.config.keep_last == 1024  # no report: only recent steps are kept
    monitors = []
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_train_begin": lambda self, *a, **k: monitors.append(callback.monitor)})())
    trainer.train()
    assert monitors[0].config.every == 2 and monitors[0].config.flush_every == 1
    assert [r["step"] for r in logged(trainer)] == [2, 4]
    assert all("gradscope/no_clip/grad_norm" in r for r in logged(trainer))
    summary = [h for h in trainer.state.log_history if "train_runtime" in h]
    assert summary and not any(k.startswith("gradscope/") for k in summary[0])  # step 5: no training log
    with pytest.raises(UsageError, match="unknown GradientMonitor option.*evry"):
        GradscopeCallback(evry=2)
    assert GradscopeCallback(report_dir=tmp_path / "r").config.keep_last is None  # the report has every step


def test_a_report_dir_that_cannot_be_written_fails_before_training_and_one_lost_after_it_warns(tmp_path):
    (tmp_path / "taken").write_text("a file")
    trainer = tiny_trainer(tmp_path, steps=2)
    with pytest.raises(UsageError, match=r"^`report_dir=.*taken.*is a file, not a directory; choose another `report_dir`"):
        add_gradscope_callback(trainer, report_dir=tmp_path / "taken" / "report")
    add_gradscope_callback(trainer, report_dir=tmp_path / "report")
    (tmp_path / "report").write_text("made a file while training ran")
    with pytest.warns(RuntimeWarning, match="the report could not be written to .*report"):
        trainer.train()  # returns: the script goes on to save the trained model
    assert trainer.state.global_step == 2


def _nan_at_step(model, step: int) -> None:
    """The gradient of one weight turns NaN in the backward pass of optimizer step ``step`` (1-based)."""
    calls = []
    weight = model.bert.encoder.layer[1].output.dense.weight
    weight.register_hook(lambda g: (calls.append(1), g * math.nan if len(calls) == step else g)[1])


def _own_clip(trainer, *, spreads: bool) -> list:
    """Replace the clip through which the Trainer computes its ``grad_norm`` by one written here, so the test
    does not depend on what the installed accelerate does with a non-finite total norm. ``spreads``: scale
    every gradient by ``min(max_norm / total, 1)`` as torch's ``clip_grad_norm_`` does, which is NaN when the
    total is (every gradient turns NaN); else only measure, leaving the NaN where it was born. Returns the list
    of bounds the Trainer asked for, to check it went through here."""
    bounds = []

    def clip_grad_norm_(parameters, max_norm, norm_type=2):
        bounds.append(max_norm)
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if spreads:
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef)
        return total

    trainer.accelerator.clip_grad_norm_ = clip_grad_norm_
    return bounds


# What gradscope says of a NaN born in one weight at step 3, by what the clip before the record did with it.
NAN_MESSAGES = {
    # a clip that spreads: the origin cannot be read from this step, instead of naming every block
    "spreading clip": r"step 3; every gradient value is non-finite, so where it began cannot be read",
    # a clip that leaves it in place: exactly that weight's values, and the block holding it
    "clip in place": r"^gradscope: 512 non-finite gradient value\(s\) at step 3; first block \(execution order\): "
                     r"bert\.encoder\.layer\.1\. ",
}


@pytest.mark.parametrize("clip", list(NAN_MESSAGES))
@pytest.mark.parametrize("install", ["add_gradscope_callback", "callbacks argument"])
def test_a_run_stopped_by_an_error_keeps_its_report_and_lets_the_model_go(tmp_path, install, clip):
    trainer = tiny_trainer(tmp_path, steps=4)
    _nan_at_step(trainer.model, 3)
    bounds = _own_clip(trainer, spreads=clip == "spreading clip")
    options = dict(report_dir=tmp_path / "report", on_nonfinite="raise")
    if install == "add_gradscope_callback":
        add_gradscope_callback(trainer, **options)
    else:
        trainer.add_callback(GradscopeCallback(**options))
    with pytest.raises(GradscopeError, match=NAN_MESSAGES[clip]):
        trainer.train()
    assert bounds == [math.inf] * 3  # the Trainer's grad_norm went through the clip above, once per step
    if install == "add_gradscope_callback":  # its trainer.train wrapper saw the error
        report = Report.load(tmp_path / "report")
        assert sorted({r["step"] for r in report.series}) == [1, 2, 3]
        assert report.meta["stopped_by"].startswith("GradscopeError: ")
        finding = next(f for f in report.findings if f["kind"] == "non-finite")
        if clip == "clip in place":
            assert finding["block"] == "bert.encoder.layer.1" and finding["evidence"].startswith("512 non-finite")
        else:
            assert finding["block"] is None and "where it began cannot be read" in finding["evidence"]
            assert " in block " not in finding["message"]  # every block holds NaN: none is named as the first
    else:  # no Trainer event tells a callback of the error: no report, but the next run is not refused
        assert not (tmp_path / "report").exists()
    again = tiny_trainer(tmp_path, steps=2)
    again.model = again.model_wrapped = trainer.model  # the same model object, trained again
    callback = add_gradscope_callback(again)
    again.train()  # no "already attached"
    assert [r["gradscope/no_clip/grad_norm"] > 0 for r in logged(again)] == [True, True]
    assert callback.monitor is None


def test_a_callback_without_its_trainer_under_deepspeed_says_to_add_it_through_the_trainer(tmp_path):
    trainer = tiny_trainer(tmp_path, steps=1)
    trainer.args.deepspeed = {"zero_optimization": {"stage": 2}}  # what TrainingArguments(deepspeed=...) holds
    callback = GradscopeCallback()  # passed in callbacks=[...]: it never sees the trainer, nor its engine
    with pytest.raises(UsageError, match=r"^GradscopeCallback: this Trainer runs DeepSpeed, whose gradients the "
                                         r"callback reads at the engine's step.*add_gradscope_callback\(trainer\)"):
        callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=trainer.model)
    assert callback.monitor is None


# --- update ratios: the update of the optimizer step itself ------------------------------------------------


class UpdateReference(transformers.TrainerCallback):
    """float64 update ratios ||W_after - W_before|| / ||W_before|| per block and in all, from copies of the
    weights taken by this test's own step hooks on the torch optimizer that the Trainer's
    ``AcceleratedOptimizer`` wraps (registered after the monitor's, so they run after it)."""

    def __init__(self):
        self.ratios: dict[int, dict] = {}
        self.optimizer = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.optimizer = optimizer.optimizer
        self.hooks_before_ours = len(self.optimizer._optimizer_step_post_hooks)  # the monitor's, if it runs first
        kept = {}

        def before(opt, *_):
            kept.update({n: p.detach().double().clone() for n, p in model.named_parameters()})

        def after(opt, *_):
            weights = {n: p.detach() for n, p in model.named_parameters()}
            # global_step counts the step after the update
            self.ratios[state.global_step + 1] = update_ratios(kept, weights, LAYERS)

        self.optimizer.register_step_pre_hook(before)
        self.optimizer.register_step_post_hook(after)


def _update_run(tmp_path, *, optim, steps=3, **trainer_options):
    trainer = tiny_trainer(tmp_path, steps=steps, **trainer_options)
    trainer.args.optim = optim
    trainer.model.double()  # float64 weights: the monitor's update ratios are then exact to fp64 rounding
    return trainer


@pytest.mark.parametrize("optim, accumulation, max_grad_norm", [
    ("sgd", 1, 0.0), ("adamw_torch", 2, 0.0), ("adamw_torch", 1, 0.05), ("sgd", 2, 0.05)])
def test_update_ratios_are_those_of_the_optimizer_step_against_saved_weights_in_float64(
        tmp_path, optim, accumulation, max_grad_norm):
    trainer = _update_run(tmp_path, optim=optim, accumulation=accumulation, max_grad_norm=max_grad_norm)
    callback = add_gradscope_callback(trainer, update_ratios=True, report_dir=tmp_path / "report")
    reference = UpdateReference()
    trainer.add_callback(reference)
    trainer.train()
    assert type(reference.optimizer) is {"sgd": torch.optim.SGD, "adamw_torch": torch.optim.AdamW}[optim]
    assert next(trainer.model.parameters()).dtype == torch.float64
    assert sorted(reference.ratios) == [1, 2, 3]  # one optimizer step per `accumulation` micro-batches
    rows = logged(trainer)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        ref = reference.ratios[row["step"]]
        assert ref["global"] > 0
        assert math.isclose(row["gradscope/update_ratio/global"], ref["global"], rel_tol=1e-9)
        for block in LAYERS:
            assert math.isclose(row[f"gradscope/update_ratio/{block}"], ref[block], rel_tol=1e-9)
            assert row[f"gradscope/weight_norm/{block}"] > 0
    report = Report.load(tmp_path / "report")
    glob = {r["step"]: r["update_ratio"] for r in report.series if r["block"] is None}
    assert all(math.isclose(glob[step], reference.ratios[step]["global"], rel_tol=1e-9) for step in (1, 2, 3))
    assert callback.monitor is None
    assert reference.hooks_before_ours == 1  # the monitor's post-hook on the torch optimizer ...
    assert len(reference.optimizer._optimizer_step_post_hooks) == 1  # ... went when training ended


def _optimizer_never_steps_at(trainer, step: int) -> None:
    """The Trainer's optimizer step ``step`` never reaches the torch optimizer, as when a GradScaler finds
    inf/NaN: set on the AcceleratedOptimizer when training begins."""

    class Skipper(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            original = optimizer.step
            optimizer.step = lambda *a, **k: None if state.global_step + 1 == step else original(*a, **k)

    trainer.add_callback(Skipper())


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("skip", ["on_nonfinite='skip'", "optimizer never steps"])
def test_a_skipped_step_has_an_update_ratio_of_zero_and_the_others_match(tmp_path, skip):
    trainer = _update_run(tmp_path, optim="adamw_torch")
    options = {"update_ratios": True}
    if skip == "on_nonfinite='skip'":
        _nan_at_step(trainer.model, 2)
        options["on_nonfinite"] = "skip"
    else:
        _optimizer_never_steps_at(trainer, 2)
    add_gradscope_callback(trainer, **options)
    reference = UpdateReference()
    trainer.add_callback(reference)
    if skip == "on_nonfinite='skip'":
        with pytest.warns(RuntimeWarning, match="step was skipped"):
            trainer.train()
    else:
        trainer.train()
    rows = {r["step"]: r for r in logged(trainer)}
    assert rows[2]["gradscope/update_ratio/global"] == 0.0
    assert all(rows[2][f"gradscope/update_ratio/{b}"] == 0.0 for b in LAYERS)
    if skip == "on_nonfinite='skip'":  # the optimizer stepped, without gradients: the reference saw it
        assert reference.ratios[2]["global"] == 0.0
    else:
        assert 2 not in reference.ratios
    for step in (1, 3):
        assert math.isclose(rows[step]["gradscope/update_ratio/global"], reference.ratios[step]["global"],
                            rel_tol=1e-9)


def test_update_ratios_every_n_steps_log_the_sampled_steps_only(tmp_path):
    trainer = _update_run(tmp_path, optim="sgd", steps=4)
    add_gradscope_callback(trainer, update_ratios=2)
    reference = UpdateReference()
    trainer.add_callback(reference)
    trainer.train()
    rows = {r["step"]: r for r in logged(trainer)}
    assert [("gradscope/update_ratio/global" in rows[s]) for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert all("gradscope/weight_norm/global" in rows[s] for s in (1, 2, 3, 4))  # weight norms at every step
    for step in (2, 4):
        assert math.isclose(rows[step]["gradscope/update_ratio/global"], reference.ratios[step]["global"],
                            rel_tol=1e-9)
