"""``GradientMonitor``: what drives the monitor's parts at each optimizer step (see :mod:`gradscope.monitor`).

It takes the step (from the optimizer's hooks, or from ``step()``/``clip_grad_norm_()``), has it read and
buffered (:mod:`.recording`), flushes to the host history (:mod:`.history`), judges the flushed steps
(:mod:`.findings`), feeds the sinks (:mod:`.sinks`) and makes the report (:mod:`.reporting`).
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable, Optional

import torch
from torch import nn

from .. import distributed as dist_utils
from .. import zero
from ..blocks import find_blocks, unwrap
from ..errors import GradscopeError, UsageError
from .amp import check_scaler, factors_undoing, still_scaled, unscale_factors
from .clipping import clip_coefficient, post_clip_norm, scale_gradients_
from .config import MonitorConfig, check_optimizer, check_setting
from .findings import describe_nonfinite, judge_flushed
from .history import BlockLayout, HistoryChunk, HistoryStore, MonitorHistory
from .hooks import ExecutionOrder, InstanceWrap, OutputGradients
from .parameters import PARAMETERS_REPLACED, MonitoredParameters, select_parameters
from .recording import StepBuffer, StepRecord, UpdateTracker, finite_sumsq, has_nonfinite, read_step, total_norm
from .reporting import MAX_SERIES_STEPS, check_max_series_steps, monitor_report
from .sinks import sink_for

# model -> its live monitor: a second monitor on the same model is refused.
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


def attached_monitor(model: nn.Module) -> Optional["GradientMonitor"]:
    """The open monitor attached to ``model`` (or to the model it wraps), if any."""
    ref = _ATTACHED.get(unwrap(model))
    monitor = ref() if ref is not None else None
    return monitor if monitor is not None and not monitor.closed else None


class GradientMonitor:
    """Per-step gradient statistics of a model during training (see :mod:`gradscope.monitor`).

    ``GradientMonitor(model, optimizer=None, *, scaler=None, config=None, **options)``:
    ``options`` are :class:`MonitorConfig` fields (``every``, ``params``,
    ``on_nonfinite``, ``flush_every``, ``distributed``, ``backend``,
    ``keep_last``, ``weight_norms``, ``update_ratios``, ``activation_grads``).
    Parameters unfrozen later join the monitor at their first step (earlier
    steps read as "no gradient"). With an
    ``optimizer`` the monitor records from its step pre-hook; without one, call
    :meth:`step` (or :meth:`clip_grad_norm_`) once per optimizer step.
    A DeepSpeed engine as ``model`` (``GradientMonitor(engine)``) is followed
    through its ``step()``: each call that ends an accumulation cycle is
    recorded before it, DeepSpeed's clip noted after it (see :mod:`gradscope.zero`).
    ``step_numbers`` (a callable) numbers the steps recorded from a hook (a
    trainer's global step); default: the monitor's own 1-based count.
    ``updates_from=optimizer`` is for a monitor driven by :meth:`step` (a
    trainer's callback) with ``update_ratios``: the weights are kept when a step
    is recorded and the optimizer's own step post-hook takes the update; call
    :meth:`finish_update` at the end of each step for those the optimizer never
    took (a GradScaler skipped them: update 0).

    >>> import torch, gradscope
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    >>> monitor = gradscope.GradientMonitor(net)
    >>> net(torch.randn(2, 4)).sum().backward()
    >>> monitor.step()
    True
    >>> monitor.history.block_l2().shape
    torch.Size([1, 2])
    >>> monitor.close()
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                 scaler=None, config: Optional[MonitorConfig] = None,
                 updates_from: Optional[torch.optim.Optimizer] = None,
                 step_numbers: Optional[Callable[[], int]] = None, **options):
        if not isinstance(model, nn.Module):
            raise UsageError(f"GradientMonitor needs an nn.Module; got {type(model).__name__}")
        engine = model if zero.is_engine(model) else None
        model = unwrap(model)  # torch.compile, DDP, DeepSpeed, PEFT: the model's own names, without the prefix
        self.config = MonitorConfig.with_options(config, options)
        if attached_monitor(model) is not None:
            raise UsageError("a GradientMonitor is already attached to this model; reuse it, or call close() on it "
                             "before making another")
        if engine is not None and (optimizer is not None or updates_from is not None or scaler is not None):
            raise UsageError("GradientMonitor(engine) records at the DeepSpeed engine's step, with its own "
                             "optimizer and loss scaling: pass no `optimizer`, `updates_from` or `scaler`")
        named, frozen = select_parameters(model, self.config.params)
        check_scaler(scaler)
        if optimizer is not None:
            check_optimizer(optimizer, [p for _, p in named])
        if updates_from is not None:
            if optimizer is not None:
                raise UsageError("pass the optimizer as `optimizer` or as `updates_from`, not both (with "
                                 "`optimizer` its hooks record the steps and take the updates)")
            check_optimizer(updates_from, [p for _, p in named])
        self.mode = dist_utils.resolve_mode(model, self.config.distributed, zero_engine=engine is not None)
        self._fsdp1 = dist_utils.fsdp1_counted(model) if self.mode == "sharded" else {}
        self._zero = (zero.ZeroParts.of(engine, [p for _, p in named])
                      if engine is not None and zero.manages(model) else None)
        check_setting(self.config, self.mode, optimizer is not None or updates_from is not None or engine is not None)
        # Every check is done: from here on the monitor registers hooks.
        self.model = model
        self._monitored = MonitoredParameters(model, self.config.params, named, frozen)
        self._registered_blocks = find_blocks(model)
        self._order = ExecutionOrder(model, self._registered_blocks)
        self.active = not (self.mode == "replicated" and dist_utils.rank() != 0)
        self._scaler = scaler
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._engine = engine
        self._step_numbers = step_numbers
        self._hooks: list = []
        self._takes_updates = False  # an optimizer's step post-hook finishes the updates update_ratios keeps
        self._recorded_by_clip = False
        self._closure_step = False
        self._step_count = 0
        self._device = self._monitored.params[0].device
        self._buffer = StepBuffer(self.config.flush_every)
        self._store = HistoryStore(self.config.keep_last)
        self._updates = UpdateTracker(self.config.backend)
        self.skipped_steps: list[int] = []  # optimizer steps on_nonfinite="skip" skipped
        self._sinks: list[Callable[[MonitorHistory], None]] = []
        self._record_hooks: list[Callable[["GradientMonitor", int], None]] = []
        self._act = (OutputGradients(model, self._registered_blocks, self._act_armed, self.config.backend,
                                     sumsq_scale=dist_utils.activation_sumsq_scale(self.mode))
                     if self.config.activation_grads else None)
        self._closed = False
        _ATTACHED[model] = weakref.ref(self)
        if optimizer is not None:
            self._attach(optimizer)  # checked above, before any hook was registered
        elif engine is not None:
            self._attach_engine(engine)
        elif updates_from is not None and self.config.update_ratios:
            self._takes_updates = True
            self._hooks.append(updates_from.register_step_post_hook(self._after_update))

    # --- what it follows -------------------------------------------------------------

    @property
    def param_names(self) -> tuple[str, ...]:
        """The monitored parameters' names, in model order: the rows of the history."""
        return self._monitored.names

    @property
    def frozen(self) -> list[str]:
        """Names of the model's frozen parameters, which the monitor leaves out until they are unfrozen."""
        return self._monitored.frozen

    @property
    def closed(self) -> bool:
        """True after :meth:`close`: the model is released and nothing more is recorded."""
        return self._closed

    @property
    def has_records(self) -> bool:
        """Whether the host history holds a recorded step (after a flush): :attr:`history`, :meth:`latest`
        and :meth:`report` then have something to show (read it after :meth:`flush`)."""
        return bool(self._store)

    @property
    def recorded_steps(self) -> int:
        """Steps recorded so far: those flushed to the host (``keep_last``'s dropped ones included) and those
        still buffered on the device."""
        return self._store.steps_recorded + len(self._buffer)

    # --- driving -------------------------------------------------------------------

    def attach(self, optimizer: torch.optim.Optimizer) -> "GradientMonitor":
        """Record from ``optimizer``'s step pre-hook (after clipping and unscaling, before the update)."""
        self._check_open()
        if self._optimizer is not None:
            raise UsageError("this monitor is already attached to an optimizer; one monitor follows one optimizer")
        if self._engine is not None:
            raise UsageError("this monitor records at the DeepSpeed engine's step, which runs its optimizer; "
                             "attach no other")
        check_optimizer(optimizer, self._monitored.params)
        self._attach(optimizer)
        return self

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        self._takes_updates = True
        self._hooks += [optimizer.register_step_pre_hook(self._before_optimizer_step),
                        optimizer.register_step_post_hook(self._after_optimizer_step)]

    def _attach_engine(self, engine) -> None:
        """Record at each ``engine.step()`` that ends an accumulation cycle (the gradients are in DeepSpeed's
        partitions then, and gone after it), note DeepSpeed's clip and take the update after it; the
        instance's ``step`` is wrapped until :meth:`close`."""
        self._takes_updates = True
        original = engine.step

        @functools.wraps(original)
        def step(*args, **kwargs):
            recorded = (not self._closed and engine.is_gradient_accumulation_boundary()
                        and self._optimizer_step(None))
            result = original(*args, **kwargs)
            if recorded:
                self._after_engine_step(engine)
            return result

        self._hooks.append(InstanceWrap(engine, "step", step))

    def _after_engine_step(self, engine) -> None:
        max_norm = engine.gradient_clipping()
        total = engine.get_global_grad_norm()  # DeepSpeed's pre-clip norm of this step (a tensor: no sync)
        if max_norm and max_norm > 0 and total is not None:
            self.note_clip(max_norm, total)
        self.finish_update()

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        # args[0] is the optimizer. Set at every step: a closure that raised leaves no stale mark behind.
        self._closure_step = kwargs.get("closure", args[1] if len(args) > 1 else None) is not None
        if self._closure_step:
            return  # the closure runs the backward inside step(): record when step() returns
        self._on_optimizer_step()

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._closure_step:  # recorded after the step: no copy of the weights before it, no update ratio
            self._closure_step = False
            self._on_optimizer_step()
            self._updates.forget()
        elif self._updates.pending:
            self._updates.finish(self._weights(), self._buffer)

    def _after_update(self, optimizer, args, kwargs) -> None:
        """``updates_from``'s step post-hook: the update of the step recorded before it."""
        self.finish_update()

    def finish_update(self) -> None:
        """Take the update of the step just recorded now, if no optimizer step has taken it yet; nothing
        when no update is pending.

        For a monitor made with ``updates_from`` and driven by :meth:`step` (a trainer's callback): call it
        when the trainer's step ends, after the optimizer's. A step that never reached the optimizer's own
        step (a GradScaler found inf/NaN and skipped it) has its update read here: zero, where nothing else
        changed the weights."""
        if self._updates.pending:
            self._updates.finish(self._weights(), self._buffer)

    def _on_optimizer_step(self) -> None:
        if self._recorded_by_clip:  # clip_grad_norm_ already took this step
            self._recorded_by_clip = False
            return
        self._optimizer_step(None)

    def step(self, step: Optional[int] = None) -> bool:
        """Record the current gradients as one optimizer step; True if this step was sampled.

        Call it once per optimizer step, after backward (and after
        ``scaler.unscale_``), before ``optimizer.step()``. ``step`` overrides the
        monitor's own 1-based step counter (e.g. a trainer's global step).
        """
        self._check_open()
        if self._optimizer is not None or self._engine is not None:
            raise UsageError("this monitor records from the optimizer's step hook (or the DeepSpeed engine's "
                             "step); do not call step() as well (or make the monitor without an optimizer)")
        return self._optimizer_step(step)

    def _optimizer_step(self, step: Optional[int]) -> bool:
        self._pick_up_joining()
        scaled = still_scaled(self._scaler, self._optimizer)  # before counting: a refused step is not a step
        self._step_count += 1
        if step is None and self._step_numbers is not None:
            step = self._step_numbers()
        number = self._step_count if step is None else int(step)
        if number % self.config.every or not self.active:
            if self._act is not None:
                self._act.clear()  # a step not sampled: what its backward pass left is no step's record
            return False
        self._record(number, scaled)
        return True

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Record this step and clip the gradients of every trainable parameter in place, as
        ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)`` would (L2 norm).

        Returns the pre-clip total norm as a 0-dim tensor of the gradients' dtype, as torch does. When any
        gradient value is non-finite the total is NaN (torch gives inf when
        the non-finite values are all infinite) and the gradients become NaN
        or zero, as with torch: skip such steps. Use it instead of
        :meth:`step` for this optimizer step. The coefficient comes from the
        statistics just taken (no second pass over the gradients), except on
        steps the monitor does not sample, under DDP (so that every replica
        applies the very same coefficient) and when ``params`` monitors a
        subset: torch's clipping of all trainable parameters runs then.
        """
        self._check_open()
        if self.mode == "sharded":
            raise UsageError("clip_grad_norm_ needs the global norm of sharded gradients; use "
                             "torch.nn.utils.clip_grad_norm_ (it handles DTensor), or the FSDP1 model's own "
                             "model.clip_grad_norm_, and monitor.step()")
        if self._optimizer is not None:
            self._recorded_by_clip = True
        recorded = self._optimizer_step(None)
        subset = self.config.params is not None
        if not recorded or self.mode == "replicated" or subset:
            trainable = [p for p in self.model.parameters() if p.requires_grad] if subset else self._monitored.params
            total = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            if recorded:
                total64 = total.to(device=self._device, dtype=torch.float64)
                coef = clip_coefficient(max_norm, total64)
                self._buffer.mark_clipped(max_norm, (self._monitored_total() if subset else total64) * coef)
            return total
        total = self._monitored_total()
        coef = clip_coefficient(max_norm, total)
        dtype = scale_gradients_(self._monitored.params, coef)
        self._buffer.mark_clipped(max_norm, total * coef)
        return total.to(dtype)  # as torch's

    def _monitored_total(self) -> torch.Tensor:
        """The L2 norm of the monitored gradients at the step just recorded (NaN with a non-finite value)."""
        return total_norm(self._buffer.last_table())

    def note_clip(self, max_norm: float, total_norm: Optional[torch.Tensor] = None) -> None:
        """Note that the step just recorded was then clipped elsewhere (a trainer's own clipping) to
        ``max_norm``, its pre-clip total norm being ``total_norm`` (what torch's ``clip_grad_norm_`` returns;
        ``None``: the monitored gradients' norm, right where the clip covers exactly them): the post-clip
        global norm is derived on the device with torch's coefficient, without a sync. Call it only after a
        :meth:`step` that returned True, before the next flush; nothing is noted when no step is pending."""
        if len(self._buffer) == 0:
            return
        total = self._monitored_total() if total_norm is None else total_norm
        total = torch.as_tensor(total).to(device=self._device, dtype=torch.float64)
        self._buffer.mark_clipped(max_norm, post_clip_norm(max_norm, total))

    # --- recording -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this monitor is closed; make a new GradientMonitor")

    def _follow_device(self) -> None:
        """A model moved after the monitor was made: flush what the old buffer holds, continue on the new device."""
        device = self._monitored.params[0].device
        if device != self._device:
            self.flush()
            self._device = device
            self._buffer.release()
            self._updates.release()

    def _pick_up_joining(self) -> None:
        """Parameters unfrozen, or added to the model, since the monitor was made join it (see
        :mod:`.parameters`); the steps recorded before read as "no gradient" for them."""
        arrivals = self._monitored.arrivals()
        if arrivals is None:
            return
        if arrivals.joining:
            self.flush()  # the buffered steps keep the old rows; if it raises, the monitored set is unchanged
        source = self._monitored.admit(arrivals)
        if source is not None:
            if self._zero is not None:
                self._zero = zero.ZeroParts.of(self._engine, self._monitored.params)
            self._store.widen(source)
            self._buffer.release()
            self._updates.release()

    def _record(self, step: int, scaled: bool) -> None:
        self._follow_device()
        params = self._monitored.params
        if self._zero is not None:
            grads = self._zero.grads()
        elif self.mode == "sharded":
            grads = dist_utils.local_grads(params, self._fsdp1)
        else:
            grads = [p.grad for p in params]
        weights = self._weights() if self.config.weight_norms else []
        keeps = bool(self.config.update_ratios and self._takes_updates and self._sampled(self.config.update_ratios))
        norms_by_copy = keeps and self._updates.reads_norms(weights)  # the copy reads the weight norms on the way
        stats = read_step(grads, [] if norms_by_copy else weights, backend=self.config.backend, device=self._device)
        table = stats.table * unscale_factors(self._scaler, self._device) if scaled else stats.table
        loss_scale = zero.loss_scale(self._engine, self._device) if self._engine is not None else None
        if loss_scale is not None:  # DeepSpeed's fp16 gradients, still multiplied by its loss scale
            table = table * factors_undoing(loss_scale, self._device)
        if self._buffer.full:
            self.flush()  # before this step, so that clip_grad_norm_ finds the step in the buffer
        slot = self._buffer.next_slot(len(params), len(self._registered_blocks), self._device)
        self._buffer.table(slot).copy_(table)
        if keeps:  # update_ratios implies weight_norms: the weights are read
            kept_sumsq = self._updates.keep(weights, slot, step)
            if norms_by_copy:
                self._buffer.put_weights(slot, kept_sumsq)
        if weights and not norms_by_copy:
            self._buffer.put_weights(slot, finite_sumsq(stats.weight_table))
        if self._act is not None:
            self._act.take(self._buffer.act(slot))
        self._buffer.append(StepRecord(step, stats.present, stats.numel))
        for hook in self._record_hooks:
            hook(self, step)
        stops = self.config.on_nonfinite in ("raise", "skip") and self.mode != "sharded"
        if stops and has_nonfinite(table):  # the one host sync, paid only when asked for
            if self.config.on_nonfinite == "skip":
                self._skip(step, scaled)
                return
            self.flush(check=False)
            history = self._history()
            raise GradscopeError(describe_nonfinite(history, len(history) - 1))

    def _weights(self) -> list[torch.Tensor]:
        """The monitored weights as this rank reads them, detached: in sharded mode the parts it counts
        (:func:`~gradscope.distributed.local_weights`; under ZeRO the fp32 master weights' parts), whose sums of
        squares the flush adds over the ranks."""
        if self._zero is not None:
            return self._zero.weights()
        params = self._monitored.params
        if self.mode == "sharded":
            return dist_utils.local_weights(params, self._fsdp1)
        return [p.detach() for p in params]

    def _sampled(self, n: int, ahead: int = 0) -> bool:
        """Whether the monitor's step ``ahead`` of its count is one of every ``n`` recorded steps."""
        return (self._step_count + ahead) % (self.config.every * n) == 0

    def _act_armed(self) -> bool:
        """Whether the coming backward pass belongs to a step whose dL/dh is recorded."""
        return self.active and self._sampled(self.config.activation_grads, ahead=1)

    def _skip(self, step: int, scaled: bool) -> None:
        """Make the coming optimizer step a no-op: no gradient, no update (see :mod:`gradscope.monitor`)."""
        self.skipped_steps.append(step)
        if scaled:
            return  # the GradScaler finds the same non-finite values and skips the step; it needs the gradients
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self._optimizer is not None:
            params += [p for group in self._optimizer.param_groups for p in group["params"]]
        for p in params:
            p.grad = None

    def flush(self, *, check: bool = True) -> int:
        """Copy the buffered steps to the host history (one transfer); return how many. 0 on an empty buffer.

        In sharded mode this is a collective: call it on every rank.
        """
        count = len(self._buffer)
        if count == 0:
            return 0
        if self._monitored.replaced():
            self._buffer.drop()
            raise UsageError(PARAMETERS_REPLACED)
        self._store.append(self._buffer.take(sharded=self.mode == "sharded"))
        new = self._history(last_chunk=True)
        if check:
            judge_flushed(new, self.config.on_nonfinite, self.skipped_steps)
        for sink in self._sinks:
            sink(new)
        self._store.trim()
        return count

    # --- reading -------------------------------------------------------------------

    def _history(self, last_chunk: bool = False) -> MonitorHistory:
        """The steps on the host (``last_chunk``: those of the last flush only) with their blocks."""
        chunk = self._store.last() if last_chunk else self._store.whole()
        if chunk is None:
            chunk = HistoryChunk.empty(len(self._monitored), len(self._registered_blocks))
        layout = BlockLayout.of(self._monitored.names, self._order.order(), self._registered_blocks)
        return MonitorHistory.of(chunk, self._monitored.names, layout, self._order.known)

    @property
    def history(self) -> MonitorHistory:
        """Every recorded step (flushes the buffer first). UsageError when nothing was recorded yet."""
        self.flush()
        if not self._store:
            raise UsageError(self._empty_message())
        return self._history()

    def _empty_message(self) -> str:
        if not self.active:
            return "this rank does not record (DDP: rank 0 computes the statistics); read the history on rank 0"
        if self._step_count:
            return (f"no step recorded yet: {self._step_count} step(s) seen, `every={self.config.every}` "
                    "samples steps whose number is a multiple of it")
        if self._optimizer is not None:
            return ("no step recorded yet: the monitor records at each optimizer.step(); read it after the first "
                    "optimizer.step()")
        return ("no step recorded yet: call monitor.step() after loss.backward(), or pass the optimizer to the "
                "monitor so its step records automatically")

    def latest(self) -> dict:
        """The last recorded step as plain numbers.

        Keys: ``step``, ``global`` (L2 of all monitored gradients, before any clipping), ``post_clip`` and
        ``clip_max_norm`` (NaN unless the step was clipped: :meth:`clip_grad_norm_` or :meth:`note_clip`),
        ``nonfinite``, ``blocks`` ({block: L2, before any clipping}); ``global_weight_l2`` and ``weight_l2``
        ({block: L2 of the weights before the optimizer step}), ``global_update_ratio`` and ``update_ratio``
        ({block: ||W_after - W_before|| / ||W_before||}), ``act_grad_l2`` ({block: ||dL/dh|| at its output}):
        NaN unless ``weight_norms``, ``update_ratios``, ``activation_grads`` recorded them at that step.
        """
        self.flush()
        if not self._store:
            raise UsageError(self._empty_message())
        return self._history(last_chunk=True).last_values()

    def report(self, meta: Optional[dict] = None, *, max_series_steps: Optional[int] = MAX_SERIES_STEPS):
        """A :class:`~gradscope.report.Report` with the time series (``series``) and the last step's tables.

        A long run's series keeps at most ``max_series_steps`` evenly spaced steps (``None``: all), plus the
        last, the one with the largest global norm and every one with non-finite values, so the report
        stays small (a 10,000-step run in full is about 40 MB of JSON) without hiding an incident.
        ``meta["series_steps"]`` says how many were kept; :attr:`history` holds them all. ``meta["steps_recorded"]``
        counts every recorded step, ``meta["steps_kept"]`` those ``keep_last`` left in :attr:`history`.
        """
        check_max_series_steps(max_series_steps)
        history = self.history  # flushes first: the counts below include the buffered steps
        if self._zero is not None:
            meta = {"zero_stage": self._zero.stage, **(meta or {})}
        return monitor_report(history, self.model, steps_recorded=self._store.steps_recorded,
                              every=self.config.every, mode=self.mode, frozen_params=len(self.frozen),
                              skipped_steps=self.skipped_steps, meta=meta, max_series_steps=max_series_steps)

    # --- outputs -------------------------------------------------------------------

    def add_sink(self, sink: Callable[[MonitorHistory], None]) -> None:
        """Call ``sink(new_steps)`` with each flush's new steps (a :class:`MonitorHistory`)."""
        self._sinks.append(sink)

    def log_to(self, writer, *, histograms: bool = False, prefix: str = "gradscope") -> None:
        """Write per-block and global gradient norms at each flush to ``writer``: a TensorBoard
        ``SummaryWriter`` (anything with ``add_scalar``), or any callable ``writer(step, {key: value})``,
        called once per recorded step (keys: :mod:`gradscope.monitor.sinks`)::

            monitor.log_to(lambda step, d: wandb.log(d, step=step))

        ``histograms=True`` (SummaryWriter only) also writes one histogram per
        block at each recorded step; it copies those gradients to the host, so
        it costs what any histogram costs.
        """
        sink = sink_for(writer, histograms=histograms, prefix=prefix, sharded=self.mode == "sharded")
        self.add_sink(sink)
        if histograms:
            self._record_hooks.append(sink.write_histograms)

    def block_gradients(self) -> dict[str, list[torch.Tensor]]:
        """Current gradients grouped by block (execution order): what histograms are drawn from."""
        return self._monitored.gradients_by_block(self._order.order())

    def drop_unflushed(self) -> int:
        """Drop the recorded steps not flushed yet; return how many. After an error in sharded mode, where
        the flush's collective may never be joined by the other processes, the history stops at the last flush."""
        return self._buffer.drop()

    def close(self, *, flush: bool = True) -> None:
        """Flush, remove the hooks and release the model (a new monitor may then be attached).

        ``flush=False`` drops the steps not flushed yet (see :meth:`drop_unflushed`).
        """
        if self._closed:
            return
        try:
            if not flush:
                self.drop_unflushed()
            elif self.active or self.mode == "sharded":
                self.flush()
        finally:
            self._closed = True
            self._order.close()
            if self._act is not None:
                self._act.close()
            self._updates.release()
            for hook in self._hooks:
                hook.remove()
            if _ATTACHED.get(self.model) is not None and _ATTACHED[self.model]() is self:
                del _ATTACHED[self.model]

    def __enter__(self) -> "GradientMonitor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None or self.mode != "sharded")

