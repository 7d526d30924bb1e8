"""What each plot shows, as plain data: the one description both drawers (:mod:`.svg`, :mod:`.mpl`) follow.

A plot spec picks columns of the report and names the axes; it computes
nothing. Values that a log axis cannot show (zero, missing, non-finite) stay
in the spec as ``None`` and each drawer leaves a gap there; the |g| bars also
say why (``BarPanel.at_floor``), and the drawers mark a zero or a NaN at the
axis floor, so that it is not read as a tiny value or as no gradient. Each
series' color comes from :func:`colors`, once per report.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

from .fmt import clip_sentence
from .training import optimizer_texts

MAX_HEATMAP_STEPS = 600  # wider time series show evenly spaced recorded steps (the last always included)


@dataclass
class Line:
    label: str
    x: list[float]
    y: list[Optional[float]]
    color: int  # index into the drawer's palette (and marker shapes): the variant's or pair's, from colors()
    dashed: bool = False
    point_names: list[str] = field(default_factory=list)  # what a point is, for tooltips
    series: str = ""  # the variant or pair: the legend names each series once (default: the label)
    panel: str = ""  # lines of one quantity share a panel; panels are stacked, sharing the x axis
    dotted: bool = False  # a level set by the run (the clip level), not a measurement; no markers


@dataclass
class LinePlot:
    key: str  # file stem of the svg and png formats' files
    title: str
    x_label: str
    y_label: str
    lines: list[Line]
    caption: str = ""
    reference_y: Optional[float] = None  # a dotted horizontal line, e.g. ratio 1
    marks: list[tuple[float, str]] = field(default_factory=list)  # (x, what happened there): flagged steps


@dataclass
class BarPanel:
    label: str
    x: list[float]
    names: list[str]
    back: list[Optional[float]]  # the taller bar drawn first (max |g|)
    front: list[Optional[float]]  # drawn over it (mean |g|)
    color: int
    at_floor: list[str] = field(default_factory=list)  # per block, marked at the axis floor: ZERO, NONFINITE_NOTE, ""


@dataclass
class BarPlot:
    key: str
    title: str
    x_label: str
    y_label: str
    back_label: str
    front_label: str
    panels: list[BarPanel]
    caption: str = ""


@dataclass
class Heatmap:
    key: str
    title: str
    x_label: str
    y_label: str
    color_label: str
    x: list[float]  # steps, one per column
    rows: list[str]  # blocks, row 0 nearest the input
    values: list[list[Optional[float]]]  # [row][column]
    caption: str = ""
    nonfinite: list[list[bool]] = field(default_factory=list)  # [row][column]: a NaN/Inf in that gradient
    column: str = "grad_l2"  # the series' per-block value drawn
    missing_label: str = "no gradient, or all zero"  # what a grey cell is


def positive(value) -> Optional[float]:
    """The value if a log axis can show it, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _variants(report) -> list[str]:
    names = report.variant_names
    return names or sorted({b.get("variant") for b in report.blocks if b.get("variant")})


@dataclass(frozen=True)
class Colors:
    """The palette index (color and marker shape) of every series of one report, fixed once for the whole report:
    a variant keeps its color in the flow plot, the |g| bars and the page's tables, whichever variants a plot
    leaves out.

    ``variants``: by position in the report. ``pairs``: a comparison a / b takes a's color, so that the
    ``sigmoid / scratch`` ratio is drawn in sigmoid's; where an earlier pair took a's (``pretrained / scratch``,
    then ``pretrained / shallow``), b's; where both are taken, an index no variant has.
    """

    variants: dict[str, int]
    pairs: dict[tuple[str, str], int]

    def spare(self, k: int = 0) -> int:
        """The k-th index (from 0) that no variant and no pair has: for a series that is neither."""
        taken = set(self.variants.values()) | set(self.pairs.values())
        return next(itertools.islice((i for i in itertools.count() if i not in taken), k, None))


def colors(report) -> Colors:
    """Each variant's and each comparison pair's palette index in ``report`` (see :class:`Colors`)."""
    variants = {name: i for i, name in enumerate(_variants(report))}
    pairs: dict[tuple[str, str], int] = {}
    fresh = itertools.count(len(variants))
    for c in report.comparisons:
        pair = (c["a"], c["b"])
        if pair in pairs:
            continue
        free = [variants[v] for v in pair if v in variants and variants[v] not in pairs.values()]
        pairs[pair] = free[0] if free else next(fresh)
    return Colors(variants, pairs)


DEPTH_LABEL = "block depth: 0 = the block nearest the input (left), output side on the right"
PARAM_PANEL = "parameter gradient dL/dθ"
ACT_PANEL = "gradient at the block's output dL/dh"


def _without_empty_param_lines(lines: list[Line]) -> list[Line]:
    """The lines to draw: no dL/dθ panel where no block has a parameter gradient of its own (the runs of a
    repeated block) but dL/dh is there to draw."""
    if any(line.dashed for line in lines) and all(v is None for line in lines if not line.dashed for v in line.y):
        return [line for line in lines if line.dashed]
    return lines


def flow_plot(report) -> Optional[LinePlot]:
    """Gradient L2 norm per block against depth: parameter gradient solid, dL/dh dashed, one color per variant."""
    lines = []
    steps = set()
    for variant, i in colors(report).variants.items():
        rows = report.block_rows(variant)
        if not rows:
            continue
        steps |= {r.get("step") for r in rows}
        x = [r["depth"] for r in rows]
        names = [str(r["block"]) for r in rows]
        lines.append(Line(f"{variant} dL/dθ", x, [positive(r.get("grad_l2")) for r in rows], i, False, names,
                          variant, PARAM_PANEL))
        act = [positive(r.get("act_grad_l2")) for r in rows]
        if any(v is not None for v in act):
            lines.append(Line(f"{variant} dL/dh", x, act, i, True, names, variant, ACT_PANEL))
    lines = _without_empty_param_lines(lines)
    if not lines:
        return None
    first, last = lines[0].point_names[0], lines[0].point_names[-1]
    named = {}
    for line in lines:  # the same depth may be another block in another variant (a shallow copy, another model)
        for x, name in zip(line.x, line.point_names):
            named.setdefault(x, set()).add(name)
    whose = "" if all(len(n) == 1 for n in named.values()) else (
        f" in {lines[0].series} (other variants have other blocks at some depths)")
    solid, dashed = any(not line.dashed for line in lines), any(line.dashed for line in lines)
    if solid and dashed:
        quantity = ("Solid: L2 norm of the block's parameter gradient dL/dθ. Dashed: L2 norm of dL/dh, the gradient "
                    "with respect to the block's output; each has its own panel. ")
    elif dashed:
        quantity = "L2 norm of dL/dh, the gradient with respect to the block's output. "
    else:
        quantity = "L2 norm of the block's parameter gradient dL/dθ. "
    notes = ""
    if len(steps) == 1 and None not in steps:
        notes = f" Values at training step {steps.pop()}, the last recorded (the heatmap shows every step)."
    repeated = sorted({b for s in report.summaries for b in (s.get("repeated_blocks") or {})})
    if repeated:
        notes += (f" {', '.join(repeated)} run{'s' if len(repeated) == 1 else ''} several times with the same weights:"
                 " each run (#k) is a block with a dL/dh, and no parameter gradient of its own.")
    return LinePlot(
        key="flow", title="Gradient flow: gradient L2 norm per block against depth",
        x_label=DEPTH_LABEL, y_label="gradient L2 norm (log scale)",
        lines=lines,
        caption=f"{quantity}Depth 0 (left) is {first}, next to the input; depth {lines[0].x[-1]} (right) is {last}"
                f"{whose}. A line that falls toward depth 0 is a vanishing gradient; gaps are blocks with no or zero "
                f"gradient.{notes}",
    )


ZERO = "0"  # at the floor of the |g| bars: the block's gradient is exactly zero (a log axis has no place for it)
NONFINITE_NOTE = "NaN"  # there: a NaN or Inf in the block's gradient
FLOOR_NOTES = {ZERO: "gradient exactly zero", NONFINITE_NOTE: "NaN or Inf in the gradient"}  # note: its meaning


def _at_floor(row: dict) -> str:
    """The note a block gets at the foot of its panel: a NaN or Inf in its gradient, or a gradient exactly zero
    (no bar on a log axis, unlike a tiny value); "" for neither."""
    if row.get("grad_nonfinite"):
        return NONFINITE_NOTE
    if row.get("grad_maxabs") == 0:
        return ZERO
    return ""


def bar_plot(report) -> Optional[BarPlot]:
    """Mean and max |g| per block, one panel per variant (the view people draw by hand with plot_grad_flow)."""
    panels = []
    for variant, i in colors(report).variants.items():
        rows = report.block_rows(variant)
        at_floor = [_at_floor(r) for r in rows]
        maxabs = [positive(r.get("grad_maxabs")) for r in rows]  # NaN in memory, null when saved
        if all(v is None for v in maxabs) and not any(at_floor):  # nothing to draw or mark
            continue
        panels.append(BarPanel(variant, [r["depth"] for r in rows], [str(r["block"]) for r in rows], maxabs,
                               [positive(r.get("grad_meanabs")) for r in rows], i, at_floor))
    if all(v is None for p in panels for v in p.back):  # no scale to draw on
        return None
    has_mean = any(v is not None for p in panels for v in p.front)
    caption = "Light bars: the largest absolute gradient entry in the block" + (
        "; dark bars: the mean absolute entry." if has_mean else " (this report has no mean |g|).")
    caption += " The axis reaches below the smallest value, so every positive value has a bar."
    notes = [n for p in panels for n in p.at_floor]
    if ZERO in notes:
        caption += (f' "{ZERO}" at the foot of a panel: {notes.count(ZERO)} block(s) whose gradient is exactly zero, '
                    "which a log axis cannot draw.")
    if NONFINITE_NOTE in notes:
        caption += f' "{NONFINITE_NOTE}": {notes.count(NONFINITE_NOTE)} block(s) with a NaN or Inf in the gradient.'
    if len(panels) > 1:
        caption += " One y scale for all panels, so heights compare across variants."
    return BarPlot(
        key="blocks", title="Mean and max |g| per block" if has_mean else "Max |g| per block", x_label=DEPTH_LABEL,
        y_label="|g| per element (log scale)", back_label="max |g|", front_label="mean |g|", panels=panels,
        caption=caption,
    )


def ratio_plot(report) -> Optional[LinePlot]:
    """Per-block ratios a/b of each comparison: parameter gradient solid, dL/dh dashed."""
    lines = []
    pair_colors = colors(report).pairs
    for c in report.comparisons:
        rows = c.get("blocks") or []
        if not rows:
            continue
        i = pair_colors[(c["a"], c["b"])]
        x = [r["depth"] for r in rows]
        names = [str(r["block"]) for r in rows]
        pair = f"{c['a']} / {c['b']}"
        lines.append(Line(f"{pair} dL/dθ", x, [positive(r.get("grad_l2_ratio")) for r in rows], i, False, names,
                          pair, f"{PARAM_PANEL}: ratio a / b"))
        act = [positive(r.get("act_grad_l2_ratio")) for r in rows]
        if any(v is not None for v in act):
            lines.append(Line(f"{pair} dL/dh", x, act, i, True, names, pair, f"{ACT_PANEL}: ratio a / b"))
    lines = _without_empty_param_lines(lines)
    if not lines:
        return None
    return LinePlot(
        key="ratios", title="Per-block gradient ratio between variants",
        x_label=f"{DEPTH_LABEL}; depths of a",
        y_label="gradient L2 ratio a / b (log scale)", lines=lines, reference_y=1.0,
        caption="Each line is one pair a / b, in a's color (b's where a's is another pair's). Above the dotted "
                "line at 1, a (the first named) gets the larger gradient at that block; 10 means ten times larger.",
    )


def nonfinite_steps(report) -> list:
    """The steps whose gradients held a NaN or Inf, from the series' global rows (block rows where none)."""
    rows = [r for r in report.series if r.get("step") is not None and r.get("grad_nonfinite")]
    if any(r.get("block") is None for r in report.series):
        rows = [r for r in rows if r.get("block") is None]
    return sorted({r["step"] for r in rows})


def _series_steps(report) -> list:
    steps = sorted({r["step"] for r in report.series if r.get("step") is not None})
    if len(steps) <= MAX_HEATMAP_STEPS:
        return steps
    stride = (len(steps) - 1) / (MAX_HEATMAP_STEPS - 1)
    spaced = {steps[round(i * stride)] for i in range(MAX_HEATMAP_STEPS)}
    return sorted(spaced | set(nonfinite_steps(report)[:MAX_HEATMAP_STEPS // 4]))  # incidents stay visible


# The per-block values of a training series a heatmap can show: column -> (title, color bar, what a cell is,
# what a grey cell is). grad_l2 is always recorded; the others where the monitor recorded them.
HEATMAP_SERIES = {
    "grad_l2": ("Gradient L2 norm per block and training step", "gradient L2 norm (log scale)",
                "the L2 norm of the block's parameter gradient at that step, before any clipping",
                "no gradient, or all zero"),
    "act_grad_l2": ("dL/dh L2 norm per block and training step", "dL/dh L2 norm (log scale)",
                    "the L2 norm of dL/dh, the gradient with respect to the block's output, at that step",
                    "not recorded at that step, or zero"),
    "weight_l2": ("Weight L2 norm per block and training step", "weight L2 norm (log scale)",
                  "the L2 norm of the block's weights at that step", "not recorded, or zero"),
    "update_ratio": ("Update-to-weight ratio per block and training step", "update / weight (log scale)",
                     "the block's update-to-weight ratio at that step's optimizer step, "
                     "||W after - W before|| / ||W before||", "not recorded (a skipped step), or no change"),
}
NONFINITE_COLUMN = {"grad_l2": "grad_nonfinite", "act_grad_l2": "act_grad_nonfinite"}  # what marks a cell red


def heatmap_key(column: str) -> str:
    """The plot key (and file stem) of the heatmap of ``column``: ``heatmap`` for the gradient norm."""
    return "heatmap" if column == "grad_l2" else f"heatmap-{column}"


def heatmap_columns(report) -> list[str]:
    """The per-block values of the series that a heatmap can show, in :data:`HEATMAP_SERIES` order: the gradient
    norm, and each other one with a positive value in some block row."""
    block_rows = [r for r in report.series if r.get("block") is not None]
    return ["grad_l2"] + [c for c in HEATMAP_SERIES if c != "grad_l2"
                          and any(positive(r.get(c)) is not None for r in block_rows)]


def heatmap(report, column: str = "grad_l2") -> Optional[Heatmap]:
    """A per-block value of the monitor's time series (``column``, default the gradient L2 norm) by training step
    (columns) and block (rows); None without block rows."""
    block_rows = [r for r in report.series if r.get("block") is not None]
    if not block_rows:
        return None
    all_steps = {r["step"] for r in block_rows}
    steps = _series_steps(report)
    shown = set(steps)
    blocks = [b for _, b in sorted({(r["depth"], r["block"]) for r in block_rows})]
    row_of = {b: i for i, b in enumerate(blocks)}
    col_of = {s: j for j, s in enumerate(steps)}
    values: list[list[Optional[float]]] = [[None] * len(steps) for _ in blocks]
    nonfinite = [[False] * len(steps) for _ in blocks]
    flag = NONFINITE_COLUMN.get(column)
    for r in block_rows:
        if r["step"] in shown:
            values[row_of[r["block"]]][col_of[r["step"]]] = positive(r.get(column))
            nonfinite[row_of[r["block"]]][col_of[r["step"]]] = bool(flag and r.get(flag))
    title, color_label, cell, missing = HEATMAP_SERIES.get(
        column, (f"{column} per block and training step", f"{column} (log scale)", f"the block's {column}",
                 "no value, or zero"))
    caption = (f"Each cell: {cell}. Row 0 (bottom) is {blocks[0]}, next to the input; row {len(blocks) - 1} (top) "
               f"is {blocks[-1]}. Grey: {missing}.")
    if flag:
        caption += " Red, marked ▼ above its column: a NaN or Inf in that block's gradient."
    if len(steps) < len(all_steps):
        caption += (f" Showing {len(steps)} of {len(all_steps)} recorded steps: evenly spaced, plus steps with a "
                    "non-finite gradient; columns are equally wide, so the step axis is not to scale.")
    return Heatmap(key=heatmap_key(column), title=title, x_label="training step",
                   y_label="block depth (0: input side, bottom)", color_label=color_label,
                   x=steps, rows=blocks, values=values, caption=caption, nonfinite=nonfinite, column=column,
                   missing_label=missing)


def heatmaps(report) -> list[Heatmap]:
    """One heatmap per per-block value the series holds (:func:`heatmap_columns`), the gradient norm first."""
    return [h for h in (heatmap(report, c) for c in heatmap_columns(report)) if h is not None]


PRE_CLIP_LABEL = "before clipping (grad_l2)"
POST_CLIP_LABEL = "after clipping (grad_l2_post_clip)"
CLIP_LEVEL_LABEL = "clip level max_norm (clip_max_norm)"


def global_norm_plot(report) -> Optional[LinePlot]:
    """The global gradient norm per recorded step, always before any clipping; where steps were clipped, also the
    norm after the clip (dashed) and the clip level (dotted, at those steps only)."""
    rows = sorted((r for r in report.series if r.get("block") is None and r.get("step") is not None),
                  key=lambda r: r["step"])
    if not rows:
        return None
    x = [r["step"] for r in rows]
    palette = colors(report)
    # the monitored model's color where it is the report's one variant; after clipping, one that no variant has
    spare = (palette.spare(k) for k in itertools.count())
    overall = next(iter(palette.variants.values())) if len(palette.variants) == 1 else next(spare)
    levels = [positive(r.get("clip_max_norm")) for r in rows]
    clipped = [v for v in levels if v is not None]
    lines = [Line(PRE_CLIP_LABEL if clipped else "global dL/dθ", x, [positive(r.get("grad_l2")) for r in rows],
                  overall)]
    caption = "Solid: the L2 norm of all monitored parameter gradients together, at each recorded step"
    if clipped:
        lines.append(Line(POST_CLIP_LABEL, x, [positive(r.get("grad_l2_post_clip")) for r in rows], next(spare),
                          dashed=True))
        lines.append(Line(CLIP_LEVEL_LABEL, x, levels, next(spare), dotted=True))
        caption += (", before clipping (report.series grad_l2). Dashed: the same norm after clipping "
                    "(grad_l2_post_clip). Dotted: the clip level (clip_max_norm), drawn at the steps that were "
                    f"clipped. {clip_sentence(report.series)}.")
    else:
        caption += "; no step was clipped."
    flagged = {r["step"]: r.get("grad_nonfinite") for r in rows if r.get("grad_nonfinite")}
    marks = [(step, f"step {step}: {count} non-finite gradient value(s)") for step, count in flagged.items()]
    if marks:
        caption += (f" Red ▼: the {len(marks)} step(s) with a NaN or Inf in a gradient, where the norm is NaN "
                    "and the line has a gap.")
    title = "Global gradient L2 norm per training step" + (", before and after clipping" if clipped else "")
    return LinePlot(key="global", title=title, x_label="training step", y_label="gradient L2 norm (log scale)",
                    lines=lines, caption=caption, marks=marks)


MAX_CURVE_POINTS = 500  # points per loss curve drawn; longer runs show evenly spaced steps (the last included)


def _curve_steps(steps: int) -> list[int]:
    if steps <= MAX_CURVE_POINTS:
        return list(range(steps))
    stride = (steps - 1) / (MAX_CURVE_POINTS - 1)
    return sorted({round(i * stride) for i in range(MAX_CURVE_POINTS)})


def training_plot(report) -> Optional[LinePlot]:
    """The training loss per step of ``gradscope demo --train``: one panel per optimizer, one line per variant."""
    runs = (report.training or {}).get("runs") or []
    if not runs:
        return None
    index = colors(report).variants
    panels = optimizer_texts(report.training)
    lines = []
    for run in runs:
        shown = _curve_steps(len(run["loss"]))
        lines.append(Line(f"{run['variant']}, {run['optimizer']}", [t + 1 for t in shown],
                          [positive(run["loss"][t]) for t in shown], index.get(run["variant"], 0),
                          series=run["variant"], panel=panels.get(run["optimizer"], run["optimizer"])))
    steps = max(len(run["loss"]) for run in runs)
    thinned = f" {MAX_CURVE_POINTS} of the {steps} steps shown, evenly spaced." if steps > MAX_CURVE_POINTS else ""
    return LinePlot(
        key="training", title="Training loss per step, each variant trained with each optimizer",
        x_label="training step", y_label="training loss (log scale)", lines=lines,
        caption="Cross-entropy on each step's fresh batch of the teacher task, before that step's update; one panel "
                "per optimizer, each variant in its color. A line that stays near its start is a network that does "
                f"not learn.{thinned}",
    )


def all_plots(report) -> list:
    """Every plot the report has data for, in page order: a training run's time series first."""
    if report.series:
        return [p for p in (global_norm_plot(report), *heatmaps(report), flow_plot(report), ratio_plot(report),
                            bar_plot(report)) if p is not None]
    makers = (flow_plot, ratio_plot, bar_plot, training_plot)
    return [p for p in (make(report) for make in makers) if p is not None]


PLOT_KEYS = ("flow", "ratios", "blocks", "training", "global",
             *(heatmap_key(c) for c in HEATMAP_SERIES))  # file stems of the svg and png formats' files
