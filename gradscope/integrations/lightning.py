"""Per-block gradient norms in a ``lightning.pytorch`` run.

::

    from gradscope.integrations.lightning import GradscopeLightningCallback
    trainer = lightning.pytorch.Trainer(callbacks=[GradscopeLightningCallback()])

Lightning calls ``on_before_optimizer_step`` once per optimizer step (after all
``accumulate_grad_batches`` micro-batches), after AMP unscaling and **before**
its own gradient clipping, so these numbers are pre-clip and unscaled; the keys
say so (``gradscope/pre_clip/grad_norm`` and ``gradscope/pre_clip/grad_norm/<block>``).
They are logged with ``pl_module.log_dict`` every ``trainer.log_every_n_steps``
optimizer steps (the monitor's buffer is read only then), from the global-zero
process under DDP. ``report_dir`` writes a report when fitting ends, or stops
with an error (then of the steps before it).

Install with ``pip install torch-gradscope[lightning]``.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from .. import distributed as dist_utils
from ._options import MonitorCallbackOptions


class GradscopeLightningCallback(MonitorCallbackOptions, Callback):
    """A Lightning ``Callback`` that records every optimizer step and logs per-block gradient norms.

    Options: see :class:`~gradscope.integrations._options.MonitorCallbackOptions`.
    """

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.close(flush=False)  # of an earlier fit that did not end
        sharded = dist_utils.is_sharded(pl_module)
        self.monitor = None
        if trainer.is_global_zero or sharded:
            self.monitor = self.make_monitor(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is None:
            return
        step = trainer.global_step + 1
        if not self.monitor.step(step=step) or step % max(1, trainer.log_every_n_steps):
            return
        self.monitor.flush()
        if trainer.is_global_zero:
            latest = self.monitor.latest()
            base = f"{self.prefix}/pre_clip"
            values = {f"{base}/grad_norm": latest["global"], f"{self.prefix}/nonfinite": float(latest["nonfinite"])}
            values.update({f"{base}/grad_norm/{b}": v for b, v in latest["blocks"].items()})
            pl_module.log_dict(values, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.finish(self._meta(trainer), write=trainer.is_global_zero)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.finish(self._meta(trainer), write=trainer.is_global_zero, error=exception)

    @staticmethod
    def _meta(trainer) -> dict:
        return {"trainer_global_step": trainer.global_step, "clip_stage": "pre_clip",
                "accumulate_grad_batches": trainer.accumulate_grad_batches}
