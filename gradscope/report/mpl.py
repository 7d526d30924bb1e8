"""Plot specs (:mod:`.plots`) drawn with matplotlib, as PNG files for papers (the ``png`` format).

The same information as :mod:`.svg` from the same specs: one stacked panel per
``Line.panel`` sharing the x axis, the SVG's color and marker shape per series,
red marks at flagged steps, and red non-finite heatmap cells with a key.

matplotlib is the optional extra ``plots`` (``pip install torch-gradscope[plots]``);
it is imported only here, when a PNG is asked for.
"""

from __future__ import annotations

import bisect
import io
import math
import warnings

from ..errors import UsageError
from .plots import NONFINITE_NOTE, BarPlot, Heatmap, LinePlot
from .svg import (MARKERS_UP_TO, MAX_MARKS, MISSING, NONFINITE, bar_range, color, decade_ticks, legend_entries,
                  heatmap_key, line_style, linear_ticks, log_range, marker_kind, pow10, tick_text)

DPI = 150
LINESTYLES = {"solid": "-", "dashed": "--", "dotted": ":"}  # svg.line_style -> matplotlib's linestyle
LEVEL_MARKER = {"marker": "_", "markersize": 7}  # a level's points: a short dash each, so a lone one shows too
SHAPES = ("o", "s", "^", "D", "v", "o")  # svg.marker's six shapes by marker_kind; the sixth is drawn open (a ring)
MARK_LABEL = "NaN or Inf in the gradients at that step"
NO_MATPLOTLIB = ("`formats='png'` needs matplotlib, which is not installed: pip install matplotlib "
                 "(gradscope's [plots] extra), or use `formats='svg'`, which needs nothing")


def _matplotlib():
    """matplotlib's Figure class; a Figure needs no pyplot, so no global state and no GUI backend."""
    try:
        from matplotlib.figure import Figure  # optional: matplotlib is imported only when a png is drawn
    except ImportError:
        raise UsageError(NO_MATPLOTLIB) from None
    return Figure


# matplotlib's log axes overflow near the floats' limits: values past these are drawn at them, on an axis within them.
DRAWABLE = (1e-300, 1e300)
DRAWABLE_DECADES = (-300, 300)


def _nan(values):
    """Values as matplotlib draws them: a gap for None, anything beyond :data:`DRAWABLE` at its edge."""
    return [math.nan if v is None else min(max(v, DRAWABLE[0]), DRAWABLE[1]) for v in values]


def _decades(found):
    """Whole decades (lo, hi) from the SVG's range, held within :data:`DRAWABLE_DECADES`; None stays None."""
    if found is None:
        return None
    lo, hi = (min(max(d, DRAWABLE_DECADES[0]), DRAWABLE_DECADES[1]) for d in found)
    return (lo, hi) if hi > lo else (lo - 1, hi) if lo > DRAWABLE_DECADES[0] else (lo, hi + 1)


def marker_style(index: int) -> dict:
    """Line2D keywords for series ``index``'s marker: the shape svg.marker gives the same index."""
    kind = marker_kind(index)
    return {"marker": SHAPES[kind], "markersize": 4, "markerfacecolor": "white" if kind == 5 else color(index)}


def _mark_above(ax, xs, **style):
    """Red ▼ just above the axes at each x (data coordinates along x, points above the top edge)."""
    from matplotlib.transforms import ScaledTranslation  # optional dependency: only when a png is drawn

    lift = ScaledTranslation(0, 6 / 72, ax.figure.dpi_scale_trans)
    ax.plot(xs, [1.0] * len(xs), linestyle="none", marker="v", markersize=6, color=NONFINITE, clip_on=False,
            transform=ax.get_xaxis_transform() + lift, **style)


def _line(Figure, spec: LinePlot):
    from matplotlib.lines import Line2D  # optional dependency: only when a png is drawn

    panels = list(dict.fromkeys(line.panel for line in spec.lines))
    entries = legend_entries(spec)
    with_markers = all(len(line.x) <= MARKERS_UP_TO for line in spec.lines)
    marks = [x for x, _ in spec.marks[:MAX_MARKS]]
    columns = min(4, len(entries) + bool(marks))
    legend_rows = math.ceil((len(entries) + bool(marks)) / columns)
    fig = Figure(figsize=(9, 1.3 + (3.6 if len(panels) == 1 else 2.8 * len(panels)) + 0.2 * legend_rows),
                 dpi=DPI, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        lines = [line for line in spec.lines if line.panel == panel]
        if len(panels) > 1 or panel:
            ax.set_title(panel or "all", fontsize=9, loc="left", fontweight="bold")
        for line in lines:
            ax.plot(line.x, _nan(line.y), color=color(line.color), linestyle=LINESTYLES[line_style(line)],
                    linewidth=1.6, label=line.label,
                    **(LEVEL_MARKER if line.dotted else marker_style(line.color) if with_markers else {}))
        for x in marks:
            ax.axvline(x, color=NONFINITE, alpha=0.45, linewidth=1)
        decades = _decades(log_range([v for line in lines for v in line.y] + [spec.reference_y]))
        if decades is None:
            ax.text(0.5, 0.5, "no positive values to draw on a log scale", transform=ax.transAxes,
                    ha="center", va="center", color="#666")
            continue
        ax.set_yscale("log")
        ax.set_ylim(pow10(decades[0]), pow10(decades[1]))  # whole decades, as in the SVG
        if decades[1] - decades[0] > 24:  # matplotlib's own log ticks overflow on very wide ranges: the SVG's decades
            ax.set_yticks([pow10(d) for d in decade_ticks(*decades)])
            ax.minorticks_off()
        if spec.reference_y is not None:
            ax.axhline(spec.reference_y, color="#222", linestyle=":", linewidth=1.2)
        ax.grid(True, which="major", color="#e3e3e3")
    if marks:
        _mark_above(axes[0], marks)
    handles = [Line2D([], [], color=color(index), linestyle=LINESTYLES[style], linewidth=1.6, label=name,
                      **(marker_style(index) if with_markers and style != "dotted" else {}))
               for name, index, style in entries]
    if marks:
        handles.append(Line2D([], [], color=NONFINITE, linestyle="none", marker="v", label=MARK_LABEL))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=7, frameon=False)
    axes[-1].set_xlabel(spec.x_label)
    fig.supylabel(spec.y_label, fontsize=10)
    return fig, axes[-1]


def _bars(Figure, spec: BarPlot):
    n = len(spec.panels)
    fig = Figure(figsize=(9, 1.9 * n + 1), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    decades = _decades(bar_range([v for p in spec.panels for v in p.back + p.front]))
    floor = pow10(decades[0])
    for ax, panel in zip(axes, spec.panels):
        # bars rise from the floor, which is below every value (as in the SVG): a tiny value is never a zero
        for values, alpha, label in ((panel.back, 0.3, spec.back_label), (panel.front, 1.0, spec.front_label)):
            heights = [v - floor for v in _nan(values)]
            ax.bar(panel.x, heights, width=0.8, bottom=floor, color=color(panel.color), alpha=alpha, label=label)
        for x, note in zip(panel.x, panel.at_floor):
            if note:  # a zero, or a NaN, stands on the floor
                ax.annotate(note, (x, floor), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=7, color=NONFINITE if note == NONFINITE_NOTE else "#333")
        ax.set_yscale("log")
        ax.set_ylim(floor, pow10(decades[1]))  # whole decades labelled at both ends, as in the SVG
        ax.set_yticks([pow10(d) for d in decade_ticks(*decades)])
        ax.set_title(panel.label, fontsize=9, loc="left")
        ax.grid(True, axis="y", color="#e3e3e3")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel(spec.x_label)
    fig.supylabel(spec.y_label, fontsize=10)
    return fig, axes[-1]


def _heatmap(Figure, spec: Heatmap):
    # optional dependencies (numpy comes with matplotlib): only when a png is drawn
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 5.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    grid = [_nan(row) for row in spec.values]
    finite = [v for row in spec.values for v in row if v is not None]
    cmap = colormaps["viridis"].with_extremes(bad=MISSING)
    cells = dict(aspect="auto", origin="lower", interpolation="nearest")
    image = ax.imshow(grid, cmap=cmap, norm=LogNorm(vmin=min(finite), vmax=max(finite)) if finite else None,
                      **cells)
    flags = np.array(spec.nonfinite or [[False] * len(spec.x) for _ in spec.rows], dtype=bool)
    if flags.any():  # red cells over the map, and a ▼ above each such column: not by color alone
        ax.imshow(np.ma.masked_array(np.ones(flags.shape), ~flags), cmap=ListedColormap([NONFINITE]), **cells)
        _mark_above(ax, np.flatnonzero(flags.any(axis=0))[:MAX_MARKS])
    columns = [(bisect.bisect_left(spec.x, t), t) for t in linear_ticks(min(spec.x), max(spec.x), 8)]
    columns = [(j, t) for j, t in columns if j < len(spec.x)]  # as in the SVG: round steps at their columns
    ax.set_xticks([j for j, _ in columns], [tick_text(t) for _, t in columns])
    ax.set_xlabel(spec.x_label)
    ax.set_ylabel(spec.y_label)
    fig.colorbar(image, ax=ax, label=spec.color_label)
    key = [Patch(facecolor=fill, edgecolor="#888", label=label) for fill, label in heatmap_key(spec)]
    fig.legend(handles=key, loc="outside lower left", ncols=2, fontsize=7, frameon=False)
    return fig, ax


def figure(spec):
    """One plot spec as a matplotlib Figure (not attached to pyplot)."""
    Figure = _matplotlib()
    draw = {LinePlot: _line, BarPlot: _bars, Heatmap: _heatmap}[type(spec)]
    fig, ax = draw(Figure, spec)
    if not isinstance(spec, Heatmap):
        from matplotlib.ticker import MaxNLocator  # optional dependency: only when a png is drawn

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # depths and steps are whole numbers
    fig.suptitle(spec.title, fontsize=11)
    return fig


def render_png(spec) -> bytes:
    """One plot spec as PNG bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # numpy's overflow notes from inside matplotlib, on values near 1e300
        warnings.simplefilter("ignore", RuntimeWarning)
        figure(spec).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
