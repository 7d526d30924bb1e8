"""Plot specs (:mod:`.plots`) drawn with matplotlib, as PNG files for papers (``--format png``).

matplotlib is the optional extra ``plots`` (``pip install gradscope[plots]``);
it is imported only here, when a PNG is asked for.
"""

from __future__ import annotations

import bisect
import io
import math

from .plots import BarPlot, Heatmap, LinePlot
from .svg import tick_text, color, linear_ticks

DPI = 150


def _matplotlib():
    """matplotlib's Figure class; a Figure needs no pyplot, so no global state and no GUI backend."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from ..errors import UsageError

        raise UsageError("--format png needs matplotlib, which is not installed: pip install matplotlib "
                         "(gradscope's [plots] extra), or use --format svg, which needs nothing") from None
    return Figure


def _nan(values):
    return [math.nan if v is None else v for v in values]


def _line(Figure, spec: LinePlot):
    fig = Figure(figsize=(9, 4.6), dpi=DPI)
    ax = fig.subplots()
    for line in spec.lines:
        ax.plot(line.x, _nan(line.y), color=color(line.color), linestyle="--" if line.dashed else "-",
                marker="o" if len(line.x) <= 60 else None, markersize=3, linewidth=1.6, label=line.label)
    if spec.reference_y is not None:
        ax.axhline(spec.reference_y, color="#444", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.grid(True, which="major", color="#e3e3e3")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig, ax


def _bars(Figure, spec: BarPlot):
    n = len(spec.panels)
    fig = Figure(figsize=(9, 1.9 * n + 1), dpi=DPI)
    axes = fig.subplots(n, 1, sharex=True, sharey=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], spec.panels):
        ax.bar(panel.x, _nan(panel.back), width=0.8, color=color(panel.color), alpha=0.3, label=spec.back_label)
        ax.bar(panel.x, _nan(panel.front), width=0.8, color=color(panel.color), label=spec.front_label)
        ax.set_yscale("log")
        ax.set_title(panel.label, fontsize=9, loc="left")
        ax.grid(True, axis="y", color="#e3e3e3")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    return fig, axes[-1, 0]


def _heatmap(Figure, spec: Heatmap):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    fig = Figure(figsize=(9, 5), dpi=DPI)
    ax = fig.subplots()
    grid = [_nan(row) for row in spec.values]
    finite = [v for row in spec.values for v in row if v is not None]
    cmap = colormaps["viridis"].copy()
    cmap.set_bad("#d9d9d9")
    image = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap=cmap,
                      norm=LogNorm(vmin=min(finite), vmax=max(finite)) if finite else None)
    columns = [(bisect.bisect_left(spec.x, t), t) for t in linear_ticks(min(spec.x), max(spec.x), 8)]
    columns = [(j, t) for j, t in columns if j < len(spec.x)]  # as in the SVG: round steps at their columns
    ax.set_xticks([j for j, _ in columns], [tick_text(t) for _, t in columns])
    fig.colorbar(image, ax=ax, label=spec.color_label)
    return fig, ax


def render_png(spec) -> bytes:
    """One plot spec as PNG bytes."""
    Figure = _matplotlib()
    draw = {LinePlot: _line, BarPlot: _bars, Heatmap: _heatmap}[type(spec)]
    fig, ax = draw(Figure, spec)
    if not isinstance(spec, Heatmap):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # depths and steps are whole numbers
    ax.set_xlabel(spec.x_label)
    if isinstance(spec, BarPlot):
        fig.supylabel(spec.y_label, fontsize=10)
    else:
        ax.set_ylabel(spec.y_label)
    fig.suptitle(spec.title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()

