"""Per-block gradient norms in the Hugging Face ``Trainer``'s logs.

::

    from gradscope.integrations import add_gradscope_callback
    add_gradscope_callback(trainer, report_dir="gradscope-report")   # also any GradientMonitor option: every=10, ...
    trainer.train()

The callback records once per optimizer step (after all micro-batches of
gradient accumulation), on unscaled gradients, **before** the Trainer's
clipping: when ``max_grad_norm > 0``, :func:`add_gradscope_callback` wraps the
trainer's ``accelerator.clip_grad_norm_`` for the run (restored when training
ends) and records when it is called; otherwise it records at
``on_pre_optimizer_step``. The log keys say which values are which:

- ``gradscope/no_clip/grad_norm`` and ``gradscope/no_clip/grad_norm/<block>``
  when ``max_grad_norm`` is 0;
- ``gradscope/pre_clip/grad_norm`` and ``gradscope/pre_clip/grad_norm/<block>``
  when ``max_grad_norm > 0``: before the clip, the main series; with
  ``gradscope/post_clip/grad_norm``, the global norm after it;
- ``gradscope/after_clip/grad_norm`` and ``gradscope/after_clip/grad_norm/<block>``
  only where the clip could not be read before it (a ``GradscopeCallback``
  passed in ``callbacks=[...]``, which never sees the trainer; or a clipping
  path that does not go through ``accelerator.clip_grad_norm_``): a warning
  says so;
- ``gradscope/nonfinite``: non-finite gradient values in the step;
- the optional records below, where asked for.

Either way the global pre-clip (or unclipped) value equals the Trainer's own
``grad_norm``.

``weight_norms``, ``update_ratios`` and ``activation_grads`` add
``gradscope/weight_norm/global`` and ``/<block>`` (before the optimizer step),
``gradscope/update_ratio/global`` and ``/<block>`` and
``gradscope/act_grad_norm/<block>`` on the steps that record them. The update
is that of the optimizer step itself: the weights are kept when the step is
recorded (before the clip, which changes only the gradients) and the update is
taken in a step post-hook on the torch optimizer that accelerate's
``AcceleratedOptimizer`` wraps (removed when training ends), so it is exact
for any optimizer, once per optimizer step under gradient accumulation. A step
the GradScaler skips never reaches that optimizer: its update is read at
``on_step_end``, 0.

``on_nonfinite="skip"`` drops the gradients of a step with non-finite values
before the clip and the optimizer step, so the optimizer step changes neither
the weights nor the optimizer's state (see :mod:`gradscope.monitor`); the
learning-rate schedule still advances, and the Trainer logs ``grad_norm`` 0
(with clipping) or NaN (without) for that step; its update ratio is 0.

The values are those of the step being logged (as the Trainer's ``grad_norm``).
They are added to the ``logs`` dict and to ``state.log_history``; the
``report_to`` integrations (TensorBoard, W&B, ...) see them when the callback
runs before them: :func:`add_gradscope_callback` puts it first. Under DDP only
the main process computes; under FSDP (FSDP2, or FSDP1 with ``use_orig_params``)
every process computes on its shards and the main process logs. Under DeepSpeed
ZeRO 1/2/3 (:func:`add_gradscope_callback` only: the callback reaches the engine
through the trainer) every process reads its partitions at the engine's
``step()``, which runs inside the backward pass under accelerate, before
DeepSpeed's clip (the ``pre_clip`` keys, when ``gradient_clipping`` is set), and
the step's update is taken after it (see :mod:`gradscope.zero`). ``report_dir``
writes a report at the end of training and, with :func:`add_gradscope_callback`,
when training stops with an error.

Mixed precision: the Trainer unscales fp16 gradients inside
``accelerator.clip_grad_norm_``; the monitor is given the accelerator's
GradScaler, so statistics read before that divide by the scale on the device
(exact: a power of two), and those read after it do not.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

from transformers import TrainerCallback

from .. import distributed as dist_utils
from .. import zero
from ..errors import GradscopeError, UsageError
from ._options import MonitorCallbackOptions, optional_values


class GradscopeCallback(MonitorCallbackOptions, TrainerCallback):
    """A ``TrainerCallback`` that logs per-block and global gradient norms (see the module docstring)."""

    def __init__(self, *, report_dir=None, prefix: str = "gradscope", **options):
        super().__init__(report_dir=report_dir, prefix=prefix, **options)
        self.stage = "no_clip"
        self.installed_first = False
        self.trainer = None  # set by add_gradscope_callback: its clipping is read before it clips
        self._logged_step: Optional[int] = None
        self._main = True
        self._recorded_by_clip = False
        self._by_engine = False  # DeepSpeed: the monitor records at the engine's step, not at the callback's

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
            raise GradscopeError("this transformers version has no on_pre_optimizer_step callback event, which "
                                 "GradscopeCallback records from; upgrade transformers (pip install -U transformers)")
        self.restore_clip()
        engine = self._deepspeed_engine(args, model)
        if self.monitor is not None:  # a second trainer.train() after one that did not end
            self.monitor.close(flush=False)
            self.monitor = None
        self._main = state.is_world_process_zero
        accelerator = getattr(self.trainer, "accelerator", None)
        if engine is not None:  # DeepSpeed clips inside engine.step, where the monitor records before it
            clipping = bool(engine.gradient_clipping() and engine.gradient_clipping() > 0)
        else:
            clipping = bool(args.max_grad_norm and args.max_grad_norm > 0)
        self.stage = "no_clip" if not clipping else "pre_clip" if accelerator is not None else "after_clip"
        if self.stage == "after_clip" and self._main:
            warnings.warn("GradscopeCallback without its trainer reads the gradients after the Trainer's clipping "
                          "(keys gradscope/after_clip/...); use gradscope.integrations.add_gradscope_callback"
                          "(trainer) for the pre-clip norms", RuntimeWarning, stacklevel=2)
        if args.report_to and not self.installed_first and self._main:
            warnings.warn("GradscopeCallback runs after the `report_to` integrations, which then miss its values "
                          "(they still reach state.log_history); use gradscope.integrations.add_gradscope_callback"
                          "(trainer) to run it first", RuntimeWarning, stacklevel=2)
        sharded = dist_utils.is_sharded(model)
        if engine is not None:  # every process reads its partitions; the engine's step records
            self.monitor = self.make_monitor(model, engine=engine, step_numbers=lambda: state.global_step + 1)
        elif self._main or sharded:
            optimizer = kwargs.get("optimizer")
            self.monitor = self.make_monitor(model, scaler=getattr(accelerator, "scaler", None),
                                             optimizers=() if optimizer is None else (optimizer,))
            if self.stage == "pre_clip":
                self._wrap_clip(accelerator, state)
        self._logged_step = None
        self._recorded_by_clip = False
        self._by_engine = engine is not None

    def _deepspeed_engine(self, args, model):
        """The DeepSpeed engine of this run, or None when it does not run DeepSpeed."""
        trainer = self.trainer
        uses = (getattr(args, "deepspeed", None) or getattr(trainer, "is_deepspeed_enabled", False)
                or (model is not None and zero.manages(model)))
        if not uses:
            return None
        if trainer is None:
            raise UsageError("GradscopeCallback: this Trainer runs DeepSpeed, whose gradients the callback reads "
                             "at the engine's step, reached through the trainer: use "
                             "gradscope.integrations.add_gradscope_callback(trainer) instead of callbacks=[...]")
        engine = getattr(trainer, "model_wrapped", None)
        if not zero.is_engine(engine):
            raise GradscopeError(f"GradscopeCallback: this Trainer runs DeepSpeed but trainer.model_wrapped is a "
                                 f"{type(engine).__name__}, not the DeepSpeed engine; please report this "
                                 f"transformers version")
        return engine

    def _wrap_clip(self, accelerator, state) -> None:
        """Record each step when the Trainer calls ``accelerator.clip_grad_norm_``, before it clips, and note
        the clip (until :meth:`restore_clip`)."""

        def make(original):
            def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
                self._recorded_by_clip = True
                recorded = self._record(state)
                total = original(parameters, max_norm, *args, **kwargs)
                if recorded and total is not None and math.isfinite(max_norm):
                    self.monitor.note_clip(max_norm, total)
                return total

            return clip_grad_norm_

        self.wrap_clip(accelerator, "clip_grad_norm_", make)

    def _record(self, state) -> bool:
        return self.monitor.step(step=state.global_step + 1)  # global_step counts this step after the update

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is None or self._by_engine:  # DeepSpeed: recorded at the engine's step
            return
        if self._recorded_by_clip:  # the clip wrapper took this step
            self._recorded_by_clip = False
            return
        if self.stage == "pre_clip":  # the Trainer clipped some other way: these gradients are after it
            warnings.warn("the Trainer clipped without accelerator.clip_grad_norm_, so gradscope reads the gradients "
                          "after the clip (keys gradscope/after_clip/...)", RuntimeWarning, stacklevel=2)
            self.stage = "after_clip"
        self._record(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None:  # a step the GradScaler skipped never reached the optimizer's post-hook
            self.monitor.finish_update()

    def values(self, latest: Optional[dict] = None) -> dict[str, float]:
        """A recorded step (default: the last, flushing the monitor) as log entries (keys: module docstring)."""
        latest = latest or self.monitor.latest()
        base = f"{self.prefix}/{self.stage}"
        out = {f"{base}/grad_norm": latest["global"], f"{self.prefix}/nonfinite": float(latest["nonfinite"])}
        if self.stage == "pre_clip":
            out[f"{self.prefix}/post_clip/grad_norm"] = latest["post_clip"]
        for block, value in latest["blocks"].items():
            out[f"{base}/grad_norm/{block}"] = value
        out.update(optional_values(latest, self.prefix))
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or logs is None or self._logged_step == state.global_step:
            return
        if "loss" not in logs and "grad_norm" not in logs:
            return  # an evaluation or the end-of-training summary, not a training step's log
        self.monitor.flush()  # a collective in sharded mode: every process takes part
        if not self._main or not self.monitor.has_records:
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
        self.restore_clip()
        self.finish(self._meta(args, state), write=self._main)

    def stopped(self, args, state, error: BaseException) -> None:
        """Training stopped with ``error`` (the Trainer has no event for it): the report of the steps so far."""
        self.restore_clip()
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
    callback.trainer = trainer
    trainer.callback_handler.callbacks.insert(0, callback)
    train = trainer.train

    @functools.wraps(train)
    def train_and_report(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        except BaseException as error:
            callback.restore_clip()
            if callback.monitor is not None:
                callback.stopped(trainer.args, trainer.state, error)
            raise

    trainer.train = train_and_report
    return callback
