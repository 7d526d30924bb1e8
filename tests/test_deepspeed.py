"""DeepSpeed ZeRO 1, 2 and 3 on CPU (2 processes, gloo): the monitor's statistics equal the unsharded model's.

Plain ``deepspeed.initialize`` loops: every recorded statistic (the whole per-parameter table: sums, sums of
squares and of |g|, max |g|, zero and non-finite counts, element counts), weight norms, update ratios, dL/dh and
DeepSpeed's pre- and post-clip norms, against a single-process float64 reference of the same model, data and
optimizer in this process. The Trainer runs (ZeRO-2, ZeRO-3) check the logged and reported values against
DeepSpeed's own gradient norm and full gradients and weights gathered in the run by DeepSpeed's own API
(``safe_get_full_grad``, ``safe_get_full_fp32_param``), and step 1 against the unsharded model here.

Each run is this file as ``python -m torch.distributed.run --nproc_per_node 2 test_deepspeed.py KIND DIR``,
with a timeout: a collective one rank misses fails the test instead of hanging it (the group's own timeout
is 60 s). DeepSpeed's shared-memory comm op is switched off before its first distributed init: built on
first use, it takes minutes, and gloo does the work.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from typing import Optional

import pytest
import torch
from torch import nn

from helpers_models import classification_dataset, classification_tensors, tiny_bert_classifier
from stats_reference import FIELDS, expected_stats, retain_output_grads, update_ratios

if importlib.util.find_spec("deepspeed") is None:  # importing it here would cost seconds at collection
    pytest.skip("deepspeed is not installed (the test extra installs it)", allow_module_level=True)

WORLD, STEPS, RTOL = 2, 3, 1e-5  # fp32 gradients reduced over ranks: rounding only
BLOCKS = ["blocks.0", "blocks.1", "blocks.2"]
# ZeRO-Offload: the optimizer (and under ZeRO-3 the parameters) on the CPU, its gradients in CPU buffers of their own.
OFFLOAD = {"offload_optimizer": {"device": "cpu"}}
# (name, ZeRO stage, gradient accumulation steps, DeepSpeed's gradient_clipping, more zero_optimization config)
CASES = [("zero1", 1, 1, 0.0, {}), ("zero2", 2, 1, 0.0, {}), ("zero3", 3, 1, 0.0, {}),
         ("zero2_clip_gas2", 2, 2, 0.05, {}), ("zero3_clip_gas2", 3, 2, 0.05, {}),
         ("zero1_offload", 1, 1, 0.0, OFFLOAD), ("zero2_offload_clip", 2, 1, 0.05, OFFLOAD),
         ("zero3_offload", 3, 1, 0.0, {**OFFLOAD, "offload_param": {"device": "cpu"}})]
LR, WEIGHT_DECAY = 0.01, 0.1
# Half precision: the statistics are of the gradient the optimizer applies, fp16's loss scale divided out.
PRECISION_CASES = [("zero2_bf16", 2, "bf16"), ("zero3_fp16", 3, "fp16")]
# Without ZeRO the gradients are in param.grad, reduced over the ranks as under DDP: rank 0 records.
STAGE0_CASES = [("zero0", "fp32"), ("zero0_fp16", "fp16")]


class Net(nn.Module):
    """Uneven sizes (partitions split parameters, ZeRO-3 pads the last one; ``head.bias`` has one element) and two
    dead ReLU units: exact zeros in the gradients of ``inp`` and of ``blocks.0.weight``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.blocks = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 7), nn.Linear(7, 5))
        self.head = nn.Linear(5, 1)
        with torch.no_grad():
            self.inp.bias[:2] = -10.0  # never active for these inputs

    def forward(self, x):
        return self.head(torch.tanh(self.blocks(torch.relu(self.inp(x)))))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)


def loss_of(net, x, y):
    return ((net(x) - y) ** 2).mean()


def make_optimizer(params):
    return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)


def ds_config(stage: int, gas: int, clip: float, micro: int, zero: Optional[dict] = None) -> dict:
    return {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": gas, "gradient_clipping": clip,
            "zero_optimization": {"stage": stage, **(zero or {})}, "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10 ** 9}


def _init_deepspeed():
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # before the first distributed init
    import datetime

    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=60))
    return deepspeed


# --- the workers ---------------------------------------------------------------------------------------------


def plain_worker(out: str) -> None:
    from contextlib import ExitStack
    from unittest import mock

    import torch.distributed as dist

    from gradscope.errors import UsageError
    from gradscope.monitor import GradientMonitor

    deepspeed = _init_deepspeed()
    rank = dist.get_rank()
    x, y = batch()
    for name, stage, gas, clip, zero in CASES:
        micro = 8 // (WORLD * gas)
        engine = _engine(deepspeed, stage, gas, clip, micro, zero)
        monitor = GradientMonitor(engine, update_ratios=True, activation_grads=True)
        deepspeed_norms = []
        for _ in range(STEPS):
            for m in range(gas):  # this rank's micro-batches of the step: together, its quarter of the batch
                start = rank * micro * gas + m * micro
                engine.backward(loss_of(engine, x[start:start + micro], y[start:start + micro]))
                engine.step()
            deepspeed_norms.append(float(engine.get_global_grad_norm()))
        names = [n for n in ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast")
                 if hasattr(dist, n)]
        with ExitStack() as stack:
            calls = [stack.enter_context(mock.patch.object(dist, n, wraps=getattr(dist, n))) for n in names]
            history = monitor.history  # the flush: one collective, on every rank
        refusals = {}
        try:
            monitor.step()
        except UsageError as exc:
            refusals["step"] = str(exc)
        monitor.close()
        for what, call in (("module", lambda: GradientMonitor(engine.module)),
                           ("optimizer", lambda: GradientMonitor(engine, optimizer=engine.optimizer))):
            try:
                call()
            except UsageError as exc:
                refusals[what] = str(exc)
        torch.save({"mode": monitor.mode, "collectives": sum(c.call_count for c in calls),
                    "names": history.param_names, "blocks": history.blocks, "steps": history.steps.tolist(),
                    "table": history.table, "numel": history.numel, "post_clip": history.post_clip_l2,
                    "weight_l2": history.block_weight_l2(), "global_weight_l2": history.global_weight_l2(),
                    "update_ratio": history.block_update_ratio(),
                    "global_update_ratio": history.global_update_ratio(),
                    "act_grad_l2": history.block_act_grad_l2(), "deepspeed_norms": deepspeed_norms,
                    "refusals": refusals, "step_restored": "step" not in vars(engine)},
                   f"{out}/{name}_{rank}.pt")
    for name, stage, precision in PRECISION_CASES + [(name, 0, precision) for name, precision in STAGE0_CASES]:
        torch.save(_precision_run(deepspeed, stage, precision, x, y, rank), f"{out}/{name}_{rank}.pt")
    dist.barrier()


def _engine(deepspeed, stage: int, gas: int, clip: float, micro: int, zero: Optional[dict] = None, **config):
    net = make_net()
    engine, *_ = deepspeed.initialize(model=net, optimizer=make_optimizer(net.parameters()),
                                      config={**ds_config(stage, gas, clip, micro, zero), **config})
    return engine


def _precision_run(deepspeed, stage: int, precision: str, x, y, rank: int) -> dict:
    """Three steps in ``precision``: the monitor's records beside the statistics of the full gradients (divided
    by the loss scale) and the weights the optimizer steps, read at its step: under ZeRO gathered by
    DeepSpeed's own API (fp32 master weights), without ZeRO ``param.grad`` and the model's weights."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from gradscope.monitor import GradientMonitor

    # The CPU accelerator allows fp16 only where oneDNN has fp16 kernels; the engine's path is the same.
    get_accelerator().is_fp16_supported = lambda: True
    options = {precision: {"enabled": True, **({"initial_scale_power": 8} if precision == "fp16" else {})}}
    engine = _engine(deepspeed, stage, 1, 0.0, 4, **({} if precision == "fp32" else options))
    monitor = GradientMonitor(engine, weight_norms=True)
    named = list(engine.module.named_parameters())
    reference = {"stats": [], "full_weight_l2": []}
    stepping = engine.optimizer
    original = stepping.step

    def full(p):
        if stage == 0:
            return p.grad, p.detach()
        return safe_get_full_grad(p), safe_get_full_fp32_param(p)

    def step(*args, **kwargs):
        scale = float(getattr(stepping, "loss_scale", None) or 1.0)
        values = {n: full(p) for n, p in named}
        reference["stats"].append([expected_stats(g.double() / scale) for g, _ in values.values()])
        reference["full_weight_l2"].append([_l2([w for n, (_, w) in values.items() if n.startswith(b + ".")])
                                            for b in BLOCKS])
        reference["loss_scale"] = scale
        return original(*args, **kwargs)

    stepping.step = step
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    local = slice(rank * 4, rank * 4 + 4)
    for _ in range(STEPS):
        engine.backward(loss_of(engine, x[local].to(dtype), y[local].to(dtype)))
        engine.step()
    out = {"mode": monitor.mode, "active": monitor.active,
           "grad_dtype": str(next(iter(engine.module.parameters())).dtype), **reference}
    if monitor.active:
        history = monitor.history
        out.update(table=history.table, numel=history.numel, weight_l2=history.block_weight_l2())
    monitor.close()
    return out


# The Trainer runs: a 4-layer BERT, 2 x 4 samples a step, clipped at every step (its norm is about 0.5).
N_LAYERS, SAMPLES_PER_STEP, MAX_GRAD_NORM = 4, 8, 0.05  # 8 samples a step: 2 ranks x 4, in 1 or 2 micro-batches
BERT_BLOCKS = [f"bert.encoder.layer.{i}" for i in range(N_LAYERS)]


def _l2(tensors) -> float:
    return math.sqrt(sum(t.double().square().sum().item() for t in tensors))


def trainer_worker(out: str, stage: int, accumulation: int) -> None:
    import torch.distributed as dist
    from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    deepspeed = _init_deepspeed()
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from gradscope.integrations import add_gradscope_callback

    class FullValues(TrainerCallback):
        """At each optimizer step (DeepSpeed's ZeRO optimizer's step, inside engine.step, before its clip):
        the full gradients and the full fp32 weights before and after the step, gathered by DeepSpeed's own
        API (collectives that every rank calls in the same order)."""

        def __init__(self):
            self.steps = []

        def on_train_begin(self, args, state, control, **kwargs):
            model = trainer.model_wrapped  # the engine
            zero_optimizer = model.optimizer
            original = zero_optimizer.step
            named = list(model.module.named_parameters())

            def step(*a, **kw):
                grads = {n: safe_get_full_grad(p) for n, p in named}
                before = {n: safe_get_full_fp32_param(p).double() for n, p in named}
                result = original(*a, **kw)
                after = {n: safe_get_full_fp32_param(p).double() for n, p in named}
                self.steps.append({
                    "global": _l2(grads.values()),
                    "blocks": {b: _l2([g for n, g in grads.items() if n.startswith(b + ".")]) for b in BERT_BLOCKS},
                    "update_ratio": update_ratios(before, after, BERT_BLOCKS)})
                return result

            zero_optimizer.step = step

    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
          "zero_force_ds_cpu_optimizer": False}
    args = TrainingArguments(
        output_dir=f"{out}/trainer", use_cpu=True, max_steps=STEPS, logging_steps=1, report_to=[],
        save_strategy="no", per_device_train_batch_size=SAMPLES_PER_STEP // (WORLD * accumulation),
        gradient_accumulation_steps=accumulation, max_grad_norm=MAX_GRAD_NORM, seed=0,
        learning_rate=1e-3, train_sampling_strategy="sequential", disable_tqdm=True, deepspeed=ds,
        average_tokens_across_devices=False)  # True multiplies this model's loss by the world size
    trainer = Trainer(model=BertForSequenceClassification.from_pretrained(f"{out}/model"), args=args,
                      train_dataset=classification_dataset())
    callback = add_gradscope_callback(trainer, report_dir=f"{out}/report", update_ratios=True,
                                      activation_grads=True)
    reference = FullValues()
    trainer.add_callback(reference)
    trainer.train()
    rank = dist.get_rank()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"log_history": trainer.state.log_history, "reference": reference.steps,
                   "engine": type(trainer.model_wrapped).__name__, "monitor_left": callback.monitor is not None,
                   "engine_step_restored": "step" not in vars(trainer.model_wrapped)}, f)
    dist.barrier()


# --- running them ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, *args, timeout: int = 240) -> None:
    """This file's ``args`` worker on 2 processes; its output in the assertion message when it fails."""
    import gradscope

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gradscope.__file__)))  # the workers import it
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([package_root, tests, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), os.path.abspath(__file__), *args, str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]


# --- the single-process references -----------------------------------------------------------------------------


def plain_reference(clip: float) -> list[dict]:
    """Each step of the unsharded model on the whole batch, in float64 from plain autograd: the statistics of
    every gradient before the clip, the total norm, the weights before the step and its update (copies),
    dL/dh at each block's output (``retain_grad``)."""
    net = make_net()
    opt = make_optimizer(net.parameters())
    outputs = retain_output_grads(net, BLOCKS)
    x, y = batch()
    steps = []
    for _ in range(STEPS):
        loss_of(net, x, y).backward()
        named = list(net.named_parameters())
        stats = [expected_stats(p.grad) for _, p in named]
        total = _l2([p.grad for _, p in named])
        before = {n: p.detach().double() for n, p in named}
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        after = {n: p.detach().double() for n, p in named}
        opt.zero_grad()
        steps.append({"names": [n for n, _ in named], "stats": stats, "total": total,
                      "weight_l2": [_l2([w for n, w in before.items() if n.startswith(b + ".")]) for b in BLOCKS],
                      "global_weight_l2": _l2(before.values()), "update_ratio": update_ratios(before, after, BLOCKS),
                      "act_grad_l2": [outputs[b].grad.double().norm().item() for b in BLOCKS]})
    return steps


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepspeed_plain")
    _launch(out, "plain")
    return {name: [torch.load(out / f"{name}_{r}.pt", weights_only=False) for r in range(WORLD)]
            for name, *_ in CASES + PRECISION_CASES + STAGE0_CASES}


# --- plain loops ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,stage,gas,clip,zero", CASES, ids=[c[0] for c in CASES])
def test_zero_plain_loop_records_the_unsharded_models_statistics(plain_runs, name, stage, gas, clip, zero):
    zero, one = plain_runs[name]
    ref = plain_reference(clip)
    assert zero["mode"] == one["mode"] == "sharded"
    assert zero["collectives"] == one["collectives"] == 1  # the flush's one all_gather, no gathered gradient
    assert torch.equal(zero["table"], one["table"])  # every rank holds the combined values
    assert list(zero["names"]) == ref[0]["names"] and list(zero["blocks"]) == BLOCKS
    assert zero["steps"] == list(range(1, STEPS + 1))  # one record per optimizer step, whatever the accumulation
    _assert_table(zero["table"], zero["numel"], [step["stats"] for step in ref])
    for s, step in enumerate(ref):
        assert math.isclose(zero["global_weight_l2"][s].item(), step["global_weight_l2"], rel_tol=RTOL)
        for b, block in enumerate(BLOCKS):
            assert math.isclose(zero["weight_l2"][s, b].item(), step["weight_l2"][b], rel_tol=RTOL), (s, block)
            assert math.isclose(zero["update_ratio"][s, b].item(), step["update_ratio"][block], rel_tol=1e-4), \
                (s, block)
            assert math.isclose(zero["act_grad_l2"][s, b].item(), step["act_grad_l2"][b], rel_tol=RTOL), (s, block)
        assert math.isclose(zero["global_update_ratio"][s].item(), step["update_ratio"]["global"], rel_tol=1e-4)
        if clip > 0:  # DeepSpeed clipped inside engine.step, after the monitor read the gradients
            assert math.isclose(zero["deepspeed_norms"][s], step["total"], rel_tol=RTOL)
            assert math.isclose(zero["post_clip"][s].item(), clip * step["total"] / (step["total"] + 1e-6),
                                rel_tol=RTOL)
        else:
            assert math.isnan(zero["post_clip"][s].item())
    assert sum(want["zeros"] for want in ref[0]["stats"]) >= 10  # the dead units' exact zeros were counted


def _assert_table(table, numel, steps_stats):
    for s, stats in enumerate(steps_stats):
        for i, want in enumerate(stats):
            got = dict(zip(FIELDS, table[s, i].tolist() + [numel[s, i].item()]))
            for field in ("sumsq", "sumabs", "maxabs"):
                assert math.isclose(got[field], want[field], rel_tol=RTOL, abs_tol=1e-12), (s + 1, i, field)
            assert abs(got["sum"] - want["sum"]) <= RTOL * want["sumabs"] + 1e-12, (s + 1, i)
            assert (got["nonfinite"], got["zeros"], got["numel"]) == (0, want["zeros"], want["numel"]), (s + 1, i)


@pytest.mark.parametrize("name,stage,precision", PRECISION_CASES, ids=[c[0] for c in PRECISION_CASES])
def test_zero_half_precision_records_the_gradient_the_optimizer_applies(plain_runs, name, stage, precision):
    zero, one = plain_runs[name]
    assert zero["grad_dtype"] == ("torch.bfloat16" if precision == "bf16" else "torch.float16")
    assert zero["loss_scale"] == (256.0 if precision == "fp16" else 1.0)  # fp16's statistics are divided by it
    assert torch.equal(zero["table"], one["table"])
    _assert_table(zero["table"], zero["numel"], zero["stats"])
    for s, blocks in enumerate(zero["full_weight_l2"]):  # the fp32 master weights
        for b, want in enumerate(blocks):
            assert math.isclose(zero["weight_l2"][s][b].item(), want, rel_tol=RTOL)


@pytest.mark.parametrize("name,precision", STAGE0_CASES, ids=[c[0] for c in STAGE0_CASES])
def test_deepspeed_without_zero_is_recorded_as_ddp_by_rank_zero(plain_runs, name, precision):
    zero, one = plain_runs[name]
    assert (zero["mode"], zero["active"], one["active"]) == ("replicated", True, False)
    assert zero["loss_scale"] == (256.0 if precision == "fp16" else 1.0)
    _assert_table(zero["table"], zero["numel"], zero["stats"])
    for s, blocks in enumerate(zero["full_weight_l2"]):
        for b, want in enumerate(blocks):
            assert math.isclose(zero["weight_l2"][s][b].item(), want, rel_tol=RTOL)


@pytest.mark.parametrize("name", ["zero1", "zero3"])
def test_zero_monitor_refuses_what_it_cannot_follow_and_gives_the_engine_back(plain_runs, name):
    refusals = plain_runs[name][0]["refusals"]
    assert "records from the optimizer's step hook (or the DeepSpeed engine's step)" in refusals["step"]
    assert "pass the engine deepspeed.initialize returned (GradientMonitor(engine))" in refusals["module"]
    assert "pass no `optimizer`" in refusals["optimizer"]
    assert all(run["step_restored"] for run in plain_runs[name])  # close() took the wrapper off engine.step


class _Engine:
    """What ZeroParts.of asks of a DeepSpeed engine, for the refusals that need no processes."""

    def __init__(self, stage: int, optimizer_on: str = "device"):
        self.stage, self.optimizer_on, self.optimizer = stage, optimizer_on, object()

    def zero_optimization_stage(self):
        return self.stage

    def zero_use_cpu_optimizer(self):
        return self.optimizer_on in ("cpu", "nvme")

    def zero_cpu_offload(self):
        return self.optimizer_on == "cpu"


@pytest.mark.parametrize("engine,marked,message", [
    (_Engine(0), True, "keeps its gradients in its bf16 optimizer's buffers without ZeRO.*ZeRO stage 1, 2 or 3"),
    (_Engine(2, "nvme"), True, "swaps the optimizer's fp32 partitions out to NVMe.*`offload_optimizer` on the CPU"),
    (_Engine(2), False, "a monitored parameter is not trained by the DeepSpeed optimizer"),
], ids=["bf16_without_zero", "nvme", "untrained"])
def test_what_zero_parts_cannot_read_is_refused_with_what_to_change(engine, marked, message):
    from gradscope.errors import UsageError
    from gradscope.zero import ZeroParts

    p = nn.Parameter(torch.ones(3))
    if marked:
        p._hp_mapping = None  # what DeepSpeed's bf16 and ZeRO-1/2 optimizers leave on the parameters they train
    with pytest.raises(UsageError, match=message):
        ZeroParts.of(engine, [p])


# --- the Trainer -------------------------------------------------------------------------------------------------


def unsharded_step_one(folder, accumulation: int) -> dict:
    """Step 1 of the unsharded model on the ranks' 8 samples, for the loss the Trainer trains: norms before the
    clip, dL/dh per layer.

    That loss is the sum of the micro-batches' mean losses, averaged over the ranks: this BERT takes
    ``**kwargs``, so the Trainer counts its loss as already normalized for accumulation (by
    ``num_items_in_batch``, which its loss does not use) and divides by nothing, and it turns DeepSpeed's own
    division (``scale_wrt_gas``) off. With one micro-batch a step it is the mean loss over the 8 samples.
    The micro-batches are equal: one forward pass over the 8 gives each its per-sample losses."""
    import torch.nn.functional as F
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(folder)
    outputs = retain_output_grads(model, BERT_BLOCKS)
    ids, mask, labels = classification_tensors()
    n, micro = SAMPLES_PER_STEP, SAMPLES_PER_STEP // (WORLD * accumulation)
    logits = model(input_ids=ids[:n], attention_mask=mask[:n]).logits
    per_sample = F.cross_entropy(logits, labels[:n], reduction="none")
    (sum(chunk.mean() for chunk in per_sample.split(micro)) / WORLD).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return {"global": _l2(grads.values()),
            "blocks": {b: _l2([g for k, g in grads.items() if k.startswith(b + ".")]) for b in BERT_BLOCKS},
            "act": {b: outputs[b].grad.double().norm().item() for b in BERT_BLOCKS}}


@pytest.mark.slow  # two processes each train a BERT under DeepSpeed
@pytest.mark.parametrize("stage,accumulation", [(2, 1), (3, 2)], ids=["zero2", "zero3_accumulation2"])
def test_trainer_under_zero_logs_and_reports_the_unsharded_values(tmp_path, stage, accumulation):
    tiny_bert_classifier(N_LAYERS).save_pretrained(tmp_path / "model")
    _launch(tmp_path, "trainer", str(stage), str(accumulation))
    zero, one = (json.load(open(tmp_path / f"rank{r}.json")) for r in range(WORLD))
    assert zero["engine"] == "DeepSpeedEngine"
    ref = zero["reference"]
    assert len(ref) == STEPS and one["reference"] == ref  # the same gathered values on both ranks

    logged = [e for e in zero["log_history"] if "loss" in e]
    assert [e["step"] for e in logged] == list(range(1, STEPS + 1))
    for e, r in zip(logged, ref):
        s = e["step"]
        assert e["grad_norm"] > MAX_GRAD_NORM  # DeepSpeed clipped every step
        assert math.isclose(e["gradscope/pre_clip/grad_norm"], e["grad_norm"], rel_tol=RTOL), s  # DeepSpeed's own
        assert math.isclose(e["gradscope/pre_clip/grad_norm"], r["global"], rel_tol=RTOL), s
        assert math.isclose(e["gradscope/post_clip/grad_norm"], MAX_GRAD_NORM, rel_tol=1e-4), s
        assert e["gradscope/nonfinite"] == 0.0
        for b in BERT_BLOCKS:
            assert math.isclose(e[f"gradscope/pre_clip/grad_norm/{b}"], r["blocks"][b], rel_tol=RTOL), (s, b)
            assert math.isclose(e[f"gradscope/update_ratio/{b}"], r["update_ratio"][b], rel_tol=1e-4), (s, b)
            assert e[f"gradscope/act_grad_norm/{b}"] > 0
        assert math.isclose(e["gradscope/update_ratio/global"], r["update_ratio"]["global"], rel_tol=1e-4), s
    assert not any(k.startswith("gradscope/") for e in one["log_history"] for k in e)  # the main process logs
    assert not zero["monitor_left"] and not one["monitor_left"]
    assert zero["engine_step_restored"] and one["engine_step_restored"]

    reports = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("report.json"))
    assert reports == ["report/report.json"]
    report = json.load(open(tmp_path / "report" / "report.json"))
    assert report["meta"]["distributed"] == "sharded" and report["meta"]["steps_recorded"] == STEPS
    assert report["meta"]["zero_stage"] == stage and report["meta"]["clip_stage"] == "pre_clip"
    assert report["meta"]["gradient_accumulation_steps"] == accumulation
    series = {(row["step"], row["block"]): row["grad_l2"] for row in report["series"]}
    for s, r in enumerate(ref, start=1):
        assert math.isclose(series[(s, None)], r["global"], rel_tol=RTOL)

    # step 1 against the unsharded model in this process, dL/dh included (the mean loss over both ranks' samples)
    single = unsharded_step_one(tmp_path / "model", accumulation)
    first = logged[0]
    assert math.isclose(first["gradscope/pre_clip/grad_norm"], single["global"], rel_tol=RTOL)
    for b in BERT_BLOCKS:
        assert math.isclose(first[f"gradscope/pre_clip/grad_norm/{b}"], single["blocks"][b], rel_tol=RTOL), b
        assert math.isclose(first[f"gradscope/act_grad_norm/{b}"], single["act"][b], rel_tol=RTOL), b


if __name__ == "__main__" and sys.argv[1:2] == ["plain"]:
    plain_worker(sys.argv[2])
    os._exit(0)  # gloo's threads can abort a finished process at interpreter exit (see tests/test_distributed.py)
if __name__ == "__main__" and sys.argv[1:2] == ["trainer"]:
    trainer_worker(sys.argv[4], int(sys.argv[2]), int(sys.argv[3]))
    os._exit(0)
