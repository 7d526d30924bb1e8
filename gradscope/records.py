"""The records an analysis writes and a report holds, and the words for a gradient profile.

Analysis (:mod:`gradscope.analysis`) fills these records; the report package validates, renders and reads them
without importing the analysis. Each field is defined once, here:

- :class:`ParamRow`, :class:`BlockRow`, :class:`Summary` (with its :class:`Decay` fit), :class:`Finding`;
- the values a verdict and a profile's shape take (:data:`VERDICTS`, :data:`SHAPES`), and the two thresholds
  that define the words ``steady`` and ``flat`` (:data:`RATE_R2`, :data:`FLAT_FACTOR`);
- the words for a profile: a finding's sentence (:func:`describe_decay`) and a table's cell (:func:`trend_cell`),
  written from the same numbers.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, TypedDict

RATE_R2 = 0.8  # one rate describes a profile: a constant factor per block explains its log this well
FLAT_FACTOR = 1.05  # flat: one block toward the input changes the gradient by at most 5%, either way

VERDICTS = ("healthy", "vanishing", "exploding", "non-finite", "dead", "no-depth")
SHAPES = ("flat", "steady", "step", "trough", "peak", "noise", "uneven")


# --- the records ---------------------------------------------------------------------
# Every row and summary analysis writes, defined once. report/validate.py reads each field's JSON type from
# these annotations (``Optional``: may be null; ``float``: any number; ``int``: an integer), and a test holds
# docs/report-schema.md to exactly these fields. The keys of the base class are those every writer writes (the
# training monitor writes a subset of the rest); the order in which rows are built is the order in the JSON.


class _ParamKeys(TypedDict):
    name: str
    variant: str


class _GradientFields(TypedDict, total=False):
    """The statistics of a gradient and its weights, as a parameter row and a block row both hold them."""

    grad_l2: Optional[float]
    grad_mean: Optional[float]
    grad_std: Optional[float]
    grad_rms: Optional[float]
    grad_meanabs: Optional[float]
    grad_maxabs: Optional[float]
    grad_zero_frac: Optional[float]
    grad_nonfinite: int
    weight_l2: Optional[float]
    grad_to_weight: Optional[float]


class ParamRow(_ParamKeys, _GradientFields, total=False):
    """One trainable parameter tensor of one variant: ``name`` and ``depth`` first."""

    depth: Optional[int]
    step: int  # the training monitor's rows: the step of these values
    block: Optional[str]
    shape: list[int]
    numel: int
    has_grad: bool
    units: Optional[int]
    dead_units: Optional[int]
    weight_min: Optional[float]
    weight_max: Optional[float]


class _BlockKeys(TypedDict):
    block: str
    depth: int
    variant: str


class BlockRow(_BlockKeys, _GradientFields, total=False):
    """One block of one variant, aggregated from its parameters' rows, with its dL/dh: ``block`` and ``depth``
    first."""

    step: int  # the training monitor's rows: the step of these values
    params: int
    params_no_grad: int
    numel: int
    act_grad_l2: Optional[float]
    act_grad_rms: Optional[float]
    act_grad_maxabs: Optional[float]
    act_grad_nonfinite: int
    output_nonfinite: int
    units: int
    dead_units: int
    update_ratio: Optional[float]  # the training monitor's rows, with update_ratios: ‖ΔW‖ / ‖W‖ of the step


class _DecayKeys(TypedDict):
    trend: str


class Decay(_DecayKeys, total=False):
    """The fit of log10(flow) against depth, and the shape of the profile (:func:`fit_decay`)."""

    slope_log10_per_block: Optional[float]
    factor_per_block: Optional[float]
    r2: Optional[float]
    halves_every_blocks: Optional[float]
    doubles_every_blocks: Optional[float]
    points: int
    span_blocks: int
    shape: str
    shape_at: list[int]
    shape_ratio: Optional[float]


class _SummaryKeys(TypedDict):
    variant: str
    verdict: str


class Summary(_SummaryKeys, total=False):
    """One variant's verdict and the numbers behind it (:func:`summarize`)."""

    loss: Optional[float]
    blocks: int
    first_block: Optional[str]
    last_block: Optional[str]
    flow_signal: str
    first_to_last_ratio: Optional[float]
    param_first_to_last_ratio: Optional[float]
    lowest_block: Optional[str]
    lowest_ratio: Optional[float]
    highest_block: Optional[str]
    highest_ratio: Optional[float]
    param_lowest_block: Optional[str]
    param_lowest_ratio: Optional[float]
    param_highest_block: Optional[str]
    param_highest_ratio: Optional[float]
    decay: Optional[Decay]
    total_grad_l2: Optional[float]
    grad_nonfinite: int
    first_nonfinite: Optional[dict]
    dead_blocks: list[str]
    blocks_no_grad: list[str]
    zero_weights: list[str]
    params: int
    params_no_grad: list[str]
    seconds: Optional[float]
    repeated_blocks: dict
    stacks: list[dict]


class _FindingKeys(TypedDict):
    variant: str
    severity: str
    message: str
    evidence: str


class Finding(_FindingKeys, total=False):
    """What a reader should know about a variant: the message, the numbers behind it, and what to try."""

    kind: str
    block: Optional[str]
    fix: Optional[str]


# --- the words for a profile -----------------------------------------------------------
# The one place where a decay fit and a shape become words: the findings' sentences (describe_decay) and the
# reports' table cells (trend_cell) are both written here, from the same numbers.

TREND_RULE = (f"trend toward input: a rate where one rate fits the log gradient against depth (R^2 >= {RATE_R2:g}), "
              f"else the profile's shape, at the depths named; flat means within {FLAT_FACTOR:g}x per block")


def sig3(x: Optional[float]) -> str:
    """A number in a sentence: three significant digits, ``n/a`` for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def shape_of(decay: dict) -> str:
    """The decay's shape; a report written before shapes were recorded has only its trend: ``flat``, or a rate."""
    return decay.get("shape") or ("flat" if decay.get("trend") == "flat" else "steady")


def _short(x: float) -> str:
    """A number in a table cell: two digits, and whole numbers from 10 to 1e5 as such (``400``, not ``4e+02``)."""
    return f"{x:.0f}" if 10 <= abs(x) < 1e5 else f"{x:.2g}"


def _rate(decay: dict) -> tuple[str, Optional[float], str, float]:
    """("halves", blocks per halving, "falls", the change per block as a factor >= 1) for a fit that shrinks
    toward the input; ("doubles", ..., "grows", ...) for one that grows."""
    factor = decay["factor_per_block"]
    if factor < 1:
        return "halves", decay.get("halves_every_blocks"), "falls", 1 / factor
    return "doubles", decay.get("doubles_every_blocks"), "grows", factor


def _change(ratio: float, number: Callable[[float], str] = sig3) -> tuple[str, str]:
    """("falls", "7.1") for a ratio under 1 (what a transition toward the input multiplies the gradient by),
    ("grows", "7.1") above it."""
    return ("falls", number(1 / ratio)) if ratio < 1 else ("grows", number(ratio))


def describe_decay(decay: Optional[dict], names: Optional[dict[int, str]] = None) -> str:
    """The profile in a sentence, for a finding's evidence: the rate where one rate describes it, else its shape.

    'the gradient halves every 1.2 blocks toward the input (factor 0.56 per block, R^2 0.98)'; under one block
    per halving (doubling) the factor instead, 'the gradient falls 7.1x per block toward the input (R^2 1.00)';
    'one step carries most of the change: the gradient falls 9x from layer.5 to layer.4 (toward the input) ...'.
    ``names`` maps depths to block names (else blocks are named by depth).
    """
    if not decay:
        return "no decay fit (fewer than 2 blocks with a gradient)"

    def name(depth: int) -> str:
        return (names or {}).get(depth, f"depth {depth}")

    shape = shape_of(decay)
    fit = f"factor {sig3(decay['factor_per_block'])} per block, R^2 {decay['r2']:.2f}"
    no_rate = f"no one rate fits: R^2 {decay['r2']:.2f}"
    at, ratio = decay.get("shape_at") or [], decay.get("shape_ratio")
    if shape == "flat":
        return f"the gradient is about constant across depth ({fit})"
    if shape == "steady":
        halves, every, falls, change = _rate(decay)
        if every is None or every < 1:  # "halves every 0.35 blocks" is hard to picture
            return f"the gradient {falls} {sig3(change)}x per block toward the input (R^2 {decay['r2']:.2f})"
        blocks = "block" if sig3(every) == "1" else f"{sig3(every)} blocks"
        return f"the gradient {halves} every {blocks} toward the input ({fit})"
    if shape == "step":
        verb, size = _change(ratio)
        if decay["points"] == 2:
            return f"the gradient {verb} {size}x from {name(at[0])} to {name(at[1])} (two blocks: one step, no rate)"
        return (f"one step carries most of the change: the gradient {verb} {size}x from {name(at[0])} to "
                f"{name(at[1])}, toward the input ({no_rate})")
    if shape == "trough":
        return (f"U-shaped: the gradient is lowest at {name(at[0])}, {sig3(ratio)}x its value at the last block "
                f"({no_rate})")
    if shape == "peak":
        return (f"peaked: the gradient is highest at {name(at[0])}, {sig3(ratio)}x its value at the last block "
                f"({no_rate})")
    if shape == "noise":
        return f"no trend: the gradient varies {sig3(ratio)}x between blocks with no direction ({fit})"
    verb, size = _change(ratio)
    return f"the gradient {verb} {size}x across the stack toward the input, unevenly ({no_rate})"


def trend_cell(decay: Optional[dict]) -> str:
    """The profile in a table cell, short enough for a terminal's summary table: ``halves every 1.2``, ``falls
    7.1x/block`` (a rate); ``flat``; ``falls 9x at 5->4`` (a step, from depth 5 to depth 4); ``U: min 4.7e-16 at
    1``, ``peak: 30 at 3`` (the flow there over the last block's); ``no trend``; ``falls 30x, unevenly``; ``-``
    without a fit."""
    if not decay:
        return "-"
    shape = shape_of(decay)
    at, ratio = decay.get("shape_at") or [], decay.get("shape_ratio")
    if shape == "flat":
        return "flat"
    if shape == "steady":
        if not decay.get("factor_per_block"):  # a report written by hand, or truncated
            return "-"
        halves, every, falls, change = _rate(decay)
        if every is None or every < 1:
            return f"{falls} {change:.2g}x/block"
        return f"{halves} every {every:.2g}"
    if shape == "step":
        verb, size = _change(ratio, _short)
        return f"{verb} {size}x at {at[0]}->{at[1]}"
    if shape == "trough":
        return f"U: min {_short(ratio)} at {at[0]}"
    if shape == "peak":
        return f"peak: {_short(ratio)} at {at[0]}"
    if shape == "noise":
        return "no trend"
    verb, size = _change(ratio, _short)
    return f"{verb} {size}x, unevenly"
