"""Where a monitor's new steps go at each flush without a trainer: ``monitor.log_to(SummaryWriter(...))`` or
``monitor.log_to(callable)``. (:mod:`gradscope.integrations.tensorboard` re-exports these sinks.)

Scalars, written at each flush for every recorded step:

- ``{prefix}/grad_norm/global``: L2 norm of all monitored gradients, before any clipping;
- ``{prefix}/grad_norm/{block}``: per block, before any clipping (execution order; blocks as
  :mod:`gradscope.blocks` defines them); a block without gradients at a step is left out;
- ``{prefix}/grad_norm_post_clip/global`` and ``{prefix}/clip_max_norm``: on clipped steps
  (``monitor.clip_grad_norm_``, or a trainer's clipping noted with ``monitor.note_clip``);
- ``{prefix}/nonfinite/global``: non-finite gradient values;
- where recorded (``weight_norms``, ``update_ratios``, ``activation_grads``): ``{prefix}/weight_norm/global``
  and ``{prefix}/weight_norm/{block}``, ``{prefix}/update_ratio/global`` and ``{prefix}/update_ratio/{block}``,
  ``{prefix}/act_grad_norm/{block}`` (dL/dh at the block's output).

A ``SummaryWriter``-like object (anything with ``add_scalar``) gets one ``add_scalar`` per value; any other
callable is called once per recorded step as ``sink(step, {key: value})``, which fits the usual trackers::

    monitor.log_to(lambda step, d: wandb.log(d, step=step))
    monitor.log_to(lambda step, d: mlflow.log_metrics(d, step=step))
    monitor.log_to(lambda step, d: accelerator.log(d, step=step))

Histograms (SummaryWriter only, on request): ``{prefix}/grad/{block}`` at each recorded step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Union

import torch

from ..errors import UsageError
from .history import MonitorHistory


def scalars(history: MonitorHistory, prefix: str = "gradscope") -> Iterator[tuple[int, dict[str, float]]]:
    """``(step, {key: value})`` for each step of ``history`` (a :class:`~gradscope.monitor.MonitorHistory`),
    with the keys of the module docstring; NaN values (a block without gradients, an unclipped step) are left out."""
    block_l2 = history.block_l2().tolist()
    glob = history.global_l2().tolist()
    post = history.post_clip_l2.tolist()
    max_norm = history.clip_max_norm.tolist()
    nonfinite = history.nonfinite().sum(-1).tolist()
    p = prefix
    optional = [(f"{p}/weight_norm", history.global_weight_l2().tolist(), history.block_weight_l2().tolist()),
                (f"{p}/update_ratio", history.global_update_ratio().tolist(), history.block_update_ratio().tolist()),
                (f"{p}/act_grad_norm", None, history.block_act_grad_l2().tolist())]
    for t, step in enumerate(history.steps.tolist()):
        values = {f"{p}/grad_norm/global": glob[t]}
        if not math.isnan(max_norm[t]):
            values[f"{p}/grad_norm_post_clip/global"] = post[t]
            values[f"{p}/clip_max_norm"] = max_norm[t]
        values[f"{p}/nonfinite/global"] = float(nonfinite[t])
        for block, value in zip(history.blocks, block_l2[t]):
            if not math.isnan(value):  # a block without gradients has no norm, not a zero one
                values[f"{p}/grad_norm/{block}"] = value
        for key, whole, per_block in optional:  # NaN: not recorded at this step
            if whole is not None and not math.isnan(whole[t]):
                values[f"{key}/global"] = whole[t]
            values.update((f"{key}/{block}", v) for block, v in zip(history.blocks, per_block[t]) if not math.isnan(v))
        yield step, values


class CallableSink:
    """Calls ``log(step, {key: value})`` for each of a monitor's new steps."""

    def __init__(self, log: Callable[[int, dict], object], prefix: str = "gradscope"):
        self.log = log
        self.prefix = prefix

    def __call__(self, history: MonitorHistory) -> None:
        for step, values in scalars(history, self.prefix):
            self.log(step, values)


class TensorBoardSink:
    """Writes a monitor's new steps to a ``SummaryWriter``-like object."""

    def __init__(self, writer, prefix: str = "gradscope"):
        self.writer = writer
        self.prefix = prefix

    def __call__(self, history: MonitorHistory) -> None:
        for step, values in scalars(history, self.prefix):
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def write_histograms(self, monitor, step: int) -> None:
        """One histogram per block of the current gradients (copies them to the host)."""
        for block, grads in monitor.block_gradients().items():
            if grads:
                values = torch.cat([g.detach().reshape(-1).float() for g in grads])
                self.writer.add_histogram(f"{self.prefix}/grad/{block}", values[torch.isfinite(values)].cpu(), step)


def sink_for(writer, *, histograms: bool, prefix: str, sharded: bool) -> Union[TensorBoardSink, CallableSink]:
    """The sink that writes to ``writer``: a :class:`TensorBoardSink` for anything with ``add_scalar``, a
    :class:`CallableSink` for any other callable; UsageError for anything else, and for ``histograms`` that
    ``writer`` cannot draw or that would show one rank's shards only (``sharded``)."""
    writes_scalars = hasattr(writer, "add_scalar")
    if not writes_scalars and not callable(writer):
        raise UsageError(f"log_to needs a SummaryWriter (with add_scalar) or a callable (step, dict); "
                         f"got {type(writer).__name__}")
    if histograms and not hasattr(writer, "add_histogram"):
        raise UsageError("`histograms=True` needs a writer with add_histogram (a TensorBoard SummaryWriter)")
    if histograms and sharded:
        raise UsageError("histograms of sharded gradients would show one rank's shards only; "
                         "leave out `histograms=True` under FSDP")
    return TensorBoardSink(writer, prefix=prefix) if writes_scalars else CallableSink(writer, prefix=prefix)
