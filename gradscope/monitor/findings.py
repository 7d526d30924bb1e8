"""What a monitor's history says in words: the steps with non-finite gradient values (where they entered,
whether the run recovered) and the spikes of the global gradient norm, as messages at a flush and as the
report's findings (shaped as :func:`gradscope.analyze`'s). Computed from the host history: no per-step cost."""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

from ..errors import GradscopeError
from ..stats import Stat
from .history import MonitorHistory

NONFINITE_FIX = ("Check the inputs and the loss for NaN/Inf, lower the learning rate, or, in float16 training, use a "
                 "GradScaler (it skips such steps) or bfloat16")


def describe_nonfinite(history: MonitorHistory, t: int) -> str:
    """One message about the non-finite gradient values at step index ``t``."""
    count, where, _ = _nonfinite_where(history, t)
    return (f"gradscope: {count} non-finite gradient value(s) at step {int(history.steps[t])}; {where}. "
            f"{NONFINITE_FIX}")


def _nonfinite_where(history: MonitorHistory, t: int) -> tuple[int, str, Optional[str]]:
    """How many non-finite values step index ``t`` has; where, in words: the first and the deepest block
    holding one, parameters outside every block, or why the step cannot tell; and the first block, None
    where no block holds one or the step cannot tell."""
    per_param = history.nonfinite()[t].tolist()
    count = sum(per_param)
    blocks = history.nonfinite_blocks(t)
    outside = [name for name, block, n in zip(history.param_names, history.param_block.tolist(), per_param)
               if block < 0 and n > 0]
    order = "execution order" if history.order_known else "registration order: no forward pass seen yet"
    if count == int(history.numel[t].sum()):
        where = ("every gradient value is non-finite, so where it began cannot be read from this step: clipping "
                 "with a non-finite total norm multiplies every gradient by NaN (torch's clip_grad_norm_, and the "
                 "Hugging Face Trainer's clipping and grad_norm); record before clipping (monitor.step() or "
                 "monitor.clip_grad_norm_ in your loop) to see the blocks it entered by")
        outside, blocks = [], []
    elif blocks:
        where = f"first block ({order}): {blocks[0]}"
        if len(blocks) > 1:
            where += (f"; {len(blocks)} blocks affected, the deepest is {blocks[-1]} (values born in the backward "
                      f"pass enter there and flow toward the input)")
    else:
        where = "no block affected"
    if outside:
        where += f"; outside blocks: {', '.join(outside[:3])}" + (" ..." if len(outside) > 3 else "")
    return count, where, (blocks[0] if blocks else None)


def nonfinite_findings(history: MonitorHistory, recorded: int, skipped: Sequence[int] = ()) -> list[dict]:
    """The report's finding about the steps with non-finite gradient values (none without any), shaped as
    ``analyze``'s: it names the first such step and the first block affected there, and the optimizer steps
    ``on_nonfinite="skip"`` skipped (``skipped``). An error when the last step still has them and was not
    skipped (the run did not recover), else a warning (e.g. overflows a GradScaler skipped)."""
    bad = (history.nonfinite().sum(-1) > 0).nonzero().flatten().tolist()
    if not bad:
        return []
    skipped = sorted(set(skipped))
    first, step = bad[0], int(history.steps[bad[0]])
    count, where, block = _nonfinite_where(history, first)
    recovered = bad[-1] != len(history) - 1 or int(history.steps[-1]) in skipped
    shown = ", ".join(str(s) for s in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    of = str(len(history)) if recorded == len(history) else f"the last {len(history)} (of {recorded})"
    return [{
        "variant": "training", "severity": "warning" if recovered else "error", "kind": "non-finite",
        "block": block,
        "message": f"non-finite gradient values at {len(bad)} of {of} recorded step(s), first at step {step}"
                   + (f" in block {block}" if block else "")
                   + ("" if recovered else "; the last recorded step has them too")
                   + (f"; the optimizer step was skipped at {len(skipped)} step(s): {shown}" if skipped else ""),
        "evidence": f"{count} non-finite value(s) at step {step}; {where}",
        "fix": NONFINITE_FIX,
    }]


def judge_flushed(history: MonitorHistory, on_nonfinite: str, skipped: Sequence[int]) -> None:
    """At a flush, the steps of ``history`` (the flush's) with non-finite values: ``on_nonfinite="raise"``
    raises at the first of them, ``"warn"`` and ``"skip"`` warn once per step (saying where the optimizer step
    was skipped), ``"ignore"`` says nothing. The warning points at the code that called the monitor."""
    if on_nonfinite == "ignore":
        return
    bad = (history.nonfinite().sum(-1) > 0).nonzero().flatten().tolist()
    if bad and on_nonfinite == "raise":
        raise GradscopeError(describe_nonfinite(history, bad[0]))
    skipped = set(skipped)
    for t in bad:
        note = " The optimizer step was skipped." if int(history.steps[t]) in skipped else ""
        # stacklevel: here, the monitor's flush, the monitor's method that flushed, the caller of that
        warnings.warn(describe_nonfinite(history, t) + note, RuntimeWarning, stacklevel=4)


# A spike: a recorded step whose pre-clip global norm exceeds SPIKE_FACTOR times the median of the
# SPIKE_WINDOW finite global norms recorded before it, judged once SPIKE_MIN_HISTORY of them exist.
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_HISTORY = 5.0, 20, 10
SPIKE_FINDINGS_MAX = 20  # findings for the first spikes; the last of them counts the rest


def spike_steps(history: MonitorHistory) -> list[tuple[int, float, float, int]]:
    """(step index, global norm, running median, steps the median is of) of each spike of the pre-clip
    global norm (rule above)."""
    spikes, window = [], []
    for t, value in enumerate(history.global_l2().tolist()):
        if not math.isfinite(value):
            continue  # non-finite steps have findings of their own and no place in the baseline
        if len(window) >= SPIKE_MIN_HISTORY:
            ordered = sorted(window)
            median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
            if value > SPIKE_FACTOR * median:
                spikes.append((t, value, median, len(window)))
        window = (window + [value])[-SPIKE_WINDOW:]
    return spikes


def spike_findings(history: MonitorHistory) -> list[dict]:
    """One warning per spike of the pre-clip global gradient norm, naming its step and the block with the
    largest share of that step's sum of squares (computed from the host history: no per-step cost)."""
    spikes = spike_steps(history)
    if not spikes:
        return []
    table, _, _ = history.block_table()
    findings = []
    for t, value, median, count in spikes[:SPIKE_FINDINGS_MAX]:
        sumsq = table[t, :, Stat.SUMSQ]
        total = float(history.table[t, :, Stat.SUMSQ].sum())
        block = history.blocks[int(sumsq.argmax())] if len(history.blocks) else None
        share = float(sumsq.max()) / total if block is not None and total > 0 else math.nan
        step = int(history.steps[t])
        findings.append({
            "variant": "training", "severity": "warning", "kind": "grad-spike", "block": block,
            "message": f"gradient norm spike at step {step}: {value:.3g}, {value / median:.1f}x the running median"
                       + (f"; block {block} carried {share:.0%} of it" if block is not None else ""),
            "evidence": f"pre-clip global L2 {value:.4g} > {SPIKE_FACTOR:g} x {median:.4g}, the median of the "
                        f"{count} finite recorded steps before it (rule: > {SPIKE_FACTOR:g}x the median of up to "
                        f"{SPIKE_WINDOW} earlier steps, from the {SPIKE_MIN_HISTORY + 1}th finite step on)",
            "fix": "Look at the batch of that step and at the block named; lower the learning rate or use warmup "
                   "if spikes recur; clipping (max_norm) bounds the update but not the cause",
        })
    if len(spikes) > SPIKE_FINDINGS_MAX:
        findings[-1]["evidence"] += f"; {len(spikes) - SPIKE_FINDINGS_MAX} later spike(s) not listed"
    return findings
