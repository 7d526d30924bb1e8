"""Per-block gradient norms in the Hugging Face ``Trainer``'s logs.

::

    from gradscope.integrations import add_gradscope_callback
    add_gradscope_callback(trainer, report_dir="gradscope-report")   # also any GradientMonitor option: every=10, ...
    trainer.train()

The callback records at ``on_pre_optimizer_step``: once per optimizer step
(after all micro-batches of gradient accumulation), on unscaled gradients, and
**after** the Trainer's clipping. Its log keys say which:

- ``gradscope/no_clip/grad_norm`` and ``gradscope/no_clip/grad_norm/<block>``
  when ``max_grad_norm`` is 0 (then the global value equals the Trainer's own
  ``grad_norm``);
- ``gradscope/after_clip/...`` when ``max_grad_norm > 0`` (the Trainer's
  ``grad_norm`` is the pre-clip value);
- ``gradscope/nonfinite``: non-finite gradient values in the step.

The values are those of the step being logged (as the Trainer's ``grad_norm``).
They are added to the ``logs`` dict and to ``state.log_history``; the
``report_to`` integrations (TensorBoard, W&B, ...) see them when the callback
runs before them: :func:`add_gradscope_callback` puts it first. Under DDP only
the main process computes; under FSDP (FSDP2, or FSDP1 with ``use_orig_params``)
every process computes on its shards and the main process logs. ``report_dir``
writes a report at the end of training and, with :func:`add_gradscope_callback`,
when training stops with an error.

Mixed precision: the Trainer unscales fp16 gradients when it computes its
``grad_norm`` (always, in the transformers versions that log it with clipping
off), before this event, so the numbers are of unscaled gradients.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

from transformers import TrainerCallback

from .. import distributed as dist_utils
from ..errors import GradscopeError
from ._options import MonitorCallbackOptions


class GradscopeCallback(MonitorCallbackOptions, TrainerCallback):
    """A ``TrainerCallback`` that logs per-block and global gradient norms (see the module docstring)."""

    def __init__(self, *, report_dir=None, prefix: str = "gradscope", **options):
        super().__init__(report_dir=report_dir, prefix=prefix, **options)
        self.stage = "no_clip"
        self.installed_first = False
        self._logged_step: Optional[int] = None
        self._main = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
            raise GradscopeError("this transformers version has no on_pre_optimizer_step callback event, which "
                                 "GradscopeCallback records from; upgrade transformers (pip install -U transformers)")
        if self.monitor is not None:  # a second trainer.train() after one that did not end
            self.monitor.close(flush=False)
            self.monitor = None
        self._main = state.is_world_process_zero
        self.stage = "after_clip" if args.max_grad_norm and args.max_grad_norm > 0 else "no_clip"
        if args.report_to and not self.installed_first and self._main:
            import warnings

            warnings.warn("GradscopeCallback runs after the report_to integrations, which then miss its values "
                          "(they still reach state.log_history); use gradscope.integrations.add_gradscope_callback"
                          "(trainer) to run it first", RuntimeWarning, stacklevel=2)
        sharded = dist_utils.is_sharded(model)
        if self._main or sharded:
            self.monitor = self.make_monitor(model)
        self._logged_step = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.step(step=state.global_step + 1)  # global_step counts this step after the update

    def values(self, latest: Optional[dict] = None) -> dict[str, float]:
        """A recorded step (default: the last, flushing the monitor) as log entries."""
        latest = latest or self.monitor.latest()
        base = f"{self.prefix}/{self.stage}"
        global_l2 = latest["post_clip"] if not math.isnan(latest["post_clip"]) else latest["global"]
        out = {f"{base}/grad_norm": global_l2, f"{self.prefix}/nonfinite": float(latest["nonfinite"])}
        for block, value in latest["blocks"].items():
            out[f"{base}/grad_norm/{block}"] = value
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or logs is None or self._logged_step == state.global_step:
            return
        if "loss" not in logs and "grad_norm" not in logs:
            return  # an evaluation or the end-of-training summary, not a training step's log
        self.monitor.flush()  # a collective in sharded mode: every process takes part
        if not self._main or not self.monitor._chunks:
            return
        latest = self.monitor.latest()
        if latest["step"] != state.global_step:
            return  # this step was not sampled (every > 1)
        self._logged_step = state.global_step
        values = self.values(latest)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        self.finish(self._meta(args, state), write=self._main)

    def stopped(self, args, state, error: BaseException) -> None:
        """Training stopped with ``error`` (the Trainer has no event for it): the report of the steps so far."""
        self.finish(self._meta(args, state), write=self._main, error=error)

    def _meta(self, args, state) -> dict:
        return {"trainer_global_step": state.global_step, "clip_stage": self.stage,
                "max_grad_norm": args.max_grad_norm, "gradient_accumulation_steps": args.gradient_accumulation_steps}


def add_gradscope_callback(trainer, **options) -> GradscopeCallback:
    """Make a :class:`GradscopeCallback` and put it first among the trainer's callbacks, so the
    ``report_to`` integrations log its values; returns it.

    ``trainer.train`` is wrapped so that a run stopped by an error (a non-finite
    gradient with ``on_nonfinite="raise"``, out of memory, Ctrl-C) still writes
    the report of its steps and lets the model go.
    """
    callback = GradscopeCallback(**options)
    callback.installed_first = True
    trainer.callback_handler.callbacks.insert(0, callback)
    train = trainer.train

    @functools.wraps(train)
    def train_and_report(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        except BaseException as error:
            if callback.monitor is not None:
                callback.stopped(trainer.args, trainer.state, error)
            raise

    trainer.train = train_and_report
    return callback
