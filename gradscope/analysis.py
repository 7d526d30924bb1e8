"""From measurements to tables, verdicts and findings.

Per parameter and per block: gradient L2, mean, std, RMS, mean |g|, max |g|, zero fraction,
non-finite count, weight L2, gradient-to-weight ratio; per block also dL/dh
(the gradient of the loss with respect to the block's output). Depth is the
block's position in execution order (0 = nearest the input). A block that runs
several times, each run on the output before it (ALBERT's shared layer group),
is a block per run, ``name#k``: dL/dh is per run, its parameter gradient (the
sum over the runs) is in the per-parameter rows under ``name``, at no depth.

The *flow signal* of a variant is its per-block dL/dh L2 norm when every block
received one, else its per-block parameter-gradient L2. From it:

- ``first_to_last_ratio``: flow at the first block / flow at the last block; an
  encoder-decoder's two stacks are judged apart (:func:`stacks`), on the one whose
  flow changes most;
- the decay fit: least squares of log10(flow) against depth. ``factor_per_block``
  is what one block toward the input multiplies the gradient by (10**-slope);
  below 1 the gradient halves every ``log(0.5)/log(factor)`` blocks, above 1 it
  doubles every ``log(2)/log(factor)``; ``r2`` says how well a constant factor
  describes it. ``trend`` is ``flat`` when the fitted change across all blocks
  is under 2x, else ``shrinks`` or ``grows`` (toward the input).

Verdicts, first that applies:

- ``non-finite``: the loss, a gradient or a block output holds NaN/Inf; the
  finding names the first block (execution order) where they appear, looking
  at block outputs first (where they start in the forward pass), then gradients;
- ``dead``: some block's parameter gradient is exactly zero in at least
  ``DEAD_ZERO_FRAC`` of its entries (dead units or underflow);
- ``no-depth``: no flow to compare: fewer than two blocks (a model without a
  numbered stack or a layer run again on the output before it), or fewer than two
  that received a gradient (blocks without one, frozen or skipped, are
  otherwise left out of the ratio and named);
- ``vanishing``: ``first_to_last_ratio < VANISHING_RATIO``;
- ``exploding``: ``first_to_last_ratio > EXPLODING_RATIO``;
- ``healthy``: otherwise. A healthy variant whose flow changes by a steady factor per
  block (fit ``r2 >= TREND_R2``, fitted change across the blocks over ``TREND_RATIO``x)
  also gets a warning finding (``vanishing-trend`` or ``exploding-trend``) saying at
  about how many blocks that rate would cross the threshold.

Parameters with no gradient (the loss does not use them) are reported as
"no gradient", never as zero, and do not count toward any statistic.
"""

from __future__ import annotations

import math
from typing import Optional

from .blocks import block_of
from .measure import Measurement
from .stats import GradStats

VANISHING_RATIO = 1e-2  # the first block gets less than 1/100 of the last block's gradient
EXPLODING_RATIO = 1e2  # the first block gets more than 100x the last block's gradient
TREND_R2 = 0.8  # a steady trend: a constant factor per block explains the flow this well ...
TREND_RATIO = 10.0  # ... and changes it more than this much across the blocks
DEAD_ZERO_FRAC = 0.99  # a block whose gradient is at least 99% exact zeros is dead
MIN_NORM_VALUES = 16  # a batch norm averaging fewer values per channel measures noise, not the model

VERDICTS = ("healthy", "vanishing", "exploding", "non-finite", "dead", "no-depth")


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 else math.inf
    return a / b


def _moments(sumsq: float, total: float, finite: int) -> tuple[float, float, float]:
    """(mean, std, rms) of ``finite`` elements with these sums (NaN where there are none)."""
    if finite <= 0:
        return math.nan, math.nan, math.nan
    mean = total / finite
    return mean, math.sqrt(max(sumsq / finite - mean * mean, 0.0)), math.sqrt(sumsq / finite)


def parameter_rows(variant: str, m: Measurement) -> list[dict]:
    """One row per trainable parameter: ``name`` and ``depth`` first."""
    depth = {b: i for i, b in enumerate(m.blocks)}
    g, w = m.grad.cpu(), m.weight.cpu()  # one device-to-host copy each, then host reads
    cols = {k: getattr(g, k).tolist()
            for k in ("sumsq", "sum", "sumabs", "maxabs", "nonfinite", "zeros", "numel", "present")}
    weight_sumsq = w.sumsq.tolist()
    rows = []
    for i, name in enumerate(m.param_names):
        # A shared block's parameters belong to all its runs: the block, at no one depth.
        block = block_of(name, m.blocks) or block_of(name, list(m.repeated))
        numel = math.prod(m.param_shapes[i])
        has_grad = bool(cols["present"][i])
        finite = numel - cols["nonfinite"][i]
        mean, std, rms = _moments(cols["sumsq"][i], cols["sum"][i], finite) if has_grad else (math.nan,) * 3
        grad_l2 = math.sqrt(cols["sumsq"][i]) if has_grad else math.nan
        weight_l2 = math.sqrt(weight_sumsq[i])
        rows.append({
            "name": name,
            "depth": depth.get(block) if block else None,
            "variant": variant,
            "block": block,
            "shape": m.param_shapes[i],
            "numel": numel,
            "has_grad": has_grad,
            "grad_l2": grad_l2,
            "grad_mean": mean,
            "grad_std": std,
            "grad_rms": rms,
            "grad_meanabs": cols["sumabs"][i] / finite if has_grad and finite > 0 else math.nan,
            "grad_maxabs": cols["maxabs"][i] if has_grad else math.nan,
            "grad_zero_frac": cols["zeros"][i] / numel if has_grad and numel else math.nan,
            "grad_nonfinite": cols["nonfinite"][i] if has_grad else 0,
            "weight_l2": weight_l2,
            "grad_to_weight": _div(grad_l2, weight_l2) if has_grad else math.nan,
        })
    return rows


def _act_row(act: GradStats, nonfinite_forward: list[int], i: int) -> dict:
    if not bool(act.present[i]):
        return {"act_grad_l2": math.nan, "act_grad_rms": math.nan, "act_grad_maxabs": math.nan,
                "act_grad_nonfinite": 0, "output_nonfinite": nonfinite_forward[i]}
    finite = int(act.numel[i]) - int(act.nonfinite[i])
    _, _, rms = _moments(float(act.sumsq[i]), float(act.sum[i]), finite)
    return {
        "act_grad_l2": math.sqrt(float(act.sumsq[i])),
        "act_grad_rms": rms,
        "act_grad_maxabs": float(act.maxabs[i]),
        "act_grad_nonfinite": int(act.nonfinite[i]),
        "output_nonfinite": nonfinite_forward[i],
    }


def block_rows(variant: str, m: Measurement, params: list[dict]) -> list[dict]:
    """One row per block in execution order, aggregated from its parameters' rows plus its dL/dh."""
    by_block: dict[str, list[dict]] = {b: [] for b in m.blocks}
    for row in params:
        if row["block"] in by_block:
            by_block[row["block"]].append(row)
    rows = []
    for depth, block in enumerate(m.blocks):
        members = by_block[block]
        with_grad = [r for r in members if r["has_grad"]]
        sumsq = sum(r["grad_l2"] ** 2 for r in with_grad)
        total = sum(r["grad_mean"] * (r["numel"] - r["grad_nonfinite"]) for r in with_grad
                    if r["numel"] > r["grad_nonfinite"])
        numel = sum(r["numel"] for r in with_grad)
        nonfinite = sum(r["grad_nonfinite"] for r in with_grad)
        zeros = sum(r["grad_zero_frac"] * r["numel"] for r in with_grad)
        sumabs = sum(r["grad_meanabs"] * (r["numel"] - r["grad_nonfinite"]) for r in with_grad
                     if r["numel"] > r["grad_nonfinite"])
        mean, std, rms = _moments(sumsq, total, numel - nonfinite)
        grad_l2 = math.sqrt(sumsq) if with_grad else math.nan
        # a run of a repeated block has no weights of its own: they are every run's, in the per-parameter rows
        weight_l2 = math.sqrt(sum(r["weight_l2"] ** 2 for r in members)) if members else math.nan
        rows.append({
            "block": block,
            "depth": depth,
            "variant": variant,
            "params": len(members),
            "params_no_grad": len(members) - len(with_grad),
            "numel": sum(r["numel"] for r in members),
            "grad_l2": grad_l2,
            "grad_mean": mean,
            "grad_std": std,
            "grad_rms": rms,
            "grad_meanabs": sumabs / (numel - nonfinite) if numel > nonfinite else math.nan,
            "grad_maxabs": max((r["grad_maxabs"] for r in with_grad), default=math.nan),
            "grad_zero_frac": zeros / numel if numel else math.nan,
            "grad_nonfinite": nonfinite,
            "weight_l2": weight_l2,
            "grad_to_weight": _div(grad_l2, weight_l2) if with_grad else math.nan,
            **_act_row(m.act_grad, m.act_nonfinite, depth),
        })
    return rows


def fit_decay(values: list[float]) -> Optional[dict]:
    """Least-squares fit of log10(value) against depth (0, 1, ...); None with fewer than 2 usable points.

    >>> fit = fit_decay([0.125, 0.25, 0.5, 1.0])
    >>> round(fit["factor_per_block"], 6), round(fit["halves_every_blocks"], 6), round(fit["r2"], 6)
    (0.5, 1.0, 1.0)
    """
    points = [(d, math.log10(v)) for d, v in enumerate(values) if v is not None and math.isfinite(v) and v > 0]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    ss_tot = sum((y - my) ** 2 for _, y in points)
    ss_res = sum((y - (my + slope * (x - mx))) ** 2 for x, y in points)
    factor = 10.0 ** (-slope)
    span = max(x for x, _ in points) - min(x for x, _ in points)
    if abs(slope) * span < math.log10(2.0):
        trend = "flat"
    else:
        trend = "shrinks" if factor < 1 else "grows"
    return {
        "trend": trend,
        "slope_log10_per_block": slope,
        "factor_per_block": factor,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "halves_every_blocks": math.log(0.5) / math.log(factor) if factor < 1 else None,
        "doubles_every_blocks": math.log(2.0) / math.log(factor) if factor > 1 else None,
        "points": n,
        "span_blocks": span,  # depth from the first fitted block to the last (blocks without a gradient are skipped)
    }


def flow_signal(blocks: list[dict]) -> tuple[str, list[float]]:
    """("dL/dh", per-block dL/dh L2) when every block has it, else ("parameter gradient", per-block grad L2)."""
    act = [b["act_grad_l2"] for b in blocks]
    if blocks and all(v is not None and not math.isnan(v) for v in act):
        return "dL/dh", act
    return "parameter gradient", [b["grad_l2"] for b in blocks]


def _first_nonfinite_block(blocks: list[dict]) -> Optional[dict]:
    for b in blocks:
        if b["output_nonfinite"]:
            return {"block": b["block"], "where": "in its output (forward pass)"}
    for b in blocks:
        if b["grad_nonfinite"] or b["act_grad_nonfinite"]:
            return {"block": b["block"], "where": "in its gradient (backward pass)"}
    return None


def stacks(blocks: list[dict]) -> list[list[int]]:
    """The depth axis in runs judged apart: an encoder-decoder's encoder blocks and its decoder blocks.

    The decoder reaches the encoder through cross-attention in every decoder block, not through the
    decoder's first block, so the flow is compared within each stack; one run for any other model.
    """
    def side(name: str) -> Optional[str]:
        parts = name.split(".")
        return "decoder" if "decoder" in parts else "encoder" if "encoder" in parts else None

    sides = [side(b["block"]) for b in blocks]
    if "encoder" not in sides or "decoder" not in sides:
        return [list(range(len(blocks)))]
    runs: list[list[int]] = []
    for i, s in enumerate(sides):
        if runs and sides[runs[-1][0]] == s:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _extent(ratio: float) -> float:
    """How far a first/last ratio is from 1, in log terms (-1 for no ratio)."""
    if math.isnan(ratio):
        return -1.0
    if ratio in (0.0, math.inf):
        return math.inf
    return abs(math.log(ratio))


def _zero_fraction(params: list[dict], block: str) -> float:
    """The fraction of exact zeros in the gradient of a block's parameters (0 when none has a gradient)."""
    rows = [r for r in params if r["block"] == block and r["has_grad"]]
    numel = sum(r["numel"] for r in rows)
    return sum(r["grad_zero_frac"] * r["numel"] for r in rows) / numel if numel else 0.0


def summarize(variant: str, m: Measurement, params: list[dict], blocks: list[dict]) -> dict:
    """The per-variant summary with its verdict (thresholds in the module docstring).

    An encoder-decoder is judged on the stack (see :func:`stacks`) whose flow changes the most;
    ``stacks`` then lists each one's ends and ratio.
    """
    signal, whole = flow_signal(blocks)
    runs = stacks(blocks)
    # Each run is compared between its first and last blocks that got a gradient (a frozen block gets none).
    reached = [[i for i in r if not math.isnan(whole[i])] for r in runs]
    ratios = [_div(whole[v[0]], whole[v[-1]]) if len(v) >= 2 else math.nan for v in reached]
    k = max(range(len(runs)), key=lambda i: _extent(ratios[i]))  # the stack whose flow changes most
    first_to_last = ratios[k]
    flow = [whole[i] for i in runs[k]]
    ends = [blocks[i] for i in (reached[k][0], reached[k][-1])] if len(reached[k]) >= 2 else (
        [blocks[runs[k][0]], blocks[runs[k][-1]]] if blocks else [])
    param_ratio = _div(ends[0]["grad_l2"], ends[-1]["grad_l2"]) if len(reached[k]) >= 2 else math.nan
    grad_nonfinite = sum(r["grad_nonfinite"] for r in params)
    nonfinite = (not math.isfinite(m.loss)) or grad_nonfinite > 0 or any(
        b["act_grad_nonfinite"] or b["output_nonfinite"] for b in blocks)
    dead = [b["block"] for b in blocks if not math.isnan(b["grad_zero_frac"]) and b["grad_zero_frac"] >= DEAD_ZERO_FRAC]
    dead += [block for block in m.repeated if _zero_fraction(params, block) >= DEAD_ZERO_FRAC]  # weights of all runs
    if nonfinite:
        verdict = "non-finite"
    elif dead:
        verdict = "dead"
    elif math.isnan(first_to_last):
        verdict = "no-depth"
    elif first_to_last < VANISHING_RATIO:
        verdict = "vanishing"
    elif first_to_last > EXPLODING_RATIO:
        verdict = "exploding"
    else:
        verdict = "healthy"
    total_sumsq = sum(r["grad_l2"] ** 2 for r in params if r["has_grad"])
    return {
        "variant": variant,
        "verdict": verdict,
        "loss": m.loss,
        "blocks": len(blocks),
        "first_block": ends[0]["block"] if ends else None,
        "last_block": ends[-1]["block"] if ends else None,
        "flow_signal": signal,
        "first_to_last_ratio": first_to_last,
        "param_first_to_last_ratio": param_ratio,
        "decay": fit_decay(flow),
        "total_grad_l2": math.sqrt(total_sumsq),
        "grad_nonfinite": grad_nonfinite,
        "first_nonfinite": _first_nonfinite_block(blocks) if nonfinite else None,
        "dead_blocks": dead,
        "blocks_no_grad": [b["block"] for b, v in zip(blocks, whole) if math.isnan(v)],  # left out of the ratio
        # all-zero weight matrices (a zero-initialized head): nothing flows back through them until updated
        "zero_weights": [r["name"] for r in params if len(r["shape"]) >= 2 and r["weight_l2"] == 0] if dead else [],
        "params": len(params),
        "params_no_grad": [r["name"] for r in params if not r["has_grad"]],
        "seconds": m.seconds,
        "repeated_blocks": dict(m.repeated),  # blocks run several times, each on the output before it: their runs
        # each stack's ends and ratio, and into_next_ratio: its last block's flow over the next stack's first's
        "stacks": [{"first_block": blocks[r[0]]["block"], "last_block": blocks[r[-1]]["block"], "blocks": len(r),
                    "first_to_last_ratio": ratio,
                    "into_next_ratio": _div(whole[r[-1]], whole[runs[j + 1][0]]) if j + 1 < len(runs) else None}
                   for j, (r, ratio) in enumerate(zip(runs, ratios))] if len(runs) > 1 else [],
    }


# --- findings -----------------------------------------------------------------------


def _fmt(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def describe_decay(decay: Optional[dict]) -> str:
    """'the gradient halves every 1.2 blocks toward the input (factor 0.56 per block, R^2 0.98)' and the like.

    Under one block per halving (doubling) it says the factor instead: 'falls 7.1x per block'.
    """
    if not decay:
        return "no decay fit (fewer than 2 blocks with a gradient)"
    fit = f"factor {_fmt(decay['factor_per_block'])} per block, R^2 {decay['r2']:.2f}"
    if decay["trend"] == "flat":
        return f"the gradient is about constant across depth ({fit})"
    shrinks = decay["trend"] == "shrinks"
    every = decay["halves_every_blocks" if shrinks else "doubles_every_blocks"]
    if every is not None and every < 1:  # "halves every 0.35 blocks" is hard to picture
        factor = decay["factor_per_block"]
        return (f"the gradient {'falls' if shrinks else 'grows'} {_fmt(max(factor, 1 / factor))}x per block "
                f"toward the input (R^2 {decay['r2']:.2f})")
    return f"the gradient {'halves' if shrinks else 'doubles'} every {_fmt(every)} blocks toward the input ({fit})"


def _has_residuals(inventory: dict) -> bool:
    """Whether the model has residual connections: blocks gradscope can edit, or transformer blocks (attention
    layers) whose skips no-residual did not remove."""
    return bool(inventory.get("residual_modules")) or (
        bool(inventory.get("attention_modules")) and not inventory.get("residuals_removed"))


def _has_skips(inventory: dict) -> bool:
    """Residual connections, or DenseNet's dense ones (each layer reads the outputs of all layers before it)."""
    return _has_residuals(inventory) or bool(inventory.get("dense_modules"))


def _vanishing_fixes(inventory: dict) -> str:
    fixes = []
    counts = inventory.get("activations", {})
    saturating = [k for k in counts if k in ("Sigmoid", "Tanh")]
    # The model's own activation is the most common kind: a pooler's one Tanh beside twelve GELUs is not it.
    if saturating and sum(counts[k] for k in saturating) >= inventory.get("relu_family_activations", 0):
        fixes.append(f"replace {'/'.join(saturating).lower()} with a ReLU-family activation (ReLU, GELU)")
        fixes.append("initialize with Xavier init (nn.init.xavier_uniform_)")
    elif inventory.get("relu_family_activations") and not inventory.get("norm_layers"):
        fixes.append("initialize with He init (nn.init.kaiming_normal_, nonlinearity='relu')")
    if not inventory.get("norm_layers"):
        fixes.append("add normalization (BatchNorm in CNNs and MLPs, LayerNorm in transformers)")
    if not _has_skips(inventory):
        fixes.append("add residual connections around the blocks")
    fixes.append("use fewer layers or start from pretrained weights")
    return "; ".join(fixes)


def _exploding_fixes(inventory: dict) -> str:
    fixes = []
    if not inventory.get("norm_layers"):
        fixes.append("add normalization (LayerNorm in transformers, BatchNorm in CNNs and MLPs)")
    elif not _has_skips(inventory):
        # Batch normalization in a deep plain stack amplifies the gradient toward the input by itself.
        fixes.append("add residual connections around the blocks (a deep plain stack with normalization "
                     "amplifies the gradient toward the input)")
    if _has_residuals(inventory):
        fixes.append("scale residual branches down (e.g. zero-init the last layer of each branch)")
    fixes.append("check the init gain (a smaller weight std)")
    return "; ".join(fixes)


def _steady_trend(summary: dict, inventory: dict) -> Optional[dict]:
    """A warning for a healthy variant whose gradient shrinks (or grows) by a steady factor per block.

    Within the thresholds today, such a model crosses them when it gets deeper: the finding says at
    how many blocks, so a reader can tell a flat profile from one that only looks fine at this depth.
    """
    decay = summary["decay"]
    if not decay or decay["trend"] == "flat" or decay["r2"] < TREND_R2:
        return None
    factor = decay["factor_per_block"]
    across = factor ** decay.get("span_blocks", decay["points"] - 1)  # the fitted change, last block to first
    if TREND_RATIO ** -1 < across < TREND_RATIO:
        return None
    shrinks = decay["trend"] == "shrinks"
    threshold = VANISHING_RATIO if shrinks else EXPLODING_RATIO
    depth = math.ceil(math.log(threshold) / math.log(factor)) + 1  # blocks at which the fit crosses it
    return {
        "variant": summary["variant"], "severity": "warning", "kind": "vanishing-trend" if shrinks else
        "exploding-trend", "block": summary["first_block"],
        "message": f"a steady {'decay' if shrinks else 'growth'} toward the input: at this rate a stack of about "
                   f"{depth} blocks would be {'vanishing' if shrinks else 'exploding'}",
        "evidence": f"{describe_decay(decay)}; fitted change across the {decay['points']} fitted blocks: "
                    f"{_fmt(across)}x "
                    f"(threshold {threshold:g})",
        "fix": _vanishing_fixes(inventory) if shrinks else _exploding_fixes(inventory),
    }


def findings_for(summary: dict, blocks: list[dict], inventory: dict) -> list[dict]:
    """What a reader should know about one variant: evidence and the fix, most serious first."""
    v = summary["variant"]
    verdict = summary["verdict"]
    ratio = summary["first_to_last_ratio"]
    where = (f"{summary['flow_signal']} at {summary['first_block']} is {_fmt(ratio)}x "
             f"its value at {summary['last_block']}")
    missing = summary.get("blocks_no_grad") or []
    if missing and verdict != "no-depth":
        where += (f" (the first and last blocks with a gradient; none reached {', '.join(missing[:3])}"
                  + (" ..." if len(missing) > 3 else "") + ")")
    found = []
    if verdict == "non-finite":
        first = summary["first_nonfinite"] or {}
        loss = "" if math.isfinite(summary["loss"]) else f"the loss is {summary['loss']}; "
        found.append({
            "variant": v, "severity": "error", "kind": "non-finite", "block": first.get("block"),
            "message": f"non-finite values first appear at {first['block']}, {first['where']}" if first
                       else "non-finite values appear in the loss",
            "evidence": f"{loss}{summary['grad_nonfinite']} non-finite parameter-gradient entries",
            "fix": "check the inputs for NaN/Inf; use float32 or bfloat16 rather than float16 (or a GradScaler); "
                   "lower the learning rate; add normalization before the block named",
        })
    elif verdict == "dead":
        dead = summary["dead_blocks"]
        zero = summary.get("zero_weights") or []
        found.append({
            "variant": v, "severity": "error", "kind": "dead", "block": dead[0],
            "message": f"{len(dead)} block(s) get an all-zero gradient, first {dead[0]}",
            "evidence": f"gradient zero fraction >= {DEAD_ZERO_FRAC} in {', '.join(dead[:5])}"
                        + (" ..." if len(dead) > 5 else "")
                        + (f"; all-zero weights: {', '.join(zero[:3])}" + (" ..." if len(zero) > 3 else "")
                           if zero else ""),
            "fix": (f"{zero[0]} is all zeros (a zero-initialized layer): it passes no gradient to the layers before "
                    "it until its first update, as at the start of training; measure after a step, or give it a "
                    "small random init" if zero else
                    "dead ReLU units or underflow: use LeakyReLU or GELU, re-initialize (He init), lower the "
                    "learning rate, compute in float32 rather than float16"),
        })
    elif verdict == "no-depth":
        n = summary["blocks"]
        stacked = summary.get("stacks") or []
        if max((st["blocks"] for st in stacked), default=n) < 2:
            found.append({
                "variant": v, "severity": "warning", "kind": "no-depth", "block": None,
                "message": f"no depth axis to follow the gradient along: {n} block(s) found"
                           + (f", one per stack ({len(stacked)} stacks)" if stacked else ""),
                "evidence": "blocks are the children of a stack of numbered modules (encoder.layer.7, layer3.2) "
                            "that hold parameters; the per-parameter table still has every gradient",
                "fix": "nothing to fix in the model: a model that holds no numbered stack, and no layer that runs "
                       "again on the output before it (as ALBERT's shared layer does), has no blocks to compare",
            })
        else:
            missing = summary.get("blocks_no_grad") or []
            runs = [b for b in missing if b.partition("#")[0] in (summary.get("repeated_blocks") or {})]
            found.append({
                "variant": v, "severity": "warning", "kind": "no-depth", "block": None,
                "message": "fewer than two blocks received a gradient, so the flow cannot be compared across depth",
                "evidence": f"no gradient at {len(missing)} of {n} blocks: {', '.join(missing[:5])}"
                            + (" ..." if len(missing) > 5 else ""),
                # a run's weights are every run's: without dL/dh at its output, a run has no gradient of its own
                "fix": "activation checkpointing that runs the blocks again in the backward pass "
                       "(use_reentrant=True) hides dL/dh at each run's output: measure without it, or with "
                       "use_reentrant=False" if runs else
                       "check that the objective reaches every block (frozen or skipped blocks get no gradient)",
            })
    elif verdict == "vanishing":
        found.append({
            "variant": v, "severity": "warning", "kind": "vanishing", "block": summary["first_block"],
            "message": f"vanishing gradient: the first block gets {_fmt(ratio)}x the last block's gradient",
            "evidence": f"{where} (threshold {VANISHING_RATIO:g}); {describe_decay(summary['decay'])}",
            "fix": _vanishing_fixes(inventory),
        })
    elif verdict == "exploding":
        found.append({
            "variant": v, "severity": "warning", "kind": "exploding", "block": summary["first_block"],
            "message": f"exploding gradient: the first block gets {_fmt(ratio)}x the last block's gradient",
            "evidence": f"{where} (threshold {EXPLODING_RATIO:g}); {describe_decay(summary['decay'])}",
            "fix": "clip gradients (torch.nn.utils.clip_grad_norm_); lower the learning rate; "
                   + _exploding_fixes(inventory),
        })
    else:
        found.append({
            "variant": v, "severity": "info", "kind": "healthy", "block": None,
            "message": "gradient reaches every block",
            "evidence": f"{where} (within {VANISHING_RATIO:g} to {EXPLODING_RATIO:g}); "
                        f"{describe_decay(summary['decay'])}",
            "fix": "",
        })
        # Not for shallow: the model's own first half, whose rate the whole model, measured beside it, tells better.
        trend = _steady_trend(summary, inventory) if v != "shallow" else None
        if trend:
            found.append(trend)
    for block, runs in (summary.get("repeated_blocks") or {}).items():
        found.append({
            "variant": v, "severity": "info", "kind": "shared-weights", "block": block,
            "message": f"{block} runs {runs} times in one forward pass, each run on the output of the block run "
                       f"before it: each run is a block of its own ({block}#0 nearest the input)",
            "evidence": "its layers share their weights across depth, so its parameter gradient is the sum over "
                        f"the {runs} runs and has no depth; the depth axis is dL/dh at each run's output",
            "fix": "",
        })
    if summary.get("stacks"):
        parts = [f"{st['first_block']} to {st['last_block']}: {_fmt(st['first_to_last_ratio'])}x"
                 for st in summary["stacks"]]
        across = [f"{st['last_block']} gets {_fmt(st['into_next_ratio'])}x {nxt['first_block']}'s"
                  for st, nxt in zip(summary["stacks"], summary["stacks"][1:])]
        found.append({
            "variant": v, "severity": "info", "kind": "stacks", "block": None,
            "message": f"encoder and decoder judged apart, on the stack whose flow changes most "
                       f"({summary['first_block']} to {summary['last_block']})",
            "evidence": f"{summary['flow_signal']} first/last per stack: {'; '.join(parts)}; between stacks "
                        f"(through cross-attention): {'; '.join(across)}",
            "fix": "",
        })
    no_grad = summary["params_no_grad"]
    if no_grad:
        found.append({
            "variant": v, "severity": "info", "kind": "no-gradient", "block": None,
            "message": f"{len(no_grad)} parameter tensor(s) received no gradient: the loss does not use them",
            "evidence": ", ".join(no_grad[:5]) + (" ..." if len(no_grad) > 5 else ""),
            "fix": "expected for parts the objective skips (a pooler under a language-model loss, a downsample "
                   "branch after no-residual); otherwise check the forward, or freeze them with requires_grad_(False)",
        })
    return found


def batch_norm_finding(variant: str, m: Measurement) -> Optional[dict]:
    """A warning when some batch norm averages fewer than ``MIN_NORM_VALUES`` values per channel: its batch
    statistics, and the gradient through them, are then noise (a tiny batch, or small images deep in a CNN)."""
    if not m.norm_values:
        return None
    name, fewest = min(m.norm_values.items(), key=lambda item: item[1])
    if fewest >= MIN_NORM_VALUES:
        return None
    few = sum(v < MIN_NORM_VALUES for v in m.norm_values.values())
    return {
        "variant": variant, "severity": "warning", "kind": "small-batch-norm", "block": None,
        "message": f"batch normalization averages as few as {fewest} values per channel (at {name}): its batch "
                   "statistics, and the gradient through them, are noise",
        "evidence": f"{few} of {len(m.norm_values)} batch-norm layers see fewer than {MIN_NORM_VALUES} values per "
                    "channel (batch size x positions); every variant is measured on this batch",
        "fix": "raise --batch-size, or --image-size",
    }


# --- across variants ----------------------------------------------------------------


def compare(a: str, b: str, blocks_a: list[dict], blocks_b: list[dict]) -> dict:
    """Per-block ratios a/b for blocks both variants have (matched by name), and their geometric means."""
    rows_b = {r["block"]: r for r in blocks_b}
    rows = []
    for ra in blocks_a:
        rb = rows_b.get(ra["block"])
        if rb is None:
            continue
        rows.append({
            "block": ra["block"],
            "depth": ra["depth"],
            "grad_l2_ratio": _div(ra["grad_l2"], rb["grad_l2"]),
            "act_grad_l2_ratio": _div(ra["act_grad_l2"], rb["act_grad_l2"]),
        })

    def geomean(key: str) -> float:
        logs = [math.log(r[key]) for r in rows if math.isfinite(r[key]) and r[key] > 0]
        return math.exp(sum(logs) / len(logs)) if logs else math.nan

    return {
        "a": a,
        "b": b,
        "blocks": rows,
        "grad_l2_ratio_geomean": geomean("grad_l2_ratio"),
        "act_grad_l2_ratio_geomean": geomean("act_grad_l2_ratio"),
    }


def comparison_pairs(variants: list[dict]) -> list[tuple[str, str]]:
    """pretrained vs scratch, pretrained (deep) vs shallow, and each what-if vs the variant it came from."""
    names = [v["name"] for v in variants]
    pairs = []
    if "pretrained" in names and "scratch" in names:
        pairs.append(("pretrained", "scratch"))
    if "pretrained" in names and "shallow" in names:
        pairs.append(("pretrained", "shallow"))
    for v in variants:
        base = v.get("base")
        if base and base in names and v["name"] != "shallow":
            pairs.append((v["name"], base))
    return pairs
