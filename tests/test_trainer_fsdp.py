"""Hugging Face Trainer + FSDP2 on CPU (2 processes, gloo), end to end: gradscope's logged and reported
per-block gradient norms equal the unsharded gradients.

On CPU, accelerate ignores the Trainer's `fsdp=` / `fsdp_config` (FSDP is only set up for accelerator
devices; the run silently becomes DDP), so the model is sharded the way transformers supports on CPU:
`from_pretrained(folder, distributed_config=DistributedConfig(fsdp_size=2, fsdp_plan=...))` applies
FSDP2 `fully_shard` at load time and the Trainer trains it as is (DTensor parameters, no DDP wrapper).

References, both independent of gradscope:
- in the run, at on_pre_optimizer_step (where gradscope records, after the Trainer's clipping): full
  gradients from DTensor.full_tensor(), float64 norms, every step;
- here, in one process: the unsharded model's step-1 gradients on the same 8 samples, clipped as torch does.

The workers are this file run as `python -m torch.distributed.run --nproc_per_node 2 test_trainer_fsdp.py worker DIR`.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

import gradscope
from helpers_models import classification_dataset, classification_tensors, tiny_bert_classifier
from stats_reference import update_ratios

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.slow  # two processes each train a BERT

N_LAYERS, PER_DEVICE, STEPS, MAX_GRAD_NORM = 4, 4, 3, 0.05  # 0.05: every step is clipped
BLOCKS = [f"bert.encoder.layer.{i}" for i in range(N_LAYERS)]
STAGE = "pre_clip"  # read before the Trainer clips (add_gradscope_callback wraps its clip)
RTOL = 1e-6  # same gradients: only the summation order differs


def _norm(grads):
    return torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])).item()


def worker(out: str) -> None:
    import torch.distributed as dist
    from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
    from transformers.distributed import DistributedConfig

    from gradscope.integrations import add_gradscope_callback

    class FullGradients(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = {n: p.grad.full_tensor().double() for n, p in model.named_parameters() if p.grad is not None}
            self.steps.append({"step": state.global_step + 1, "global": _norm(grads.values()),
                               "blocks": {b: _norm([g for n, g in grads.items() if n.startswith(b + ".")])
                                          for b in BLOCKS}})
            self.before = {n: p.full_tensor().double() for n, p in model.named_parameters()}

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            # the update of this optimizer step, from full copies of the weights before and after it
            after = {n: p.full_tensor() for n, p in model.named_parameters()}
            self.steps[-1]["update_ratio"] = update_ratios(self.before, after, BLOCKS)

    world = int(os.environ["WORLD_SIZE"])
    model = BertForSequenceClassification.from_pretrained(
        f"{out}/model", distributed_config=DistributedConfig(fsdp_size=world,
                                                             fsdp_plan={"bert.encoder.layer.*": "free_full_weight"}))
    args = TrainingArguments(
        output_dir=f"{out}/trainer", use_cpu=True, max_steps=STEPS, logging_steps=1, report_to=[], save_strategy="no",
        per_device_train_batch_size=PER_DEVICE, max_grad_norm=MAX_GRAD_NORM, seed=0, learning_rate=1e-3,
        train_sampling_strategy="sequential", disable_tqdm=True,
        # True (the default) multiplies this model's loss, hence its gradients, by the world size
        average_tokens_across_devices=False)
    trainer = Trainer(model=model, args=args, train_dataset=classification_dataset())
    callback = add_gradscope_callback(trainer, report_dir=f"{out}/report", update_ratios=True)
    reference = FullGradients()
    trainer.add_callback(reference)
    trainer.train()
    rank = dist.get_rank()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"log_history": trainer.state.log_history, "reference": reference.steps,
                   "param_types": sorted({type(p).__name__ for p in trainer.model.parameters()}),
                   "monitor_left": callback.monitor is not None}, f)
    dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unsharded_step_one(folder):
    """Step 1 of the unsharded model on the same 8 samples (the two ranks' batches), clipped as torch does."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(folder)
    ids, mask, labels = classification_tensors()
    n = 2 * PER_DEVICE
    model(input_ids=ids[:n], attention_mask=mask[:n], labels=labels[:n]).loss.backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM).item()
    grads = {n: p.grad.double() for n, p in model.named_parameters()}
    return total, {"global": _norm(grads.values()),
                   "blocks": {b: _norm([g for k, g in grads.items() if k.startswith(b + ".")]) for b in BLOCKS}}


def test_trainer_fsdp2_cpu_numbers_equal_the_unsharded_gradients(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    tiny_bert_classifier(N_LAYERS).save_pretrained(tmp_path / "model")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gradscope.__file__)))  # the workers import it too
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.abspath(__file__), "worker", str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    zero, one = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))

    assert zero["param_types"] == ["DTensor"]  # really sharded (FSDP2), not silently DDP
    ref = {r["step"]: r for r in zero["reference"]}
    assert sorted(ref) == list(range(1, STEPS + 1))
    for r in one["reference"]:  # both ranks gathered the same full gradients
        assert math.isclose(r["global"], ref[r["step"]]["global"], rel_tol=1e-12)

    logged = [e for e in zero["log_history"] if "loss" in e]
    assert [e["step"] for e in logged] == list(range(1, STEPS + 1))
    coef = {}  # what the clip multiplied every gradient by: the reference, read after it, divided by it is before it
    for e in logged:
        s = e["step"]
        assert e["grad_norm"] > MAX_GRAD_NORM  # the Trainer clipped this step: its grad_norm is the pre-clip value
        coef[s] = MAX_GRAD_NORM / (e["grad_norm"] + 1e-6)
        assert math.isclose(e[f"gradscope/{STAGE}/grad_norm"], e["grad_norm"], rel_tol=1e-5), s
        assert math.isclose(e[f"gradscope/{STAGE}/grad_norm"], ref[s]["global"] / coef[s], rel_tol=1e-5), s
        assert math.isclose(e["gradscope/post_clip/grad_norm"], ref[s]["global"], rel_tol=RTOL), s
        assert math.isclose(e["gradscope/post_clip/grad_norm"], MAX_GRAD_NORM, rel_tol=1e-4), s
        assert e["gradscope/nonfinite"] == 0.0
        for b in BLOCKS:
            assert math.isclose(e[f"gradscope/{STAGE}/grad_norm/{b}"], ref[s]["blocks"][b] / coef[s],
                                rel_tol=1e-5), (s, b)
        assert not [k for k in e if k.startswith("gradscope/") and "/grad_norm" in k
                    and k.rsplit("/", 1)[-1] not in BLOCKS + ["grad_norm"]]
    # only the main process logs and writes
    assert not any(k.startswith("gradscope/") for e in one["log_history"] for k in e)
    assert not zero["monitor_left"] and not one["monitor_left"]
    reports = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("report.json"))
    assert reports == ["report/report.json"]

    report = json.load(open(tmp_path / "report" / "report.json"))
    assert report["meta"]["distributed"] == "sharded" and report["meta"]["steps_recorded"] == STEPS
    assert report["meta"]["clip_stage"] == STAGE
    series = {(row["step"], row["block"]): row["grad_l2"] for row in report["series"]}  # before the clip
    assert len(series) == STEPS * (len(BLOCKS) + 1)
    for s in ref:
        assert math.isclose(series[(s, None)], ref[s]["global"] / coef[s], rel_tol=1e-5)
        for b in BLOCKS:
            assert math.isclose(series[(s, b)], ref[s]["blocks"][b] / coef[s], rel_tol=1e-5), (s, b)
    for row in report["blocks"]:
        assert math.isclose(row["grad_l2"], ref[STEPS]["blocks"][row["block"]] / coef[STEPS], rel_tol=1e-5)
    # the update ratios of each optimizer step, taken on each rank's shards, against full float64 copies
    ratios = {(row["step"], row["block"]): row["update_ratio"] for row in report["series"]}
    for s in ref:
        assert ratios[(s, None)] > 0
        assert math.isclose(ratios[(s, None)], ref[s]["update_ratio"]["global"], rel_tol=1e-5), s
        for b in BLOCKS:
            assert math.isclose(ratios[(s, b)], ref[s]["update_ratio"][b], rel_tol=1e-5), (s, b)

    # step 1 against the unsharded model in this process (fp32 reduction order differs: looser tolerance)
    total, single = unsharded_step_one(tmp_path / "model")
    unclip = (total + 1e-6) / MAX_GRAD_NORM  # undoes the clip torch applied to the unsharded gradients
    assert math.isclose(logged[0]["grad_norm"], total, rel_tol=1e-5)
    assert math.isclose(logged[0][f"gradscope/{STAGE}/grad_norm"], total, rel_tol=1e-5)
    for b in BLOCKS:
        assert math.isclose(logged[0][f"gradscope/{STAGE}/grad_norm/{b}"], single["blocks"][b] * unclip,
                            rel_tol=1e-5), b


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2])
    os._exit(0)  # gloo's threads can abort a finished process at interpreter exit (see tests/test_distributed.py)
