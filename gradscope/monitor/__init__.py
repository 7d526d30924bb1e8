"""``GradientMonitor``: gradient statistics of every training step, nearly for free.

Each monitored step makes **one** fused ``grad_stats`` call over all monitored
parameter gradients and copies its ``[params, 6]`` table into a preallocated
buffer on the gradients' device: nothing waits for the device. Every
``flush_every`` steps (or when you read the history) the buffer is copied to the
host in one transfer and appended to a per-step, per-parameter history, from
which per-block and global values are derived (blocks as :mod:`gradscope.blocks`
defines them, in execution order).

Two ways to drive it, once per optimizer step::

    monitor = gradscope.GradientMonitor(model)
    for batch in loader:
        loss = model(batch).loss
        loss.backward()
        monitor.step()                          # or: monitor.clip_grad_norm_(1.0)
        optimizer.step(); optimizer.zero_grad()

    monitor = gradscope.GradientMonitor(model, optimizer)   # hooks optimizer.step: no call needed

With the optimizer hook and a closure (``optimizer.step(closure)``, LBFGS), the
closure runs the backward inside the step, so the step is recorded when
``step()`` returns: the gradient of the closure's last evaluation.

**Gradient accumulation.** The monitor reads the gradient the optimizer is about
to consume: call ``step()`` at the optimizer step, after the last micro-batch's
backward (the optimizer hook does exactly that).

**Clipping.** ``monitor.clip_grad_norm_(max_norm)`` replaces
``torch.nn.utils.clip_grad_norm_``: it records the step, clips with the same
coefficient as torch (``max_norm / (total + 1e-6)``, at most 1) computed from
the statistics it just took (no second pass over the gradients), returns the
pre-clip total norm, and records both the pre-clip and the post-clip global
norm, and the clip level (``max_norm``). The per-step statistics are pre-clip.
Where something else clips (torch's ``clip_grad_norm_``, a trainer), call
``step()`` before the clip and :meth:`GradientMonitor.note_clip` after it: the
same three records. With the optimizer hook and torch's own clipping, the hook
sees (and records) post-clip gradients.

**Spikes.** The report has a finding for each spike of the pre-clip global
norm: a recorded step above ``SPIKE_FACTOR`` (5) times the median of the
``SPIKE_WINDOW`` (20) finite recorded steps before it, judged once there are
``SPIKE_MIN_HISTORY`` (10) of them; it names the block with the largest share of
that step's sum of squares. It is computed from the host history when the
report is made: no per-step cost.

**Weights and updates.** ``weight_norms=True`` adds the weights to the step's fused
``grad_stats`` call (one table, gradients then weights; no extra sync), so the
history has the weight L2 per parameter, block and in all, read before the
optimizer step. ``update_ratios=True`` (or ``N``: every N recorded steps; needs the
optimizer) also records ``||W_after - W_before|| / ||W_before||`` of the optimizer step itself, for any
optimizer: the step pre-hook copies the monitored weights into one kept copy
(memory: one more copy of them), the post-hook reduces the difference of the new
weights and the copy. On the CPU each is one pass of the compiled op: the copy
(``copy_sumsq``, streamed past the caches) reads the step's weight norms on the
way, in place of the fused call, and ``diff_sumsq`` reads both and writes
nothing; elsewhere the copy is torch's and the post-hook subtracts in place and
reduces with the fused op. A step
``on_nonfinite="skip"`` skipped has a ratio of 0; a step taken with a closure
(LBFGS) is recorded after the step, so its weight norm is the new one and it has
no ratio (NaN). Without an optimizer nothing tells the monitor where the update
begins and ends (between two ``step()`` calls the weights change by whatever ran),
so ``update_ratios`` is refused there, unless ``updates_from=optimizer`` names the
optimizer whose step ends the update (what the training callbacks do: the weights
are copied when ``step()`` records, the optimizer's post-hook takes the update);
weight norms are still recorded.

**dL/dh.** ``activation_grads=N`` hangs, on the steps it samples, a gradient hook on
each block's output (the first tensor of it, as :func:`gradscope.analyze` reads it)
that reduces dL/dh to its sum of squares on the device: no activation is kept and
nothing syncs. Several runs of a block and the micro-batches of one step add up
(the norm over all of the step's examples). Under ``torch.compile`` (monitor made
on the compiled model or its original) the hooks sit on the original module's
blocks and dynamo keeps them: the values are those of the eager model (tested with
the eager and aot_eager backends; inductor agrees). Under activation checkpointing
(``torch.utils.checkpoint``, ``use_reentrant`` True or False, so also the Hugging
Face ``gradient_checkpointing_enable()``) the values are exact too: with
``use_reentrant=True`` the first run has no gradient and the hook is hung on the
run repeated in the backward pass; with ``False`` the gradient reaches the first
run's output and the repeated run's hook never fires.

**Mixed precision (``torch.amp.GradScaler``).** Either call ``monitor.step()``
after ``scaler.unscale_(optimizer)`` (recommended; it also sees the steps the
scaler is about to skip), or pass ``scaler=scaler`` and call ``step()`` before
unscaling: the monitor then divides the statistics by the current scale on the
device (exact: the scale is a power of two); non-finite counts are those of the
scaled gradients, which is what the scaler checks. When the scaler has already
unscaled the attached optimizer's gradients it does not divide again. With the
optimizer hook, steps the scaler skips (inf/NaN found) never reach the hook.

**Non-finite gradients.** ``on_nonfinite="warn"`` warns at the next flush,
``"raise"`` raises :class:`~gradscope.errors.GradscopeError` at the step itself
(one host sync per monitored step: that is the price of stopping before the
optimizer applies NaN), ``"ignore"`` only records. ``"skip"`` (same sync)
skips the optimizer step of a step with non-finite values and training goes on:
the monitor sets every trainable gradient to ``None`` (as ``zero_grad()``
does), and torch's optimizers leave a parameter without a gradient untouched,
so the weights **and the optimizer state** (Adam's moments and step count,
weight decay) stay as they were; zeroing the gradients in place would not do
that (Adam would still decay its moments and count the step). The step number
is kept in :attr:`GradientMonitor.skipped_steps` and the report's finding names
it with the first block. It needs every optimizer to skip a parameter without a
gradient (all of ``torch.optim`` do), checks only the steps ``every`` samples
(keep ``every=1`` for it), and is refused under DDP and FSDP, where every process would have to agree. With ``scaler=``
and still-scaled gradients the GradScaler skips such a step itself, so the
gradients are left for it. The message names the blocks
with non-finite values in execution order, the first of them, and the deepest:
non-finite values born in the backward pass enter at the deepest block and flow
toward the input.

**Distributed.** See :mod:`gradscope.distributed`: under DDP rank 0 computes;
under FSDP (FSDP2/DTensor, FSDP1 with ``use_orig_params=True``) every rank
computes on its shards and one collective per flush combines them (call
``flush()``/``report()`` on every rank). Weight norms, update ratios and dL/dh
travel in that same collective: the weights and updates are the unsharded
model's, and dL/dh is that of the mean of the ranks' losses over the global
batch (the assumption is stated in :mod:`gradscope.distributed`); under DDP
rank 0 records dL/dh of its own loss and micro-batch.

**DeepSpeed ZeRO 1/2/3.** ``GradientMonitor(engine)`` (the engine
``deepspeed.initialize`` returned) records at each ``engine.step()`` that ends
an accumulation cycle, before DeepSpeed clips, from each rank's partition of the
gradients and of the fp32 master weights (:mod:`gradscope.zero`), combined as
FSDP shards are; DeepSpeed's clip is noted after the step, and the update of the
step taken for ``update_ratios``. Under fp16 the loss scale is divided out.

**The package**, in the order of its imports (a module imports only the ones above it):

- :mod:`.config`: :class:`MonitorConfig`, and the checks of what a monitor is given;
- :mod:`.parameters`: which parameters are followed, and those that join later;
- :mod:`.amp`, :mod:`.clipping`: undoing a GradScaler's scale; clipping as torch does;
- :mod:`.history`: the host history (typed :class:`HistoryChunk` records) and :class:`MonitorHistory`, what
  is read from it;
- :mod:`.recording`: a step's fused ``grad_stats`` call, the device buffer (a :class:`StepRecord` per step),
  the flush into a chunk; the weights kept for ``update_ratios``;
- :mod:`.hooks`: the hooks on the model's blocks (their execution order; dL/dh);
- :mod:`.findings`: non-finite values and spikes, in words;
- :mod:`.sinks`: TensorBoard and callables, fed at each flush;
- :mod:`.reporting`: the :class:`~gradscope.report.Report` of a run;
- :mod:`.gradient_monitor`: :class:`GradientMonitor`, which drives them at each optimizer step.
"""

from __future__ import annotations

from .clipping import CLIP_EPS
from .config import ON_NONFINITE, MonitorConfig
from .findings import (NONFINITE_FIX, SPIKE_FACTOR, SPIKE_FINDINGS_MAX, SPIKE_MIN_HISTORY, SPIKE_WINDOW,
                       describe_nonfinite, nonfinite_findings, spike_findings, spike_steps)
from .gradient_monitor import GradientMonitor, attached_monitor
from .history import HistoryChunk, MonitorHistory
from .parameters import NamedParams, select_parameters
from .recording import StepRecord
from .reporting import MAX_SERIES_STEPS, series_positions
from .sinks import CallableSink, TensorBoardSink

__all__ = [
    "CLIP_EPS", "CallableSink", "GradientMonitor", "HistoryChunk", "MAX_SERIES_STEPS", "MonitorConfig",
    "MonitorHistory", "NONFINITE_FIX", "NamedParams", "ON_NONFINITE", "SPIKE_FACTOR", "SPIKE_FINDINGS_MAX",
    "SPIKE_MIN_HISTORY", "SPIKE_WINDOW", "StepRecord", "TensorBoardSink", "attached_monitor", "describe_nonfinite",
    "nonfinite_findings", "select_parameters", "series_positions", "spike_findings", "spike_steps",
]
