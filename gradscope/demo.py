"""``gradscope demo``: the classic vanishing-gradient story, measured, with no download.

One deep MLP family (``DEPTH`` blocks of ``width -> width``, a stem and a
10-class head), built six ways and analyzed side by side on one seeded batch:

=============  ==========================================  =========================
variant        block                                        dL/dh, per block back
=============  ==========================================  =========================
``sigmoid``    Linear -> Sigmoid, PyTorch default init      x 0.144: vanishes
``tanh``       Linear -> Tanh, default init                 x 0.577: vanishes
``relu``       Linear -> ReLU, default init                 x 0.408: vanishes
``relu-he``    Linear -> ReLU, He init                      x 1: the init fix
``batchnorm``  Linear -> BatchNorm -> ReLU, default init    x 1.21: the norm fix
``residual``   h + Linear(ReLU(h)), default init            x 1.08: the skip fix
=============  ==========================================  =========================

Where the factors come from: PyTorch's default Linear init draws weights with
variance ``1/(3 fan_in)``, so going back through one block multiplies the
squared norm of dL/dh by ``1/3 * E[act'(z)^2]``: ``1/3 * 1/16`` for sigmoid
(slope 1/4 at 0), about ``1/3`` for tanh (its inputs shrink toward 0, where
the slope is 1), ``1/3 * 1/2`` for ReLU. He init (variance ``2/fan_in``) makes
the ReLU factor 1. A pre-activation skip (He et al. 2016, identity mappings)
adds the identity: ``1 + 1/6``, so ``sqrt(7/6)`` per block. BatchNorm removes
the dependence on the weights' scale but, with batch statistics, itself grows
the gradient by ``sqrt(pi/(pi-1))`` per ReLU block (Yang et al. 2019, a mean
field theory of batch normalization): at 20 blocks a factor of about 40, still
within the healthy band. tests/test_demo.py holds the measured numbers to
these values.

``gradscope demo --train STEPS`` (``demo(train_steps=STEPS)``) then trains
each variant, from the weights measured, with SGD and with Adam on a fixed
teacher task (:mod:`gradscope.demo_training`): which of them learn.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .demo_training import train_variants
from .errors import UsageError, did_you_mean
from .models import Subject, resolve_device
from .variants import Variant

DEPTH = 20
WIDTH = 128
IN_FEATURES = 32
CLASSES = 10
BATCH_SIZE = 256

DEMO_VARIANTS = ("sigmoid", "tanh", "relu", "relu-he", "batchnorm", "residual")
_DESCRIPTIONS = {
    "sigmoid": "Linear -> Sigmoid, PyTorch default init",
    "tanh": "Linear -> Tanh, PyTorch default init",
    "relu": "Linear -> ReLU, PyTorch default init",
    "relu-he": "Linear -> ReLU, He init (the init fix)",
    "batchnorm": "Linear -> BatchNorm -> ReLU, default init (the normalization fix)",
    "residual": "h + Linear(ReLU(h)), default init (the residual fix, pre-activation)",
}
# What each variant is compared with: the fix against what it fixes.
_BASES = {"tanh": "sigmoid", "relu": "sigmoid", "relu-he": "relu", "batchnorm": "relu", "residual": "relu"}


class Block(nn.Module):
    """One block of the demo MLP: Linear, optional BatchNorm, activation, optional skip."""

    def __init__(self, width: int, activation: str, batchnorm: bool, residual: bool):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width) if batchnorm else nn.Identity()
        self.act = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[activation]()
        self.residual = residual  # read by describe_architecture

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.residual:
            # Pre-activation: the branch ends in a Linear, so it adds zero-mean updates to h.
            return h + self.linear(self.act(h))
        return self.act(self.norm(self.linear(h)))


class DeepMLP(nn.Module):
    """stem (in -> width), ``depth`` blocks (width -> width), head (width -> classes)."""

    def __init__(self, variant: str, depth: int = DEPTH, width: int = WIDTH):
        super().__init__()
        activation = {"sigmoid": "sigmoid", "tanh": "tanh"}.get(variant, "relu")
        self.stem = nn.Linear(IN_FEATURES, width)
        self.blocks = nn.ModuleList(
            Block(width, activation, batchnorm=variant == "batchnorm", residual=variant == "residual")
            for _ in range(depth)
        )
        self.head = nn.Linear(width, CLASSES)
        if variant == "relu-he":
            for block in self.blocks:
                nn.init.kaiming_normal_(block.linear.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(block.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model(batch["x"]), batch["labels"])


def demo_batch(batch_size: int, seed: int) -> dict:
    """Standard-normal inputs and uniformly drawn labels, both seeded."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, IN_FEATURES), generator=generator)
    labels = torch.randint(0, CLASSES, (batch_size,), generator=generator)
    return {"x": x, "labels": labels}


def demo(*, depth: int = DEPTH, width: int = WIDTH, batch_size: int = BATCH_SIZE, seed: int = 0,
         device: str = "auto", variants: tuple[str, ...] = DEMO_VARIANTS, train_steps: int = 0,
         progress: Optional[Callable[[str], None]] = None):
    """Run the demo family and return its :class:`~gradscope.report.Report`.

    ``train_steps`` > 0 then trains every variant, from the weights measured, for that many steps with SGD and
    with Adam on a fixed teacher task (:mod:`gradscope.demo_training`), into the report's ``training`` section.
    """
    # Imported here: the command line imports this module for its defaults as it builds its parser, and the
    # analyzer (and the analysis behind it) need not load for `gradscope info`.
    from .analyzer import run_variants

    progress = progress or (lambda message: None)
    if depth < 2 or width < 1 or batch_size < 2:
        raise UsageError("demo: `depth` must be at least 2, `width` at least 1, `batch_size` at least 2")
    if train_steps < 0:
        raise UsageError("demo: `train_steps` must be a number of steps, at least 1")
    unknown = [v + did_you_mean(v, DEMO_VARIANTS) for v in variants if v not in DEMO_VARIANTS]
    if unknown:
        raise UsageError(f"demo: unknown variant {', '.join(unknown)}; choose from {', '.join(DEMO_VARIANTS)}")
    dev = resolve_device(device)
    batch = {k: v.to(dev) for k, v in demo_batch(batch_size, seed).items()}

    def build(name: str) -> Variant:
        torch.manual_seed(seed)  # every variant's weights are drawn from the same seed
        model = DeepMLP(name, depth, width).to(dev)
        base = _BASES.get(name) if _BASES.get(name) in variants else None
        return Variant(name, _DESCRIPTIONS[name], model, base=base)

    subject = Subject(
        name=f"demo MLP, {depth} blocks of width {width}",
        source="demo",
        model=DeepMLP("relu", 1, 1),  # stands in for metadata only; every variant is built below
        make_scratch=lambda: DeepMLP("relu", depth, width),
        batches=[batch],
        loss_fn=_loss,
        objective="cross-entropy",
        inputs=f"seeded standard-normal inputs {batch_size} x {IN_FEATURES}, "
               f"seeded random labels over {CLASSES} classes",
        meta={"depth": depth, "width": width},
    )
    subject.model.to(dev)
    progress(f"demo: {len(variants)} variants of a {depth}-block MLP (width {width}), batch {batch_size}")
    report = run_variants(subject, (build(name) for name in variants), seed, progress)
    report.meta["demo"] = {"depth": depth, "width": width, "batch_size": batch_size, "seed": seed,
                                     "device": str(dev)}
    if train_steps:
        progress(f"demo: training each variant for {train_steps} steps with SGD and with Adam on a teacher task")
        report.training = train_variants(report, lambda name: build(name).model, steps=train_steps,
                                         batch_size=batch_size, seed=seed, in_features=IN_FEATURES,
                                         classes=CLASSES, progress=progress)
    return report
