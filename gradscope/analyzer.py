"""``gradscope.analyze``: gradient flow of a model against its baselines and what-if variants.

>>> import gradscope
>>> report = gradscope.analyze("./my-bert", gradscope.AnalyzeConfig(batch_size=4, seq_len=64))  # doctest: +SKIP
>>> report.summary("pretrained")["verdict"]  # doctest: +SKIP
'healthy'

The flow is one way: load (:mod:`gradscope.models`) -> variants
(:mod:`gradscope.variants`) -> measure (:mod:`gradscope.measure`) -> analyze
(:mod:`gradscope.analysis`) -> a :class:`~gradscope.report.Report`, which the
caller renders or saves. :func:`analyze` calls each step in turn and hands each
what it needs, no more: the loaders their :class:`~gradscope.models.LoadOptions`;
the variants their :class:`~gradscope.variants.VariantPlan` and the model's
:class:`~gradscope.variants.Depth` (its depth axis and repeated blocks, found once
on the first batch); :func:`run_variants` measures and analyzes each variant as it
is built, and collects the report.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from . import __version__
from .analysis import (
    batch_norm_finding,
    block_rows,
    chance_finding,
    compare,
    comparison_pairs,
    dead_units_finding,
    findings_for,
    parameter_rows,
    summarize,
    unused_weights_finding,
    untrained_finding,
)
from .blocks import has_inner_stack, unwrap
from .errors import GradscopeError, UsageError
from .limits import ANALYZE_BOUNDS, check_size
from .measure import depth_axis, measure, needs_repeated_blocks, repeated_blocks
from .models import DTYPES, LoadOptions, Subject, from_module, load_subject
from .models.failures import first_line, short_reason
from .report import Report
from .variants import (
    BASELINES,
    DEFAULT_BASELINES,
    WHAT_IFS,
    Depth,
    Skipped,
    Variant,
    VariantPlan,
    build_variants,
    check_applicable,
    check_names,
    describe_architecture,
    output_probe,
)

_PACKAGE = Path(__file__).resolve().parent

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AnalyzeConfig:
    """Everything an analysis can be asked to do; the command line's flags map onto it one to one.

    ``baselines``: of ``pretrained``, ``scratch``, ``shallow``; ``what_ifs``: of ``sigmoid``, ``tanh``,
    ``no-norm``, ``no-residual``, ``xavier``, ``he`` (see :mod:`gradscope.variants`).
    ``batches`` > 1 averages the gradient over that many batches of ``batch_size``.
    ``dtype``: ``float32`` (default), ``float16``, ``bfloat16``, ``float64`` or ``auto`` (as loaded).
    ``text``: a text file instead of the built-in corpus; ``images``: a directory of JPEG/PNG files
    instead of synthetic images; ``arch``: the torchvision architecture of a checkpoint file.
    """

    baselines: tuple[str, ...] = DEFAULT_BASELINES
    what_ifs: tuple[str, ...] = ()
    batch_size: int = 8
    seq_len: Optional[int] = None  # text models: 128, or the model's positions where it has fewer
    batches: int = 1
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    text: Optional[str] = None
    images: Optional[str] = None
    image_size: Optional[int] = None
    arch: Optional[str] = None
    trust_remote_code: bool = False

    def __post_init__(self):
        for name in ("baselines", "what_ifs"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            object.__setattr__(self, name, tuple(value))
        check_names(self.baselines, self.what_ifs)
        for name, low in (("batch_size", 1), ("seq_len", 2), ("batches", 1)):
            if getattr(self, name) is not None and int(getattr(self, name)) < low:
                raise UsageError(f"`{name}` must be at least {low}; got {getattr(self, name)}")
        for name in ANALYZE_BOUNDS:  # before any work: a mistyped size must not allocate until memory runs out
            check_size(name, getattr(self, name))
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UsageError(f"`dtype={self.dtype!r}`: choose from auto, {', '.join(DTYPES)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"`device={self.device!r}`: use auto, cpu, cuda or cuda:N")
        if self.image_size is not None and self.image_size < 8:
            raise UsageError(f"`image_size` must be at least 8; got {self.image_size}")

    def load_options(self) -> LoadOptions:
        """What loading the model takes of this config (:class:`~gradscope.models.LoadOptions`)."""
        return LoadOptions(batch_size=self.batch_size, batches=self.batches, seq_len=self.seq_len, seed=self.seed,
                           device=self.device, dtype=self.dtype, text=self.text, images=self.images,
                           image_size=self.image_size, arch=self.arch, trust_remote_code=self.trust_remote_code)

    def variant_plan(self) -> VariantPlan:
        """Which variants to build (:class:`~gradscope.variants.VariantPlan`): a ``shallow`` in the default
        baselines is skipped, saying why, where the model has nothing to cut; one asked for by name is refused."""
        return VariantPlan(self.baselines, self.what_ifs, self.seed,
                           shallow_optional=self.baselines == DEFAULT_BASELINES)


def _run_meta(subject: Subject, config: Optional[AnalyzeConfig], device: str, skipped: list[Skipped]) -> dict:
    versions = {"gradscope": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for module in ("transformers", "torchvision"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", None)
    config_meta = asdict(config) if config else None
    if config_meta and skipped:  # a default baseline with nothing to build on: the config says what ran
        config_meta["baselines"] = tuple(b for b in config.baselines if b not in {s.name for s in skipped})
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "model": subject.name,
        "source": subject.source,
        "objective": subject.objective,
        "inputs": subject.inputs,
        "device": device,
        "config": config_meta,
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        **subject.meta,
    }


def _forward_error(variant: str, exc: Exception) -> GradscopeError:
    """One line for a forward/backward pass that raised; the ones the inputs cause are usage errors."""
    if "Expected more than 1 value per channel" in str(exc):
        # BatchNorm runs on batch statistics (as in training): one value per channel has no variance.
        return UsageError(f"variant {variant}: batch normalization needs more than one value per channel "
                          f"({short_reason(exc)}); raise `batch_size` (or `image_size`)")
    return GradscopeError(f"variant {variant}: the forward/backward pass failed: {first_line(exc)}")


def _raised_in_gradscope(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is gradscope's own code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def run_variants(subject: Subject, variants: Iterable[Union[Variant, Skipped]], seed: int, progress: Progress,
                 config: Optional[AnalyzeConfig] = None) -> Report:
    """Measure and analyze each variant on the subject's batches; return the :class:`Report`.

    A :class:`~gradscope.variants.Skipped` among ``variants`` is noted in ``meta["skipped"]``, and left out of
    the baselines ``meta["config"]`` says ran.
    """
    started = time.perf_counter()
    report = Report()
    backends = set()
    skipped: list[Skipped] = []
    for variant in variants:
        if isinstance(variant, Skipped):
            skipped.append(variant)
            continue
        progress(f"measuring {variant.name}: one forward and backward pass")
        try:
            m = measure(variant.model, subject.batches, subject.loss_fn, seed=seed, blocks=variant.blocks)
        except GradscopeError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise _forward_error(variant.name, exc) from exc
        except (KeyError, AttributeError, AssertionError) as exc:
            # what a model's forward raises on inputs it does not take (a missing argument, a fixed input size);
            # raised by gradscope's own code, it is a bug to show in full
            if _raised_in_gradscope(exc):
                raise
            raise _forward_error(variant.name, exc) from exc
        backends.add(m.grad.backend)
        inventory = describe_architecture(variant.model)
        params = parameter_rows(variant.name, m)
        blocks = block_rows(variant.name, m, params)
        summary = summarize(variant.name, m, params, blocks)
        report.variants.append({"name": variant.name, "description": variant.description, "base": variant.base,
                                "changes": variant.changes, "architecture": inventory})
        report.summaries.append(summary)
        weight_dtype = str(next(variant.model.parameters()).dtype).removeprefix("torch.")  # its resolution
        report.findings.extend(findings_for(summary, blocks, inventory, weight_dtype))
        report.findings.extend(filter(None, [dead_units_finding(summary, blocks, params, inventory)]))
        report.findings.extend(filter(None, [chance_finding(summary, subject.objective, subject.meta.get("chance"))]))
        if len(report.variants) == 1:  # the batch is every variant's: said once
            report.findings.extend(filter(None, [batch_norm_finding(variant.name, m)]))
        report.blocks.extend(blocks)
        report.params.extend(params)
        progress(f"{variant.name}: {summary['verdict']}, loss {summary['loss']:.4g}, {len(blocks)} blocks, "
                 f"{m.seconds:.1f}s")
        del variant, m  # let a variant's model go before the next is built
    if not report.variants:
        raise UsageError("no variants were run")
    report.findings.extend(filter(None, [untrained_finding(report.summaries, report.blocks, report.params),
                                         unused_weights_finding(subject.meta.get("unused_weights"))]))
    by_variant = {v["name"]: report.block_rows(v["name"]) for v in report.variants}
    report.comparisons = [compare(a, b, by_variant[a], by_variant[b]) for a, b in comparison_pairs(report.variants)]
    first_param = next(subject.model.parameters())
    report.meta = _run_meta(subject, config, str(first_param.device), skipped)
    report.meta["backend"] = backends.pop() if len(backends) == 1 else "mixed"
    report.meta["seed"] = seed
    report.meta["measure_seconds"] = time.perf_counter() - started
    report.meta["dtype"] = str(first_param.dtype).removeprefix("torch.")
    if skipped:  # ... and why not the rest
        report.meta["skipped"] = {s.name: s.reason for s in skipped}
    return report


def _load(model_or_name: Union[str, os.PathLike, nn.Module], options: LoadOptions, batch: Any,
          loss_fn: Optional[Callable], progress: Progress) -> Subject:
    """The subject: a model named (loaded by :func:`~gradscope.models.load_subject`), or a module given with
    its batch (:func:`~gradscope.models.from_module`)."""
    if isinstance(model_or_name, nn.Module):
        # Measured eagerly, under the model's own names: a torch.compile or DDP wrapper is set aside.
        return from_module(unwrap(model_or_name), batch, loss_fn, options)
    if isinstance(model_or_name, (str, os.PathLike)):
        if batch is not None or loss_fn is not None:
            raise UsageError("batch= and loss_fn= go with an nn.Module; a model name brings its own inputs and loss")
        return load_subject(os.fspath(model_or_name), options, progress)
    raise UsageError(f"analyze: expected a model name, a path or an nn.Module; got {type(model_or_name).__name__}")


def find_depth(subject: Subject, plan: VariantPlan) -> Depth:
    """The loaded model's depth on its first batch, found once for every variant (see
    :class:`~gradscope.variants.Depth`).

    The blocks run several times in one forward pass (ALBERT's shared layer group) take a forward pass to find:
    it is made only where the depth axis or ``shallow`` reads them.
    """
    model, first, loss_fn, seed = subject.model, subject.batches[0], subject.loss_fn, plan.seed
    shallow = "shallow" in plan.baselines
    wanted = needs_repeated_blocks(model) or shallow and not has_inner_stack(model)
    repeated = repeated_blocks(model, first, loss_fn, seed) if wanted else {}
    blocks = depth_axis(model, first, loss_fn, seed, repeated=repeated)
    # shallow cuts only what keeps the model's output: checked on the first batch
    return Depth(blocks, repeated, output_probe(first, loss_fn, seed) if shallow else None)


def analyze(
    model_or_name: Union[str, os.PathLike, Any],
    config: Optional[AnalyzeConfig] = None,
    *,
    batch: Any = None,
    loss_fn: Optional[Callable] = None,
    progress: Optional[Progress] = None,
) -> Report:
    """Analyze the gradient flow of a model and its variants; return a :class:`~gradscope.report.Report`.

    ``model_or_name``: a Hugging Face hub id or local directory, a torchvision model name, a
    checkpoint file (with ``config.arch``), or an ``nn.Module``. An ``nn.Module`` needs ``batch``;
    ``loss_fn(model, batch)`` returns the scalar loss (default: ``model(batch)`` is the loss, or has
    a ``.loss``). ``progress`` receives one line per step (the command line prints them on stderr).
    """
    config = config or AnalyzeConfig()
    progress = progress or (lambda message: None)
    subject = _load(model_or_name, config.load_options(), batch, loss_fn, progress)  # gradscope.models
    plan = config.variant_plan()
    check_applicable(subject.model, plan.what_ifs)  # a what-if with nothing to change: refused before any pass
    depth = find_depth(subject, plan)  # gradscope.measure, once for every variant
    variants = build_variants(subject.model, subject.make_scratch, plan, depth, progress)  # built one at a time
    return run_variants(subject, variants, plan.seed, progress, config)  # measure, analysis, report


__all__ = ["AnalyzeConfig", "analyze", "BASELINES", "WHAT_IFS"]
