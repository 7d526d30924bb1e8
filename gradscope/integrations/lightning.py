"""Per-block gradient norms in a ``lightning.pytorch`` run.

::

    from gradscope.integrations.lightning import GradscopeLightningCallback
    trainer = lightning.pytorch.Trainer(callbacks=[GradscopeLightningCallback()])

Lightning calls ``on_before_optimizer_step`` once per optimizer step (after all
``accumulate_grad_batches`` micro-batches), after AMP unscaling and **before**
its own gradient clipping, so the recorded numbers are pre-clip and unscaled;
the keys say so (``gradscope/pre_clip/grad_norm`` and
``gradscope/pre_clip/grad_norm/<block>``). When Lightning clips by norm
(``gradient_clip_val``, through the precision plugin's ``clip_gradients``, which
``configure_gradient_clipping`` overrides also reach), the callback notes the
clip: ``gradscope/post_clip/grad_norm`` is the global norm after it (derived
with torch's coefficient from the monitored gradients, so exact when they are
every clipped parameter: the default ``params=None`` with one optimizer), and
the report carries the clip level. Values are logged with ``pl_module.log_dict``
at the end of every ``trainer.log_every_n_steps``-th optimizer step (the
monitor's buffer is read only then), from the global-zero process under DDP.
``on_nonfinite="skip"`` drops the gradients of a step with non-finite values
before the clip, so the optimizer step leaves the weights and the optimizer
state as they were (see :mod:`gradscope.monitor`). ``report_dir`` writes a
report when fitting ends, or stops with an error (then of the steps before it).

``weight_norms``, ``update_ratios`` and ``activation_grads`` add
``gradscope/weight_norm/global`` and ``/<block>``, ``gradscope/update_ratio/global``
and ``/<block>`` and ``gradscope/act_grad_norm/<block>`` to the logged values on
the steps that record them. The update is that of the optimizer step itself:
the weights are kept when the step is recorded (inside Lightning's closure,
before the update) and the update is taken in a step post-hook on the trainer's
torch optimizer (one; removed when fitting ends), so it is exact for any
optimizer, once per optimizer step under ``accumulate_grad_batches``; a step
the GradScaler skips never reaches it and has its update (0) read when the
batch ends; a skipped non-finite step has 0.

Install with ``pip install torch-gradscope[lightning]``.
"""

from __future__ import annotations

import math
from typing import Optional

from lightning.pytorch import Callback

from .. import distributed as dist_utils
from .. import zero
from ..errors import UsageError
from ._options import MonitorCallbackOptions, optional_values


class GradscopeLightningCallback(MonitorCallbackOptions, Callback):
    """A Lightning ``Callback`` that records every optimizer step and logs per-block gradient norms.

    Options: see :class:`~gradscope.integrations._options.MonitorCallbackOptions`.
    """

    def __init__(self, **options):
        super().__init__(**options)
        self._recorded_step: Optional[int] = None  # the optimizer step just recorded, until it is logged

    def on_fit_start(self, trainer, pl_module) -> None:
        self.restore_clip()
        if self.monitor is not None:
            self.monitor.close(flush=False)  # of an earlier fit that did not end
        if zero.manages(pl_module) or type(trainer.strategy).__name__ == "DeepSpeedStrategy":
            raise UsageError("GradscopeLightningCallback does not follow Lightning's DeepSpeed strategy, whose "
                             "gradients stay in DeepSpeed's partitions; gradscope reads them through the engine: "
                             "GradientMonitor(engine) in a loop of your own, or add_gradscope_callback(trainer) "
                             "with the Hugging Face Trainer")
        sharded = dist_utils.is_sharded(pl_module)
        self.monitor = None
        self._recorded_step = None
        if trainer.is_global_zero or sharded:
            self.monitor = self.make_monitor(pl_module, optimizers=tuple(trainer.optimizers))
            self._wrap_clip(trainer.precision_plugin)

    def _wrap_clip(self, plugin) -> None:
        """Note each clip by norm of a recorded step (until :meth:`restore_clip`)."""

        def make(original):
            def clip_gradients(optimizer, clip_val=0.0, gradient_clip_algorithm=None, *args, **kwargs):
                result = original(optimizer, clip_val, gradient_clip_algorithm, *args, **kwargs)
                algorithm = getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm)
                by_norm = algorithm is None or str(algorithm).lower() == "norm"
                if self._recorded_step is not None and by_norm and clip_val and math.isfinite(clip_val) \
                        and clip_val > 0:
                    self.monitor.note_clip(float(clip_val))
                return result

            return clip_gradients

        self.wrap_clip(plugin, "clip_gradients", make)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is None:
            return
        step = trainer.global_step + 1
        self._recorded_step = step if self.monitor.step(step=step) else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, self._recorded_step = self._recorded_step, None
        if self.monitor is None:
            return
        self.monitor.finish_update()  # a step the GradScaler skipped never reached the optimizer's post-hook
        if step is None or step % max(1, trainer.log_every_n_steps):
            return
        self.monitor.flush()  # after the clip, so the post-clip norm is in; a collective in sharded mode
        if trainer.is_global_zero:
            latest = self.monitor.latest()
            base = f"{self.prefix}/pre_clip"
            values = {f"{base}/grad_norm": latest["global"], f"{self.prefix}/nonfinite": float(latest["nonfinite"])}
            if not math.isnan(latest["post_clip"]):
                values[f"{self.prefix}/post_clip/grad_norm"] = latest["post_clip"]
            values.update({f"{base}/grad_norm/{b}": v for b, v in latest["blocks"].items()})
            values.update(optional_values(latest, self.prefix))
            pl_module.log_dict(values, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.restore_clip()
        self.finish(self._meta(trainer), write=trainer.is_global_zero)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.restore_clip()
        self.finish(self._meta(trainer), write=trainer.is_global_zero, error=exception)

    @staticmethod
    def _meta(trainer) -> dict:
        return {"trainer_global_step": trainer.global_step, "clip_stage": "pre_clip",
                "accumulate_grad_batches": trainer.accumulate_grad_batches}
