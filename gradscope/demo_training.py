"""What the demo's verdicts mean for training: each variant trained on one fixed teacher task, with SGD and Adam.

``gradscope demo --train STEPS`` ends the demo's story where it starts: after the gradient flow of the six
MLPs is measured, each of them is trained, from the very weights that were measured, and the report shows which
of them learn.

The task (:class:`TeacherTask`): inputs ``x ~ N(0, I)`` in ``in_features`` dimensions, labelled by a fixed
random teacher network, ``argmax(W2 tanh(W1 x))`` over the classes, with ``W1`` (``TEACHER_HIDDEN x in_features``)
and ``W2`` (``classes x TEACHER_HIDDEN``) Gaussian of variance ``1 / fan_in``, drawn from the seed. Every step
draws a fresh batch from a seeded stream, the same for every variant and optimizer, so the loss says how well a
network has learned the teacher's function, not how well it memorized a set. The loss is cross-entropy.

Each variant is trained once per optimizer (:data:`OPTIMIZERS`: SGD with momentum 0.9 and Adam, one fixed
learning rate each, chosen on this task: see the constants) for the same number of steps. A run records the
training loss of every step (on that step's batch, before its update), the loss on a fixed evaluation batch
before and after training (``initial_loss``, ``final_loss``; the section adds the entropy of that batch's class
frequencies, the least loss a network that ignores its input can reach), and how far the first and the last
block moved: ``||W_after - W_before|| / ||W_before||`` over all the block's parameters together, in float64.
The model stays in training mode throughout, so BatchNorm normalizes with the batch's statistics, as in the
analysis.

Everything is seeded, and training runs on one CPU thread (see :func:`_cpu_threads`): the same seed gives the
same runs, number for number, on the same device and kernels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

TEACHER_HIDDEN = 64
EVAL_SAMPLES = 2048
# Offsets of the task's seeds from the demo's seed: the teacher, the training stream and the evaluation batch
# are drawn from three streams of their own, apart from the analysis batch (the demo's seed itself).
TEACHER_SEED_OFFSET = 1
TRAIN_SEED_OFFSET = 2
EVAL_SEED_OFFSET = 3
TRAIN_THREADS = 1  # see _cpu_threads


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the training run: its key in the report, its name in words, and its settings."""

    name: str
    label: str
    lr: float
    momentum: Optional[float] = None  # SGD only

    def make(self, params) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum or 0.0)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        raise ValueError(f"no optimizer {self.name!r}: sgd or adam")

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "lr": self.lr,
                **({"momentum": self.momentum} if self.momentum is not None else {})}


# One learning rate per optimizer for all six variants: the best single rate of the default demo (20 blocks of
# 128, batch 256, seed 0) on this task at 200 steps, from the grids 0.01, 0.03, 0.1, 0.3 (SGD: the residual
# variant diverges at 0.1) and 1e-4, 3e-4, 1e-3, 3e-3 (Adam). A grid per run would cost four times the training.
SGD_LR = 0.03
ADAM_LR = 1e-3
OPTIMIZERS = (OptimizerSpec("sgd", "SGD", SGD_LR, momentum=0.9), OptimizerSpec("adam", "Adam", ADAM_LR))


@dataclass(frozen=True)
class TeacherTask:
    """A fixed random teacher network that labels Gaussian inputs (see the module docstring)."""

    w1: torch.Tensor  # [TEACHER_HIDDEN, in_features]
    w2: torch.Tensor  # [classes, TEACHER_HIDDEN]

    @classmethod
    def from_seed(cls, seed: int, in_features: int, classes: int) -> "TeacherTask":
        generator = torch.Generator().manual_seed(seed + TEACHER_SEED_OFFSET)
        w1 = torch.randn((TEACHER_HIDDEN, in_features), generator=generator) / in_features ** 0.5
        w2 = torch.randn((classes, TEACHER_HIDDEN), generator=generator) / TEACHER_HIDDEN ** 0.5
        return cls(w1, w2)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x @ self.w1.T) @ self.w2.T).argmax(dim=1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` inputs drawn from ``generator`` and their teacher labels."""
        x = torch.randn((n, self.w1.shape[1]), generator=generator)
        return x, self.labels(x)

    def describe(self) -> str:
        hidden, in_features = self.w1.shape
        return (f"teacher task: x ~ N(0, I) in {in_features} dimensions labelled argmax(W2 tanh(W1 x)) over "
                f"{self.w2.shape[0]} classes by a random network fixed by the seed (W1 {hidden}x{in_features}, "
                f"W2 {self.w2.shape[0]}x{hidden}, Gaussian with variance 1/fan_in), a fresh seeded batch every step")


def train_stream(seed: int) -> torch.Generator:
    """The generator of the training batches: every run starts it afresh, so every run sees the same batches."""
    return torch.Generator().manual_seed(seed + TRAIN_SEED_OFFSET)


def eval_batch(task: TeacherTask, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch the loss before and after training is measured on."""
    return task.sample(EVAL_SAMPLES, torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET))


def label_entropy(labels: torch.Tensor) -> float:
    """The entropy of the labels' class frequencies, in nats: the least cross-entropy a network that ignores its
    input can reach on them (by predicting those frequencies)."""
    p = torch.bincount(labels).double() / len(labels)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def relative_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """``||after - before|| / ||before||`` over all the tensors together, in float64 (NaN where before is zero)."""
    diff = sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(after, before))
    base = sum(float(b.double().pow(2).sum()) for b in before)
    return (diff / base) ** 0.5 if base > 0 else float("nan")


@contextlib.contextmanager
def _cpu_threads(threads: int):
    """torch's intra-op CPU threads set to ``threads`` inside the block, and set back after it.

    Training runs on one thread: the demo's matrices (128 x 128, batch 256) are too small for a second thread to
    pay off (measured on a 2-core machine: 2.2 s per 200-step run with one thread or two), while two threads
    slowed each run to 12-90 s whenever another process used a core; and the loss curve after a few hundred
    steps depends on how the sums were split (relu-he with Adam ended at 1.0 with one thread, 0.93 with two),
    so one thread also gives the same numbers wherever the same kernels run.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _snapshot(block: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in block.parameters()]


def _loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), labels))


def train_run(model: nn.Module, task: TeacherTask, optimizer: OptimizerSpec, *, steps: int, batch_size: int,
              seed: int, blocks: tuple[str, str]) -> dict:
    """Train ``model`` in place, on one CPU thread, and return the run's record (the ``training.runs`` row less its
    ``variant``).

    ``blocks``: the names of the first and the last block, whose movement is recorded.
    """
    with _cpu_threads(TRAIN_THREADS):
        return _train(model, task, optimizer, steps=steps, batch_size=batch_size, seed=seed, blocks=blocks)


def _train(model: nn.Module, task: TeacherTask, optimizer: OptimizerSpec, *, steps: int, batch_size: int,
           seed: int, blocks: tuple[str, str]) -> dict:
    device = next(model.parameters()).device
    x_eval, y_eval = (t.to(device) for t in eval_batch(task, seed))
    watched = {name: model.get_submodule(name) for name in blocks}
    before = {name: _snapshot(block) for name, block in watched.items()}
    initial_loss = _loss(model, x_eval, y_eval)
    opt = optimizer.make(model.parameters())
    stream = train_stream(seed)
    started = time.perf_counter()
    curve = []
    for _ in range(steps):
        x, labels = (t.to(device) for t in task.sample(batch_size, stream))
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    seconds = time.perf_counter() - started
    final_loss = _loss(model, x_eval, y_eval)
    moved = {name: relative_change(before[name], _snapshot(block)) for name, block in watched.items()}
    return {
        "optimizer": optimizer.name, "loss": curve, "initial_loss": initial_loss, "final_loss": final_loss,
        "final_to_initial": final_loss / initial_loss if initial_loss > 0 else float("nan"),
        "first_block": blocks[0], "last_block": blocks[1],
        "first_block_moved": moved[blocks[0]], "last_block_moved": moved[blocks[1]], "seconds": seconds,
    }


def train_variants(report, make_model: Callable[[str], nn.Module], *, steps: int, batch_size: int, seed: int,
                   in_features: int, classes: int, optimizers=OPTIMIZERS,
                   progress: Optional[Callable[[str], None]] = None) -> dict:
    """Train every variant of ``report`` with every optimizer; return the report's ``training`` section.

    ``make_model(name)`` builds the variant as it was measured (same seed, same weights); the first and the last
    block are the report's depth-0 and deepest block of that variant.
    """
    progress = progress or (lambda message: None)
    task = TeacherTask.from_seed(seed, in_features, classes)
    _, eval_labels = eval_batch(task, seed)
    started = time.perf_counter()
    runs = []
    for variant in report.variant_names:
        rows = report.block_rows(variant)
        for optimizer in optimizers:
            run = train_run(make_model(variant), task, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                            blocks=(rows[0]["block"], rows[-1]["block"]))
            runs.append({"variant": variant, **run})
            progress(f"trained {variant} with {optimizer.label}: loss {run['initial_loss']:.3g} -> "
                     f"{run['final_loss']:.3g} in {steps} steps, {run['seconds']:.1f}s")
    return {
        "task": task.describe(), "loss_function": "cross-entropy", "steps": steps, "batch_size": batch_size,
        "eval_samples": EVAL_SAMPLES, "label_entropy": label_entropy(eval_labels), "seed": seed,
        "optimizers": [o.to_dict() for o in optimizers],
        "runs": runs, "seconds": time.perf_counter() - started,
    }
