"""From measurements to tables, verdicts and findings.

Per parameter and per block: gradient L2, mean, std, RMS, mean |g|, max |g|, zero fraction,
non-finite count, weight L2, gradient-to-weight ratio; per block also dL/dh
(the gradient of the loss with respect to the block's output). Depth is the
block's position in execution order (0 = nearest the input). A block that runs
several times, each run on the output before it (ALBERT's shared layer group),
is a block per run, ``name#k``: dL/dh is per run, its parameter gradient (the
sum over the runs) is in the per-parameter rows under ``name``, at no depth.
The rows, the summary and the findings are the records defined below
(:class:`ParamRow`, :class:`BlockRow`, :class:`Summary`, :class:`Finding`).

The *flow signal* of a variant is its per-block dL/dh L2 norm when every block
received one, else its per-block parameter-gradient L2. An encoder-decoder's two
stacks are judged apart (:func:`stacks`), on the one whose flow departs most from
its output end. Over the judged stack, relative to its last block (the output end):

- ``first_to_last_ratio``: the flow at the first block over the flow at the last;
- ``lowest_ratio`` / ``highest_ratio`` (and ``lowest_block`` / ``highest_block``):
  the smallest and largest flow over the stack, and the same for the parameter
  gradient (``param_lowest_ratio``, ...);
- the decay fit: least squares of log10(flow) against depth. ``factor_per_block``
  is what one block toward the input multiplies the gradient by (10**-slope);
  ``r2`` says how well one factor describes it. ``trend`` is ``flat`` when the
  factor is within ``FLAT_FACTOR`` either way, else ``shrinks`` or ``grows``
  (toward the input);
- the shape of the profile, the first that applies (``FEATURE_FACTOR`` is the
  smallest change taken for a feature rather than noise):

  - two blocks: ``flat`` (within the band), else ``step``;
  - ``flat``: the factor is within the band and every block is within
    ``FEATURE_FACTOR`` of the fit;
  - ``step``: one transition between neighbouring blocks carries at least
    ``FEATURE_SHARE`` of the change along the profile (the sum of the absolute log
    changes) and changes the gradient by more than the band;
  - ``trough`` (U-shaped, a bottleneck) or ``peak``: the lowest (highest) block
    is inside the stack, at least ``FEATURE_FACTOR`` below (above) both ends, and
    the way down to it and up again carries at least ``FEATURE_SHARE`` of the change
    (a zigzag whose lowest point happens to lie inside is ``noise``);
  - ``steady``: one rate describes the profile, ``r2 >= RATE_R2``: only then is it
    read as "halves every N blocks" (or "falls Nx per block");
  - ``noise``: no trend (the factor is within the band) and no feature;
  - ``uneven``: a trend that no one rate describes.

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
- ``vanishing``: the lowest flow, or the lowest parameter gradient, over the stack
  is under ``VANISHING_RATIO`` of the last block's: at the first block, or inside
  the stack (a head that also reads the first blocks gives them a gradient of
  their own while the middle collapses);
- ``exploding``: the highest is over ``EXPLODING_RATIO`` of the last block's
  (where both are crossed, the farther of the two in log terms);
- ``healthy``: otherwise. A healthy variant whose flow changes by a steady factor per
  block (fit ``r2 >= RATE_R2``, fitted change across the blocks over ``TREND_RATIO``x)
  also gets a warning finding (``vanishing-trend`` or ``exploding-trend``) saying at
  about how many blocks that rate would cross the threshold.

A vanishing or exploding finding names where the gradient bottoms out (peaks) and by
how much, and fits its fix to the cause: one block that the gradient falls through
(named), or the depth. A vanishing one also says what it means for training: a scale
problem that Adam-style optimizers compensate and plain SGD does not, or a gradient
that no optimizer can use (:func:`step_margin`: exactly zero, or too small for even
Adam's normalized step to register in the weights; or, through one block, smaller
than the dtype resolves).

Parameters with no gradient (the loss does not use them) are reported as
"no gradient", never as zero, and do not count toward any statistic.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from .blocks import block_of
from .measure import Measurement
from .records import (FLAT_FACTOR, RATE_R2, SHAPES, TREND_RULE, VERDICTS, BlockRow, Decay, Finding, ParamRow, Summary,
                      describe_decay, shape_of, sig3, trend_cell)
from .stats import GradStats

VANISHING_RATIO = 1e-2  # some block gets less than 1/100 of the last block's gradient
EXPLODING_RATIO = 1e2  # some block gets more than 100x the last block's gradient
TREND_RATIO = 10.0  # a steady trend (fit R^2 >= RATE_R2) worth a warning changes it more than this much across the blocks
FEATURE_FACTOR = 1.5  # a trough, a peak, or the scatter of a flat profile: changes under 1.5x are noise
FEATURE_SHARE = 2 / 3  # a step, a trough, a peak: it carries at least two thirds of the change along the profile
DEAD_ZERO_FRAC = 0.99  # a block whose gradient is at least 99% exact zeros is dead
MIN_NORM_VALUES = 16  # a batch norm averaging fewer values per channel measures noise, not the model


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


def parameter_rows(variant: str, m: Measurement) -> list[ParamRow]:
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
            **unit_fields(m, i, has_grad),
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


def block_rows(variant: str, m: Measurement, params: list[ParamRow]) -> list[BlockRow]:
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
            **block_unit_fields(members),
        })
    return rows


def fit_decay(values: Sequence[Optional[float]], depths: Optional[Sequence[int]] = None) -> Optional[Decay]:
    """Least-squares fit of log10(value) against depth, and the profile's shape; None with fewer than 2 usable
    points. ``depths`` are the values' depths (default 0, 1, ...); a value that is None, NaN, zero or infinite
    is left out of the fit, not out of the depth axis.

    >>> fit = fit_decay([0.125, 0.25, 0.5, 1.0])
    >>> round(fit["factor_per_block"], 6), round(fit["halves_every_blocks"], 6), round(fit["r2"], 6), fit["shape"]
    (0.5, 1.0, 1.0, 'steady')
    """
    depths = range(len(values)) if depths is None else depths
    points = [(d, math.log10(v)) for d, v in zip(depths, values) if v is not None and math.isfinite(v) and v > 0]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    ss_tot = sum((y - my) ** 2 for _, y in points)
    residuals = [y - (my + slope * (x - mx)) for x, y in points]
    r2 = 1.0 - sum(e * e for e in residuals) / ss_tot if ss_tot > 0 else 1.0
    factor = 10.0 ** (-slope)
    shape, at, ratio = _shape(points, slope, r2, residuals)
    return {
        "trend": "flat" if _within_flat_band(slope) else "shrinks" if factor < 1 else "grows",
        "slope_log10_per_block": slope,
        "factor_per_block": factor,
        "r2": r2,
        "halves_every_blocks": math.log(0.5) / math.log(factor) if factor < 1 else None,
        "doubles_every_blocks": math.log(2.0) / math.log(factor) if factor > 1 else None,
        "points": n,
        "span_blocks": points[-1][0] - points[0][0],  # first fitted block to the last (blocks without a gradient
        "shape": shape,                               # are skipped)
        "shape_at": at,
        "shape_ratio": ratio,
    }


def _within_flat_band(slope_log10: float) -> bool:
    """Whether a per-block change of 10**slope is within ``FLAT_FACTOR`` either way."""
    return abs(slope_log10) <= math.log10(FLAT_FACTOR) * (1 + 1e-12)


def _shape(points: list[tuple[int, float]], slope: float, r2: float,
           residuals: list[float]) -> tuple[str, list[int], Optional[float]]:
    """(shape, shape_at, shape_ratio) of a profile of (depth, log10 flow) points in depth order; the first that
    applies (the rule is in the module docstring)."""
    ys = [y for _, y in points]
    depths = [d for d, _ in points]
    # toward the input, point i + 1 to point i: log10 of what that transition multiplies the gradient by
    moves = [ys[i] - ys[i + 1] for i in range(len(ys) - 1)]
    feature = math.log10(FEATURE_FACTOR)
    if len(points) == 2:  # one transition: flat, or a step; a rate would be read into a single number
        per_block = moves[0] / (depths[1] - depths[0])
        return ("flat", [], None) if _within_flat_band(per_block) else ("step", [depths[1], depths[0]],
                                                                       10 ** moves[0])
    if _within_flat_band(slope) and max(residuals) - min(residuals) <= feature:
        return "flat", [], None
    k = max(range(len(moves)), key=lambda i: abs(moves[i]))
    per_block = moves[k] / (depths[k + 1] - depths[k])
    if not _within_flat_band(per_block) and abs(moves[k]) >= FEATURE_SHARE * sum(abs(m) for m in moves):
        return "step", [depths[k + 1], depths[k]], 10 ** moves[k]
    extreme = _interior_extreme(ys, moves)
    if extreme is not None:
        i, shape = extreme
        return shape, [depths[i]], 10 ** (ys[i] - ys[-1])
    if r2 >= RATE_R2:
        return "steady", [], None
    if _within_flat_band(slope):
        return "noise", [], 10 ** (max(ys) - min(ys))
    return "uneven", [], 10 ** (ys[0] - ys[-1])


def _interior_extreme(ys: list[float], moves: list[float]) -> Optional[tuple[int, str]]:
    """(index, "trough" or "peak") of the lowest or highest point inside the profile where it is at least
    ``FEATURE_FACTOR`` below or above both ends and the way there from both ends carries at least
    ``FEATURE_SHARE`` of the change along the profile; the larger excursion of the two where both are."""
    feature, total = math.log10(FEATURE_FACTOR), sum(abs(m) for m in moves)
    found = []
    for i, sign, shape in ((min(range(len(ys)), key=ys.__getitem__), 1, "trough"),
                           (max(range(len(ys)), key=ys.__getitem__), -1, "peak")):
        rise = [sign * (end - ys[i]) for end in (ys[0], ys[-1])]  # from the extreme to each end, toward the ends
        if 0 < i < len(ys) - 1 and min(rise) >= feature and sum(rise) >= FEATURE_SHARE * total:
            found.append((min(rise), i, shape))
    if not found:
        return None
    _, i, shape = max(found)
    return i, shape


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
    """How far a ratio is from 1, in log terms (-1 for no ratio)."""
    if ratio is None or math.isnan(ratio):
        return -1.0
    if ratio in (0.0, math.inf):
        return math.inf
    return abs(math.log(ratio))


def _zero_fraction(params: list[dict], block: str) -> float:
    """The fraction of exact zeros in the gradient of a block's parameters (0 when none has a gradient)."""
    rows = [r for r in params if r["block"] == block and r["has_grad"]]
    numel = sum(r["numel"] for r in rows)
    return sum(r["grad_zero_frac"] * r["numel"] for r in rows) / numel if numel else 0.0


def _extremes(values: list[float], names: list[str]) -> dict:
    """The lowest and highest of a profile relative to its last value (the output end), with their blocks;
    values that are NaN are left out, and with fewer than two left (or a last value that is NaN or zero) every
    entry is None."""
    kept = [(v, n) for v, n in zip(values, names) if not math.isnan(v)]
    if len(kept) < 2 or kept[-1][0] == 0:
        return {"lowest_block": None, "lowest_ratio": None, "highest_block": None, "highest_ratio": None}
    last = kept[-1][0]
    low = min(kept, key=lambda vn: vn[0])
    high = max(kept, key=lambda vn: vn[0])
    return {"lowest_block": low[1], "lowest_ratio": low[0] / last,
            "highest_block": high[1], "highest_ratio": high[0] / last}


def _profile_extent(extremes: dict) -> float:
    """How far a profile departs from its output end, in log terms (-1 without a profile)."""
    return max(_extent(extremes["lowest_ratio"]), _extent(extremes["highest_ratio"]))


def _depth_verdict(summary: Summary) -> str:
    """``vanishing``, ``exploding`` or ``healthy`` from the extremes of both profiles (dL/dh, or the parameter
    gradient, and the parameter gradient) relative to the last block; where both thresholds are crossed, the
    farther one."""
    lows = [r for r in (summary["lowest_ratio"], summary["param_lowest_ratio"]) if r is not None]
    highs = [r for r in (summary["highest_ratio"], summary["param_highest_ratio"]) if r is not None]
    low, high = min(lows, default=1.0), max(highs, default=1.0)
    vanishing, exploding = low < VANISHING_RATIO, high > EXPLODING_RATIO
    if vanishing and exploding:
        return "vanishing" if _extent(low) >= _extent(high) else "exploding"
    return "vanishing" if vanishing else "exploding" if exploding else "healthy"


def summarize(variant: str, m: Measurement, params: list[ParamRow], blocks: list[BlockRow]) -> Summary:
    """The per-variant summary with its verdict: :func:`summarize_rows` on a measurement's rows."""
    return summarize_rows(variant, params, blocks, loss=m.loss, seconds=m.seconds, repeated=dict(m.repeated))


def summarize_rows(variant: str, params: list[ParamRow], blocks: list[BlockRow], *, loss: float,
                   seconds: Optional[float] = None, repeated: Optional[dict[str, int]] = None) -> Summary:
    """The per-variant summary with its verdict (thresholds in the module docstring), from the variant's rows.

    An encoder-decoder is judged on the stack (see :func:`stacks`) whose flow departs the most from its
    output end; ``stacks`` then lists each one's ends and ratio.
    """
    repeated = repeated or {}
    signal, whole = flow_signal(blocks)
    runs = stacks(blocks)
    # Each run is compared between its first and last blocks that got a gradient (a frozen block gets none).
    reached = [[i for i in r if not math.isnan(whole[i])] for r in runs]
    ratios = [_div(whole[v[0]], whole[v[-1]]) if len(v) >= 2 else math.nan for v in reached]
    profiles = [_extremes([whole[i] for i in v], [blocks[i]["block"] for i in v]) for v in reached]
    k = max(range(len(runs)), key=lambda i: _profile_extent(profiles[i]))  # the stack whose flow departs most
    judged = reached[k]
    first_to_last = ratios[k]
    ends = [blocks[i] for i in (judged[0], judged[-1])] if len(judged) >= 2 else (
        [blocks[runs[k][0]], blocks[runs[k][-1]]] if blocks else [])
    param_ratio = _div(ends[0]["grad_l2"], ends[-1]["grad_l2"]) if len(judged) >= 2 else math.nan
    param_profile = _extremes([blocks[i]["grad_l2"] for i in judged], [blocks[i]["block"] for i in judged])
    grad_nonfinite = sum(r["grad_nonfinite"] for r in params)
    nonfinite = (not math.isfinite(loss)) or grad_nonfinite > 0 or any(
        b["act_grad_nonfinite"] or b["output_nonfinite"] for b in blocks)
    dead = [b["block"] for b in blocks if not math.isnan(b["grad_zero_frac"]) and b["grad_zero_frac"] >= DEAD_ZERO_FRAC]
    dead += [block for block in repeated if _zero_fraction(params, block) >= DEAD_ZERO_FRAC]  # weights of all runs
    total_sumsq = sum(r["grad_l2"] ** 2 for r in params if r["has_grad"])
    summary: Summary = {
        "variant": variant,
        "verdict": "",  # decided below, from the fields around it
        "loss": loss,
        "blocks": len(blocks),
        "first_block": ends[0]["block"] if ends else None,
        "last_block": ends[-1]["block"] if ends else None,
        "flow_signal": signal,
        "first_to_last_ratio": first_to_last,
        "param_first_to_last_ratio": param_ratio,
        **profiles[k],
        **{f"param_{key}": value for key, value in param_profile.items()},
        "decay": fit_decay([whole[i] for i in runs[k]], runs[k]),
        "total_grad_l2": math.sqrt(total_sumsq),
        "grad_nonfinite": grad_nonfinite,
        "first_nonfinite": _first_nonfinite_block(blocks) if nonfinite else None,
        "dead_blocks": dead,
        "blocks_no_grad": [b["block"] for b, v in zip(blocks, whole) if math.isnan(v)],  # left out of the ratio
        # all-zero weight matrices (a zero-initialized head): nothing flows back through them until updated
        "zero_weights": [r["name"] for r in params if len(r["shape"]) >= 2 and r["weight_l2"] == 0] if dead else [],
        "params": len(params),
        "params_no_grad": [r["name"] for r in params if not r["has_grad"]],
        "seconds": seconds,
        "repeated_blocks": dict(repeated),  # blocks run several times, each on the output before it: their runs
        # each stack's ends and ratio, and into_next_ratio: its last block's flow over the next stack's first's
        "stacks": [{"first_block": blocks[r[0]]["block"], "last_block": blocks[r[-1]]["block"], "blocks": len(r),
                    "first_to_last_ratio": ratio,
                    "into_next_ratio": _div(whole[r[-1]], whole[runs[j + 1][0]]) if j + 1 < len(runs) else None}
                   for j, (r, ratio) in enumerate(zip(runs, ratios))] if len(runs) > 1 else [],
    }
    if nonfinite:
        summary["verdict"] = "non-finite"
    elif dead:
        summary["verdict"] = "dead"
    elif math.isnan(first_to_last):
        summary["verdict"] = "no-depth"
    else:
        summary["verdict"] = _depth_verdict(summary)
    return summary


# --- findings -----------------------------------------------------------------------


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


def _judged_rows(summary: Summary, blocks: list[BlockRow]) -> list[BlockRow]:
    """The block rows of the judged stack, ``first_block`` to ``last_block`` (none where they are not found)."""
    names = [b["block"] for b in blocks]
    if summary.get("first_block") not in names or summary.get("last_block") not in names:
        return []
    return blocks[names.index(summary["first_block"]):names.index(summary["last_block"]) + 1]


def _step_fix(upper: str, ratio: float, last: Optional[str], vanishing: bool) -> str:
    """What to try where one block, ``upper``, by itself makes the gradient vanish (or explode) going back
    through it (multiplies it by ``ratio``)."""
    verb = "falls" if vanishing else "grows"
    fix = (f"the change is at one block, not spread over depth: the gradient {verb} {sig3(max(ratio, 1 / ratio))}x "
           f"going back through {upper}; fewer layers or residual connections elsewhere would not change it. ")
    if upper == last:
        return fix + ("That is the last block: check what the objective reads of its output (a loss that the "
                      "block's final normalization cancels, such as the sum or the norm of a LayerNorm output, "
                      "passes almost nothing back through it)")
    return fix + (f"Look at what {upper} does to the gradient: saturated or switched-off units, a "
                  "normalization, a gate or a detach")


# Training: how far an optimizer can go against a small gradient. SGD's step is the learning rate times the
# gradient, so a block that gets 1e-5 of the last block's gradient moves 1e-5 as far. Adam (and RMSprop) divide
# each parameter's step by its own running gradient scale plus eps, so a small gradient still gets a step of
# about the learning rate: a scale problem they compensate. They cannot compensate a gradient that is exactly
# zero, nor one so far below eps that the step, about lr * g / eps, is under the float resolution of the weight
# it is added to: then w + step == w and the weight never moves. Measured on the demo's 20-block MLPs with Adam
# (lr 1e-3, 50 steps): the sigmoid one's first two blocks, whose largest gradient entries (2.7e-19, 1.8e-18) give
# steps four to five orders of magnitude under half an ulp of their weights, did not change in a single entry; the
# default-init ReLU's first block (largest entry 3.5e-10, four orders above) changed in every entry, and the
# network learned. ADAM_LR and ADAM_EPS are torch.optim.Adam's defaults.
ADAM_LR = 1e-3
ADAM_EPS = 1e-8
DTYPE_RESOLUTION = {"float32": 2.0 ** -23, "float64": 2.0 ** -52, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def _adam_step(grad: float) -> float:
    """The size of Adam's step (default lr and eps) for a gradient entry of steady size ``grad``."""
    return ADAM_LR * grad / (grad + ADAM_EPS)


def step_margin(block: BlockRow, dtype: str = "float32") -> Optional[float]:
    """Adam's step for the block's largest gradient entry over the smallest step that registers in a weight of
    the block's RMS (half its ``dtype`` resolution): under 1, no optimizer moves any of the block's weights;
    0 for an all-zero gradient; None where the row lacks the numbers."""
    maxabs, numel = block.get("grad_maxabs"), block.get("numel")
    if not numel or maxabs is None or math.isnan(maxabs) or not block.get("weight_l2"):
        return None
    smallest = block["weight_l2"] / math.sqrt(numel) * DTYPE_RESOLUTION.get(dtype, DTYPE_RESOLUTION["float32"]) / 2
    return _adam_step(maxabs) / smallest


def _for_training(rows: list[BlockRow], step: Optional[tuple[str, float]], dtype: str) -> tuple[str, str]:
    """(a clause for the message, a sentence for the evidence): what a vanishing gradient means for training.

    Exactly zero, or too small for even Adam's normalized step to register in the weights (:func:`step_margin`
    under 1), or rounding error (one block divides it by more than the dtype resolves): nothing compensates that.
    Otherwise a scale problem that per-parameter normalization compensates and plain SGD does not. ``step``:
    (the block, what going back through it multiplies the gradient by) where one block carries the collapse.
    """
    margins = [(m, r) for r in rows if (m := step_margin(r, dtype)) is not None]
    stuck = [r["block"] for m, r in margins if m < 1]
    resolution = DTYPE_RESOLUTION.get(dtype, DTYPE_RESOLUTION["float32"])
    if stuck:
        names = ", ".join(stuck[:3]) + (" ..." if len(stuck) > 3 else "")
        return (f"too little for any optimizer to move the weights of {len(stuck)} block(s)",
                f"at {names} even the largest gradient entry is exactly zero or gives Adam's normalized step "
                f"(lr {ADAM_LR:g}, eps {ADAM_EPS:g}) less than half the {dtype} resolution of the weights, so "
                "they never move: no optimizer compensates that, plain SGD neither")
    if step is not None and step[1] < resolution:
        return (f"less than {dtype} resolves: what reaches the blocks below {step[0]} is rounding error",
                f"going back through {step[0]} the gradient falls {sig3(1 / step[1])}x, more than "
                f"{dtype} resolves in one block ({resolution:.2g}): below it, the gradient is at the level of that "
                "block's rounding error, not a signal any optimizer can learn from")
    least, at = min(margins, key=lambda mr: mr[0]) if margins else (None, None)
    where = f" (the least, at {at['block']}, {sig3(least)}x the smallest step that registers)" if at else ""
    return ("a scale problem that Adam-style optimizers compensate and plain SGD does not",
            f"every block's gradient is still large enough for a per-parameter normalized step (Adam, RMSprop) to "
            f"move its weights{where}: those optimizers compensate the scale, while plain SGD, one learning rate "
            "for every block, moves each block in proportion to its gradient")


def _where(summary: Summary) -> str:
    """'dL/dh at <first> is <r>x its value at <last>', with the blocks left out of the ratio."""
    where = (f"{summary['flow_signal']} at {summary['first_block']} is {sig3(summary['first_to_last_ratio'])}x "
             f"its value at {summary['last_block']}")
    missing = summary.get("blocks_no_grad") or []
    if missing:
        where += (f" (the first and last blocks with a gradient; none reached {', '.join(missing[:3])}"
                  + (" ..." if len(missing) > 3 else "") + ")")
    return where


def _names(blocks: list[BlockRow]) -> dict[int, str]:
    return {b["depth"]: b["block"] for b in blocks}


def _crossed(summary: Summary, vanishing: bool) -> tuple[str, str, float]:
    """(signal, block, ratio to the last block) where the profile that crossed the threshold bottoms out (peaks):
    the flow signal's where it crossed, else the parameter gradient's. Where that extreme is within
    ``FEATURE_FACTOR`` of the first block's value, the collapse reaches the input end: the first block is named."""
    key, crossed = ("lowest", lambda r: r < VANISHING_RATIO) if vanishing else (
        "highest", lambda r: r > EXPLODING_RATIO)
    if summary.get(f"{key}_ratio") is not None and crossed(summary[f"{key}_ratio"]):
        signal, block, ratio = summary["flow_signal"], summary[f"{key}_block"], summary[f"{key}_ratio"]
        first = summary["first_to_last_ratio"]
    else:
        signal, block, ratio = "parameter gradient", summary[f"param_{key}_block"], summary[f"param_{key}_ratio"]
        first = summary["param_first_to_last_ratio"]
    if first is not None and not math.isnan(first) and _extent(first) >= _extent(ratio) - math.log(FEATURE_FACTOR):
        return signal, summary["first_block"], first
    return signal, block, ratio


def _nonfinite_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str) -> Finding:
    first = summary["first_nonfinite"] or {}
    loss = "" if math.isfinite(summary["loss"]) else f"the loss is {summary['loss']}; "
    return {
        "variant": summary["variant"], "severity": "error", "kind": "non-finite", "block": first.get("block"),
        "message": f"non-finite values first appear at {first['block']}, {first['where']}" if first
                   else "non-finite values appear in the loss",
        "evidence": f"{loss}{summary['grad_nonfinite']} non-finite parameter-gradient entries",
        "fix": "check the inputs for NaN/Inf; use float32 or bfloat16 rather than float16 (or a GradScaler); "
               "lower the learning rate; add normalization before the block named",
    }


def _dead_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str) -> Finding:
    dead = summary["dead_blocks"]
    zero = summary.get("zero_weights") or []
    return {
        "variant": summary["variant"], "severity": "error", "kind": "dead", "block": dead[0],
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
    }


def _no_depth_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str) -> Finding:
    n = summary["blocks"]
    stacked = summary.get("stacks") or []
    if max((st["blocks"] for st in stacked), default=n) < 2:
        return {
            "variant": summary["variant"], "severity": "warning", "kind": "no-depth", "block": None,
            "message": f"no depth axis to follow the gradient along: {n} block(s) found"
                       + (f", one per stack ({len(stacked)} stacks)" if stacked else ""),
            "evidence": "blocks are the children of a stack of numbered modules (encoder.layer.7, layer3.2) "
                        "that hold parameters; the per-parameter table still has every gradient",
            "fix": "nothing to fix in the model: a model that holds no numbered stack, and no layer that runs "
                   "again on the output before it (as ALBERT's shared layer does), has no blocks to compare",
        }
    missing = summary.get("blocks_no_grad") or []
    runs = [b for b in missing if b.partition("#")[0] in (summary.get("repeated_blocks") or {})]
    return {
        "variant": summary["variant"], "severity": "warning", "kind": "no-depth", "block": None,
        "message": "fewer than two blocks received a gradient, so the flow cannot be compared across depth",
        "evidence": f"no gradient at {len(missing)} of {n} blocks: {', '.join(missing[:5])}"
                    + (" ..." if len(missing) > 5 else ""),
        # a run's weights are every run's: without dL/dh at its output, a run has no gradient of its own
        "fix": "activation checkpointing that runs the blocks again in the backward pass "
               "(use_reentrant=True) hides dL/dh at each run's output: measure without it, or with "
               "use_reentrant=False" if runs else
               "check that the objective reaches every block (frozen or skipped blocks get no gradient)",
    }


def _depth_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str,
                   vanishing: bool, for_training: bool = True) -> Finding:
    """A vanishing or exploding gradient: where the profile that crossed the threshold bottoms out (peaks) and
    by how much, a fix for its cause (one block the gradient falls through, or the depth), and, vanishing, what
    it means for training (``for_training``; it needs each block's size, largest entry and weight norm)."""
    signal, block, ratio = _crossed(summary, vanishing)
    word, threshold = ("vanishing", VANISHING_RATIO) if vanishing else ("exploding", EXPLODING_RATIO)
    param_only = signal == "parameter gradient" and summary["flow_signal"] == "dL/dh"
    key = "grad_l2" if signal == "parameter gradient" else "act_grad_l2"
    rows = _judged_rows(summary, blocks)
    names = [r["block"] for r in rows]
    descent = rows[names.index(block):] if block in names else []  # from where it bottoms out to the output end
    descent_fit = fit_decay([r[key] for r in descent], [r["depth"] for r in descent]) if descent else None
    # one block that the gradient falls (grows) through by itself: (its name, what it multiplies the gradient by)
    step = (_names(rows)[descent_fit["shape_at"][0]], descent_fit["shape_ratio"]) if (
        descent_fit and descent_fit["shape"] == "step") else None
    if param_only:
        message = f"{word} parameter gradient: {block}'s weights get {sig3(ratio)}x the last block's"
    elif block == summary["first_block"]:
        message = f"{word} gradient: the first block gets {sig3(ratio)}x the last block's gradient"
    else:
        message = (f"{word} gradient inside the stack: the gradient {'bottoms out' if vanishing else 'peaks'} at "
                   f"{block}, {sig3(ratio)}x the last block's")
    evidence = [f"{signal} at {block} is {sig3(ratio)}x its value at {summary['last_block']} (threshold "
                f"{threshold:g})"]
    if block != summary["first_block"]:
        evidence.append(_where(summary))
    evidence.append(describe_decay(summary["decay"], _names(blocks)))
    if block != summary["first_block"] and descent_fit and descent_fit["shape"] == "steady":
        evidence.append(f"from {summary['last_block']} to {block}, {describe_decay(descent_fit)}")
    if param_only:
        flow = next(r["act_grad_l2"] for r in descent) / descent[-1]["act_grad_l2"] if descent else None
        evidence.append(f"dL/dh at {block} is {sig3(flow)}x its value at {summary['last_block']}")
        fix = ("the block receives gradient but passes little of it to its weights: its inputs are near zero, or "
               "its units saturated or switched off; look at the activations feeding it and at its init scale"
               if vanishing else "its inputs are large: check the init scale, and add normalization before it")
    elif step is not None:
        fix = _step_fix(step[0], step[1], summary["last_block"], vanishing)
    elif vanishing:
        fix = _vanishing_fixes(inventory)
    else:
        fix = "clip gradients (torch.nn.utils.clip_grad_norm_); lower the learning rate; " + _exploding_fixes(inventory)
    if vanishing and for_training:
        clause, training = _for_training(rows, step, dtype)
        message += f", {clause}"
        evidence.append(training)
    return {"variant": summary["variant"], "severity": "warning", "kind": word, "block": block,
            "message": message, "evidence": "; ".join(evidence), "fix": fix}


def _vanishing_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str) -> Finding:
    return _depth_finding(summary, blocks, inventory, dtype, vanishing=True)


def _exploding_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str) -> Finding:
    return _depth_finding(summary, blocks, inventory, dtype, vanishing=False)


def _healthy_finding(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str) -> Finding:
    ranges = [f"{summary['flow_signal']} from {sig3(summary['lowest_ratio'])}x to "
              f"{sig3(summary['highest_ratio'])}x"]
    if summary["flow_signal"] == "dL/dh" and summary.get("param_lowest_ratio") is not None:
        ranges.append(f"the parameter gradient from {sig3(summary['param_lowest_ratio'])}x to "
                      f"{sig3(summary['param_highest_ratio'])}x")
    return {
        "variant": summary["variant"], "severity": "info", "kind": "healthy", "block": None,
        "message": "gradient reaches every block",
        "evidence": f"{_where(summary)}; over the stack, {' and '.join(ranges)} of the last block's (within "
                    f"{VANISHING_RATIO:g} to {EXPLODING_RATIO:g}); {describe_decay(summary['decay'], _names(blocks))}",
        "fix": "",
    }


# One function per verdict: the finding that states it, with its evidence and fix.
VERDICT_FINDINGS: dict[str, Callable[[Summary, list[BlockRow], dict, str], Finding]] = {
    "non-finite": _nonfinite_finding,
    "dead": _dead_finding,
    "no-depth": _no_depth_finding,
    "vanishing": _vanishing_finding,
    "exploding": _exploding_finding,
    "healthy": _healthy_finding,
}


def _steady_trend(summary: Summary, inventory: dict) -> Optional[Finding]:
    """A warning for a healthy variant whose gradient shrinks (or grows) by a steady factor per block.

    Within the thresholds today, such a model crosses them when it gets deeper: the finding says at
    how many blocks, so a reader can tell a flat profile from one that only looks fine at this depth.
    Only where one rate describes the profile (``steady``, or ``flat`` with a fit of ``RATE_R2``).
    """
    decay = summary["decay"]
    if not decay or shape_of(decay) not in ("steady", "flat") or decay["r2"] < RATE_R2:
        return None
    factor = decay["factor_per_block"]
    across = factor ** decay.get("span_blocks", decay["points"] - 1)  # the fitted change, last block to first
    if TREND_RATIO ** -1 < across < TREND_RATIO:
        return None
    shrinks = factor < 1
    threshold = VANISHING_RATIO if shrinks else EXPLODING_RATIO
    depth = math.ceil(math.log(threshold) / math.log(factor)) + 1  # blocks at which the fit crosses it
    return {
        "variant": summary["variant"], "severity": "warning", "kind": "vanishing-trend" if shrinks else
        "exploding-trend", "block": summary["first_block"],
        "message": f"a steady {'decay' if shrinks else 'growth'} toward the input: at this rate a stack of about "
                   f"{depth} blocks would be {'vanishing' if shrinks else 'exploding'}",
        "evidence": f"{describe_decay(decay)}; fitted change across the {decay['points']} fitted blocks: "
                    f"{sig3(across)}x "
                    f"(threshold {threshold:g})",
        "fix": _vanishing_fixes(inventory) if shrinks else _exploding_fixes(inventory),
    }


def _shared_weights_findings(summary: Summary) -> list[Finding]:
    return [{
        "variant": summary["variant"], "severity": "info", "kind": "shared-weights", "block": block,
        "message": f"{block} runs {runs} times in one forward pass, each run on the output of the block run "
                   f"before it: each run is a block of its own ({block}#0 nearest the input)",
        "evidence": "its layers share their weights across depth, so its parameter gradient is the sum over "
                    f"the {runs} runs and has no depth; the depth axis is dL/dh at each run's output",
        "fix": "",
    } for block, runs in (summary.get("repeated_blocks") or {}).items()]


def _stacks_finding(summary: Summary) -> Optional[Finding]:
    if not summary.get("stacks"):
        return None
    parts = [f"{st['first_block']} to {st['last_block']}: {sig3(st['first_to_last_ratio'])}x"
             for st in summary["stacks"]]
    across = [f"{st['last_block']} gets {sig3(st['into_next_ratio'])}x {nxt['first_block']}'s"
              for st, nxt in zip(summary["stacks"], summary["stacks"][1:])]
    return {
        "variant": summary["variant"], "severity": "info", "kind": "stacks", "block": None,
        "message": f"encoder and decoder judged apart, on the stack whose flow changes most "
                   f"({summary['first_block']} to {summary['last_block']})",
        "evidence": f"{summary['flow_signal']} first/last per stack: {'; '.join(parts)}; between stacks "
                    f"(through cross-attention): {'; '.join(across)}",
        "fix": "",
    }


def _no_gradient_finding(summary: Summary) -> Optional[Finding]:
    no_grad = summary["params_no_grad"]
    if not no_grad:
        return None
    return {
        "variant": summary["variant"], "severity": "info", "kind": "no-gradient", "block": None,
        "message": f"{len(no_grad)} parameter tensor(s) received no gradient: the loss does not use them",
        "evidence": ", ".join(no_grad[:5]) + (" ..." if len(no_grad) > 5 else ""),
        "fix": "expected for parts the objective skips (a pooler under a language-model loss, a downsample "
               "branch after no-residual); otherwise check the forward, or freeze them with requires_grad_(False)",
    }


def findings_for(summary: Summary, blocks: list[BlockRow], inventory: dict, dtype: str = "float32") -> list[Finding]:
    """What a reader should know about one variant: its verdict's finding with evidence and fix, then the notes
    that go with it. ``dtype`` is the weights' (what an optimizer's step must register in)."""
    found = [VERDICT_FINDINGS[summary["verdict"]](summary, blocks, inventory, dtype)]
    # Not for shallow: the model's own first half, whose rate the whole model, measured beside it, tells better.
    if summary["verdict"] == "healthy" and summary["variant"] != "shallow":
        found.append(_steady_trend(summary, inventory))
    found += _shared_weights_findings(summary)
    found += [_stacks_finding(summary), _no_gradient_finding(summary)]
    return [f for f in found if f]


def batch_norm_finding(variant: str, m: Measurement) -> Optional[Finding]:
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
        "fix": "raise `batch_size`, or `image_size`",
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


# --- findings from the objective and the units


def chance_finding(summary: Summary, objective: str, chance: Optional[dict]) -> Optional[Finding]:
    """The pretrained model's loss against chance, where the loader knows chance for its objective
    (``chance``: ``loss``, a uniform guess's, and its ``basis`` in words; given for a surrogate objective and for
    a sentence encoder's contrastive one).

    At or above chance, a warning: the model does no better than a uniform guess at this objective, so the
    objective may not represent the model. Below it, an info finding saying by how much. None for another
    variant, a non-finite loss, or no chance known.

    >>> finding = chance_finding({"variant": "pretrained", "verdict": "healthy", "loss": 10.64},
    ...                          "surrogate-masked-lm", {"loss": 10.33, "basis": "ln 30522"})
    >>> finding["severity"], finding["evidence"]
    ('warning', 'pretrained loss 10.64 >= chance 10.33 (ln 30522)')
    """
    loss = summary.get("loss")
    if summary["variant"] != "pretrained" or not chance or loss is None or not math.isfinite(loss):
        return None
    guess = chance["loss"]
    if loss >= guess:
        return {
            "variant": "pretrained", "severity": "warning", "kind": "objective-at-chance", "block": None,
            "message": f"the pretrained model does no better than chance at the {objective} objective: the objective "
                       "may not represent the model, and the gradient measured with it may say little about it",
            "evidence": f"pretrained loss {loss:.4g} >= chance {guess:.4g} ({chance['basis']})",
            "fix": "measure the model with the objective it was trained with: save it with its head (e.g. its "
                   "...ForMaskedLM or ...ForCausalLM class), or measure it from Python with your own batch and loss, "
                   "gradscope.analyze(model, batch=..., loss_fn=...)",
        }
    return {
        "variant": "pretrained", "severity": "info", "kind": "objective-below-chance", "block": None,
        "message": f"the pretrained model does better than chance at the {objective} objective: its loss is "
                   f"{loss / guess:.2g}x chance",
        "evidence": f"pretrained loss {loss:.4g} < chance {guess:.4g} ({chance['basis']})",
        "fix": "",
    }


# Dead units: a unit of a Linear or convolution layer is dead when the gradient row of its weight (a
# convolution's output channel) is exactly zero over the batch: behind a ReLU, a unit whose output was zero for
# every sample (measure.dead_units). Untrained checkpoints: a ``pretrained`` variant indistinguishable from
# ``scratch`` (untrained_finding states the rule).

# More than 5% of a block's units dead is no accident of the batch: a ReLU unit whose pre-activation is positive
# for half of the inputs is off for all of n independent samples with probability 2**-n, under 0.4% from n = 8
# (the smallest default batch; a token or an image position is a sample too), so even 1% would be rare by
# chance. 5% leaves room for the units a trained network keeps for rare inputs, and is below the 6-20% dead in
# blocks 6-19 of the demo's 20-block ReLU MLP with He init (batch 256), where the samples' pre-activations have
# grown nearly parallel with depth (mean cosine 0.03 at block 0, 0.93 at block 19) and switch a unit off together.
DEAD_UNIT_FRAC = 0.05
HE_SCALE_LOW = 0.8  # weights below 0.8x He init's scale (PyTorch's default Linear init is 0.41x): "the init is off"
# An untrained "pretrained" model (see untrained_finding):
SAME_MEASUREMENT_RTOL = 1e-5  # float32 keeps ~7 digits; one computation run twice (a GPU's atomic adds) varies in
# the last ones, two different sets of weights in the first
# Weight RMS within 5% of scratch's, or within 4/sqrt(n) for a tensor of n entries where that is more (n < 6400):
# the RMS of n Gaussian draws varies by 1/sqrt(2n) (relative), the difference of two draws' by 1/sqrt(n): 4 sigma
UNTRAINED_RMS_TOL = 0.05
UNTRAINED_TENSOR_FRAC = 0.9  # ... for nearly all tensors: a small one (a 10-class head's bias) can be further off


def unit_fields(m: Measurement, i: int, has_grad: bool) -> dict:
    """A parameter row's ``units`` (output units of a Linear/convolution weight, else None), ``dead_units`` (of
    which got an all-zero gradient; None without a gradient) and ``weight_min``/``weight_max`` (its entries' range)."""
    low, high = m.weight_range[i] if m.weight_range else (math.nan, math.nan)
    return {
        "units": m.units[i] if m.units else None,
        "dead_units": m.dead_units[i] if m.dead_units and has_grad else None,
        "weight_min": low,
        "weight_max": high,
    }


def block_unit_fields(members: list[ParamRow]) -> dict:
    """A block row's ``units`` and ``dead_units``: summed over its Linear/convolution weights with a gradient."""
    counted = [r for r in members if r.get("dead_units") is not None]
    return {"units": sum(r["units"] for r in counted), "dead_units": sum(r["dead_units"] for r in counted)}


def _dead_fraction(block: BlockRow) -> float:
    return block["dead_units"] / block["units"]


def _he_scale(params: list[ParamRow], block: str) -> Optional[float]:
    """The RMS of a block's Linear/convolution weights over He init's (std sqrt(2/fan_in)); None without any.

    Under He init a weight of ``units`` rows has an expected sum of squares of ``units * fan_in * 2/fan_in``,
    twice its units, whatever its fan-in.
    """
    rows = [r for r in params if r["block"] == block and r.get("units")]
    units = sum(r["units"] for r in rows)
    return math.sqrt(sum(r["weight_l2"] ** 2 for r in rows) / (2 * units)) if units else None


def _dead_unit_fixes(inventory: dict, he_scale: Optional[float]) -> str:
    fixes = []
    if (he_scale is not None and he_scale < HE_SCALE_LOW and inventory.get("relu_family_activations")
            and not inventory.get("norm_layers")):
        fixes.append(f"initialize with He init (nn.init.kaiming_normal_, nonlinearity='relu'): these weights have "
                     f"{he_scale:.2g}x its scale")
    fixes.append("use LeakyReLU or GELU (their gradient is not zero for negative inputs)")
    if not inventory.get("norm_layers"):
        fixes.append("add BatchNorm before the activation (it centres each unit over the batch, so no unit is off "
                     "for every sample)")
    fixes.append("check the bias init (a negative bias switches a unit off for every input)")
    fixes.append("if units died in training, lower the learning rate")
    return "; ".join(fixes)


def dead_units_finding(summary: Summary, blocks: list[BlockRow], params: list[ParamRow],
                       inventory: dict) -> Optional[Finding]:
    """A warning naming the block with the largest fraction of dead units, where some block has more than
    ``DEAD_UNIT_FRAC`` of its units dead; None otherwise. Blocks the ``dead`` verdict names are left to it."""
    dead_blocks = set(summary.get("dead_blocks") or ())
    over = [b for b in blocks if b.get("units") and b["block"] not in dead_blocks
            and _dead_fraction(b) > DEAD_UNIT_FRAC]
    if not over:
        return None
    worst = max(over, key=_dead_fraction)
    listed = ", ".join(f"{b['block']} {_dead_fraction(b):.0%}" for b in over[:8]) + (" ..." if len(over) > 8 else "")
    return {
        "variant": summary["variant"], "severity": "warning", "kind": "dead-units", "block": worst["block"],
        "message": f"partly dead units: {worst['dead_units']} of the {worst['units']} units of {worst['block']} "
                   f"({_dead_fraction(worst):.0%}) get no gradient from any sample of the batch",
        "evidence": f"{len(over)} of {len(blocks)} blocks have more than {DEAD_UNIT_FRAC:.0%} of their units dead: "
                    f"{listed} (a unit is dead when its weight's gradient row, a convolution's output channel, is "
                    "exactly zero: behind a ReLU, an output of zero for every sample)",
        "fix": _dead_unit_fixes(inventory, _he_scale(params, worst["block"])),
    }


def _close(a: Optional[float], b: Optional[float]) -> bool:
    """Equal within ``SAME_MEASUREMENT_RTOL``; two missing (None or NaN) values are equal too."""
    missing = [x is None or math.isnan(x) for x in (a, b)]
    if any(missing):
        return all(missing)
    return math.isclose(a, b, rel_tol=SAME_MEASUREMENT_RTOL)


def _same_measurement(pretrained: Summary, scratch: Summary, blocks_p: list[BlockRow],
                      blocks_s: list[BlockRow]) -> Optional[str]:
    """Evidence that two variants measured the same (loss, total gradient and every block's flow), or None."""
    if not (_close(pretrained["loss"], scratch["loss"])
            and _close(pretrained["total_grad_l2"], scratch["total_grad_l2"])):
        return None
    if [b["block"] for b in blocks_p] != [b["block"] for b in blocks_s] or not all(
            _close(p[key], s[key]) for p, s in zip(blocks_p, blocks_s) for key in ("act_grad_l2", "grad_l2")):
        return None
    return (f"the loss ({pretrained['loss']:.6g}), the total gradient L2 and, at all {len(blocks_p)} blocks, dL/dh "
            f"and the parameter-gradient L2 equal scratch's within {SAME_MEASUREMENT_RTOL:g} (relative)")


def _rms(row: ParamRow) -> float:
    return row["weight_l2"] / math.sqrt(row["numel"])


def _has_range(row: ParamRow) -> bool:
    return all(row.get(key) is not None and math.isfinite(row[key]) for key in ("weight_min", "weight_max"))


def _fresh_weights(params_p: list[ParamRow], params_s: list[ParamRow]) -> Optional[str]:
    """Evidence that pretrained's weights are statistically a fresh initialization (scratch's), or None."""
    scratch = {r["name"]: r for r in params_s}
    pairs = [(p, scratch[p["name"]]) for p in params_p
             if p["name"] in scratch and p["numel"] and _has_range(p) and _has_range(scratch[p["name"]])]
    constant = [(p, s) for p, s in pairs if s["weight_min"] == s["weight_max"]]
    varied = [(p, s) for p, s in pairs if s["weight_min"] != s["weight_max"]]
    if not constant or any((p["weight_min"], p["weight_max"]) != (s["weight_min"], s["weight_max"])
                           for p, s in constant):
        return None
    close = sum(abs(_rms(p) / _rms(s) - 1) <= max(UNTRAINED_RMS_TOL, 4 / math.sqrt(s["numel"]))
                for p, s in varied if _rms(s) > 0)
    if close < UNTRAINED_TENSOR_FRAC * len(varied):
        return None
    examples = ", ".join(f"{p['name']} = {p['weight_min']:g}" for p, _ in constant[:2])
    return (f"all {len(constant)} tensors that scratch initializes to a constant (normalization weights, biases) "
            f"hold that constant exactly ({examples}{', ...' if len(constant) > 2 else ''}), and {close} of the "
            f"{len(varied)} others have a weight RMS within max({UNTRAINED_RMS_TOL:.0%}, 4/sqrt(entries)) of "
            "scratch's")


def untrained_finding(summaries: list[Summary], blocks: list[BlockRow], params: list[ParamRow]) -> Optional[Finding]:
    """A warning when ``pretrained`` is indistinguishable from ``scratch``, its architecture freshly initialized.

    The rule, either of: (a) the two measure the same: loss, total gradient L2, and every block's dL/dh and
    parameter-gradient L2 within ``SAME_MEASUREMENT_RTOL`` (the same weights; a checkpoint saved fresh with
    scratch's seed); (b) the weights look freshly drawn: every tensor that scratch initializes to a constant
    (normalization weights 1, biases 0; at least one) holds exactly that constant, and at least
    ``UNTRAINED_TENSOR_FRAC`` of the others have a weight RMS within ``UNTRAINED_RMS_TOL`` of scratch's (or, for
    a small tensor of n entries, the 4/sqrt(n) that two random draws can differ by). Training moves normalization
    weights and biases off their constants, so (b) does not hold for a trained model that has such tensors; a
    model without any is judged by (a) alone. None without both variants.
    """
    summary = {s["variant"]: s for s in summaries}
    if "pretrained" not in summary or "scratch" not in summary:
        return None
    rows = {v: ([b for b in blocks if b["variant"] == v], [p for p in params if p["variant"] == v])
            for v in ("pretrained", "scratch")}
    evidence = [e for e in (
        _same_measurement(summary["pretrained"], summary["scratch"], rows["pretrained"][0], rows["scratch"][0]),
        _fresh_weights(rows["pretrained"][1], rows["scratch"][1])) if e]
    if not evidence:
        return None
    return {
        "variant": "pretrained", "severity": "warning", "kind": "untrained", "block": None,
        "message": "pretrained looks untrained: it is indistinguishable from scratch, the same architecture "
                   "freshly initialized",
        "evidence": "; ".join(evidence),
        "fix": "check that the checkpoint holds the trained weights (the file written after training, every key "
               "loaded); measured at its initialization, a model says nothing about how training shaped its flow",
    }


def unused_weights_finding(unused: Optional[dict]) -> Optional[Finding]:
    """A warning when the loader left tensors of the checkpoint out of the model (``unused``: their ``count``
    and a few ``examples``, in the subject's meta): the model measured is then not the model saved, as when a
    config's ``num_hidden_layers`` is smaller than the checkpoint's stack. None when every tensor was used.

    >>> unused_weights_finding({"count": 32, "examples": ["bert.encoder.layer.3.output.dense.weight"]})["kind"]
    'unused-weights'
    """
    if not unused or not unused.get("count"):
        return None
    examples = unused.get("examples") or []
    return {
        "variant": "pretrained", "severity": "warning", "kind": "unused-weights", "block": None,
        "message": f"{unused['count']} tensor(s) of the checkpoint were not loaded into the model: what was measured "
                   "is not the whole model that was saved",
        "evidence": "not loaded: " + ", ".join(examples) + (" ..." if unused["count"] > len(examples) else ""),
        "fix": "check config.json against the checkpoint (num_hidden_layers and the other sizes), and load the "
               "model class the checkpoint was saved from",
    }


# --- verdicts during training ------------------------------------------------------------
# A training monitor's series holds, per recorded step, one row per block (parameter-gradient L2, and dL/dh,
# weight L2, update ratio where recorded). The flow is judged with the rules above on windows of steps:
# the series' steps without a non-finite value (those have a finding of their own), in step order, cut into
# min(TRAINING_WINDOWS_MAX, max(1, n // TRAINING_WINDOW_MIN_STEPS)) consecutive windows as equal in size as
# possible (sizes differ by at most one). Each window is judged on one row per block holding the median of each
# value over the window's steps where it is recorded and finite (the mean of the middle two for an even count),
# so that one noisy step does not decide a window's verdict.

TRAINING_WINDOW_MIN_STEPS = 10  # a window holds at least this many steps, unless the whole run has fewer
TRAINING_WINDOWS_MAX = 20  # at most this many windows, however long the run
TRAINING_CHANGES_MAX = 10  # findings for the first verdict changes; the last of them counts the rest
_WINDOW_VALUES = ("grad_l2", "act_grad_l2", "grad_zero_frac", "grad_maxabs", "weight_l2", "update_ratio")
WINDOW_RULE = (f"windows: the recorded steps without a non-finite value, cut into min({TRAINING_WINDOWS_MAX}, "
               f"steps // {TRAINING_WINDOW_MIN_STEPS}) (at least 1) consecutive windows of nearly equal size, each "
               "judged on the median of every block's values over its steps")


def _median(values: list[float]) -> float:
    """The median of the finite values (the mean of the middle two for an even count); NaN without any."""
    kept = sorted(v for v in values if v is not None and math.isfinite(v))
    if not kept:
        return math.nan
    return (kept[(len(kept) - 1) // 2] + kept[len(kept) // 2]) / 2


def training_windows(steps: Sequence[int]) -> list[list[int]]:
    """The steps cut into consecutive windows by the rule above.

    >>> [len(w) for w in training_windows(list(range(1, 26)))]
    [13, 12]
    """
    steps = list(steps)
    count = min(TRAINING_WINDOWS_MAX, max(1, len(steps) // TRAINING_WINDOW_MIN_STEPS))
    size, extra = divmod(len(steps), count)
    bounds = [k * size + min(k, extra) for k in range(count + 1)]
    return [steps[bounds[k]:bounds[k + 1]] for k in range(count) if bounds[k + 1] > bounds[k]]


def window_rows(rows: list[dict], variant: str = "training") -> list[BlockRow]:
    """One block row per block (in depth order) holding the median of each value over a window's series rows
    (block rows; the rule above)."""
    by_block: dict[tuple, list[dict]] = {}
    for r in rows:
        by_block.setdefault((r["depth"], r["block"]), []).append(r)
    rows: list[BlockRow] = []
    for (depth, block), members in sorted(by_block.items()):
        row = {"block": block, "depth": depth, "variant": variant, "grad_nonfinite": 0, "act_grad_nonfinite": 0,
               "output_nonfinite": 0}
        row.update({key: _median([m.get(key) for m in members]) for key in _WINDOW_VALUES})
        rows.append(row)  # type: ignore[arg-type]
    return rows


def _finite_steps(series: list[dict]) -> list[int]:
    """The series' steps, in order, without a non-finite gradient value in any of its rows."""
    bad = {r["step"] for r in series if r.get("grad_nonfinite") or r.get("act_grad_nonfinite")}
    return sorted({r["step"] for r in series if r.get("step") is not None} - bad)


def training_flow(series: list[dict]) -> list[dict]:
    """Each window of a training series (rule above) with its steps, its median block rows and their summary
    (:func:`summarize_rows`: the same verdict and ratios as ``analyze``)."""
    by_step: dict[int, list[dict]] = {}
    for r in series:
        if r.get("block") is not None:
            by_step.setdefault(r["step"], []).append(r)
    windows = []
    for steps in training_windows(_finite_steps(series)):
        rows = window_rows([r for step in steps for r in by_step.get(step, [])])
        if rows:
            windows.append({"steps": steps, "rows": rows,
                            "summary": summarize_rows("training", [], rows, loss=0.0)})
    return windows


def _span(steps: list[int]) -> str:
    return f"step {steps[0]}" if steps[0] == steps[-1] else f"steps {steps[0]} to {steps[-1]}"


def _window_finding(window: dict, run: list[dict], total: int, inventory: dict) -> Finding:
    """The verdict finding (as ``analyze`` words it) of a run of windows that share a verdict, with the numbers of
    its last window; vanishing says nothing about what it means for training (the series lacks each block's size)
    but gives the update ratio of the first and last block where it was recorded."""
    summary, rows = window["summary"], window["rows"]
    verdict = summary["verdict"]
    if verdict in ("vanishing", "exploding"):
        found = _depth_finding(summary, rows, inventory, "float32", vanishing=verdict == "vanishing",
                               for_training=False)
    else:
        found = VERDICT_FINDINGS[verdict](summary, rows, inventory, "float32")
    steps = [s for w in run for s in w["steps"]]
    every = " (every judged step)" if len(run) == total else ""
    found["message"] = f"{_span(steps)}{every}: {found['message']}"
    ends = [r for r in rows if r["block"] in (summary.get("first_block"), summary.get("last_block"))]
    moved = [f"{r['block']} {sig3(r['update_ratio'])}" for r in ends if not math.isnan(r["update_ratio"])]
    found["evidence"] = (f"medians over {_span(window['steps'])}, the last of {len(run)} window(s) judged {verdict}: "
                         + found["evidence"]
                         + (f"; median update ratio ||W after - W before|| / ||W before||: {', '.join(moved)}"
                            if moved else "")
                         + f" ({WINDOW_RULE})")
    return found


def _change_finding(before: dict, after: dict) -> Finding:
    """The verdict changed between two neighbouring windows: from which to which, from which step, and the numbers."""
    old, new = before["summary"], after["summary"]
    step = after["steps"][0]

    def numbers(summary: Summary) -> str:
        return (f"{summary['flow_signal']} first/last {sig3(summary['first_to_last_ratio'])}x, lowest "
                f"{sig3(summary.get('lowest_ratio'))}x at {summary.get('lowest_block')}, highest "
                f"{sig3(summary.get('highest_ratio'))}x at {summary.get('highest_block')}")

    block = None
    if new["verdict"] in ("vanishing", "exploding"):
        _, block, _ = _crossed(new, new["verdict"] == "vanishing")
    return {
        "variant": "training", "severity": "info" if new["verdict"] == "healthy" else "warning",
        "kind": "verdict-change", "block": block,
        "message": f"the gradient flow changed from {old['verdict']} to {new['verdict']} at step {step}: "
                   f"{_span(before['steps'])} were {old['verdict']}, {_span(after['steps'])} {new['verdict']}",
        "evidence": f"medians per block, {_span(before['steps'])}: {numbers(old)}; {_span(after['steps'])}: "
                    f"{numbers(new)} (thresholds {VANISHING_RATIO:g} and {EXPLODING_RATIO:g} of the last block's; "
                    f"{WINDOW_RULE})",
        "fix": "look at what changed around that step: the learning rate schedule, the data, a block whose weights "
               "grew or shrank (the weight and update heatmaps)" if new["verdict"] != "healthy" else "",
    }


def training_flow_findings(series: list[dict], inventory: Optional[dict] = None) -> list[Finding]:
    """The gradient flow of a training series judged over windows of steps (rule above): one finding per run of
    neighbouring windows with the same verdict, and one per change of verdict between windows (the first
    ``TRAINING_CHANGES_MAX``), naming the steps; none where every window is healthy (a healthy run's report stays
    free of findings). ``inventory``: the model's architecture counts, for the fixes."""
    windows = training_flow(series)
    if all(w["summary"]["verdict"] == "healthy" for w in windows):
        return []
    runs: list[list[dict]] = []
    for window in windows:
        if runs and runs[-1][-1]["summary"]["verdict"] == window["summary"]["verdict"]:
            runs[-1].append(window)
        else:
            runs.append([window])
    found = [_window_finding(run[-1], run, len(windows), inventory or {}) for run in runs]
    changes = [_change_finding(a[-1], b[0]) for a, b in zip(runs, runs[1:])]
    if len(changes) > TRAINING_CHANGES_MAX:
        changes[TRAINING_CHANGES_MAX - 1]["evidence"] += (f"; {len(changes) - TRAINING_CHANGES_MAX} later change(s) "
                                                          "not listed")
    return found + changes[:TRAINING_CHANGES_MAX]
