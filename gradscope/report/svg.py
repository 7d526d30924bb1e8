"""Plot specs (:mod:`.plots`) drawn as standalone SVG, in plain Python: no matplotlib, no script.

The HTML page inlines these; the ``svg`` format writes them as files. Every
string is escaped; a heatmap's cells are one small PNG (encoded here) inside
the SVG, so a 300-block by 600-step map stays a few kilobytes.
"""

from __future__ import annotations

import base64
import bisect
import math
import sys
import struct
import zlib
from html import escape
from typing import Optional

from .fmt import num
from .plots import FLOOR_NOTES, NONFINITE_COLUMN, NONFINITE_NOTE, BarPlot, Heatmap, LinePlot

# One color per series (variant, comparison pair) of a report. The rule, tested: any two entries, and each entry
# and the white background, are at least PALETTE_MIN_DELTA_E apart in CIEDE2000 (sRGB, D65; 2.3 is a just-noticeable
# difference; the closest pairs here, vermillion and orange, blue and sky blue, are about 22), and each entry is at
# least PALETTE_MIN_DELTA_E_FROM_NONFINITE from the red that marks NaN/Inf. Okabe-Ito's seven first (its yellow
# left out: too light on white), which most color-blind readers tell apart too, then purple, olive, maroon, grey
# and brown. Past twelve series the colors repeat, and the marker shape (marker_kind) tells those apart.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#7700aa",
           "#889900", "#773344", "#7f7f7f", "#773300")
PALETTE_MIN_DELTA_E = 20.0
PALETTE_MIN_DELTA_E_FROM_NONFINITE = 15.0
VIRIDIS = ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
           "#7ad151", "#bddf26", "#fde725")
MISSING = "#d9d9d9"
NONFINITE = "#d62728"  # outside viridis: a NaN/Inf cell, also marked with a shape, never by color alone
HEATMAP_KEY = ((MISSING, "no gradient, or all zero"), (NONFINITE, "NaN or Inf in the gradient"))  # fill, meaning
DASHES = {"solid": "", "dashed": "6 4", "dotted": "2 3"}  # a line's style -> its SVG stroke-dasharray


def line_style(line) -> str:
    """``solid``, ``dashed`` (dL/dh; a norm after clipping) or ``dotted`` (a level, such as the clip level)."""
    return "dotted" if line.dotted else "dashed" if line.dashed else "solid"


def _dash(style: str) -> str:
    return f' stroke-dasharray="{DASHES[style]}"' if DASHES[style] else ""


def heatmap_key(spec: Heatmap) -> tuple[tuple[str, str], ...]:
    """(fill, meaning) of the heatmap's grey and, where its value can be non-finite, red cells."""
    key = ((MISSING, spec.missing_label),)
    return key + ((HEATMAP_KEY[1],) if spec.column in NONFINITE_COLUMN else ())
WIDTH = 960
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\""
MARKERS_UP_TO = 60  # points per line that get a marker with a tooltip; denser lines are drawn plain


def color(i: int) -> str:
    """The color of series ``i`` (an index that :mod:`.plots` gives each variant once per report)."""
    return PALETTE[i % len(PALETTE)]


MARKER_KINDS = 6  # circle, square, triangle, diamond, inverted triangle, ring


def marker_kind(i: int) -> int:
    """The marker shape of series ``i``: shifted by one each time the colors wrap around, so that no two of
    the first ``len(PALETTE) * MARKER_KINDS`` series share both color and shape."""
    return (i + i // len(PALETTE)) % MARKER_KINDS


def _e(text) -> str:
    return escape(str(text), quote=True)


def _f(x: float) -> str:
    return f"{x:.1f}"


# --- axes ---------------------------------------------------------------------------


def _decade_step(lo: int, hi: int) -> int:
    return max(1, math.ceil((hi - lo) / 8))


def log_range(values, floor_margin: float = 0.0) -> Optional[tuple[int, int]]:
    """Whole decades (lo, hi) covering the positive values, None when there are none; widened downward so
    that labelled decades fall on both ends of the axis, and so that the smallest value is at least
    ``floor_margin`` decades above the floor."""
    logs = [math.log10(v) for v in values if v is not None]
    if not logs:
        return None
    lo, hi = math.floor(min(logs) - floor_margin), math.ceil(max(logs))
    if hi == lo:
        hi += 1
    step = _decade_step(lo, hi)
    return hi - step * math.ceil((hi - lo) / step), hi


def bar_range(values) -> Optional[tuple[int, int]]:
    """:func:`log_range` for bars, which rise from the axis floor: the floor is at least a factor of two below the
    smallest value, so that the smallest bar has a height and is never taken for a zero (a zero has no bar; the
    drawers mark it at the floor)."""
    return log_range(values, floor_margin=math.log10(2))


def pow10(exponent: float) -> float:
    """10**exponent as a float, held within the floats' range (an axis of values near 1e308 reaches a decade
    past it; 10.0 ** 309 would raise)."""
    if exponent > 308:
        return sys.float_info.max
    if exponent < -323:
        return 5e-324  # the smallest positive float
    return 10.0 ** exponent


def decade_ticks(lo: int, hi: int) -> list[int]:
    return list(range(lo, hi + 1, _decade_step(lo, hi)))


def linear_ticks(lo: float, hi: float, most: int = 10) -> list[float]:
    """Round numbers (1, 2, 5 x 10^k apart) between lo and hi, at most ``most`` of them."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / most
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    step = max(step, 1.0) if float(lo).is_integer() and float(hi).is_integer() else step
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _decade_label(x: float, y: float, exponent: int, anchor: str = "end") -> str:
    return (f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="11">10'
            f'<tspan dy="-5" font-size="8">{exponent}</tspan></text>')


def tick_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else num(value)


class _LogY:
    def __init__(self, lo: int, hi: int, top: float, bottom: float):
        self.lo, self.hi, self.top, self.bottom = lo, hi, top, bottom

    def __call__(self, v: float) -> float:
        return self.at(math.log10(v))

    def at(self, exponent: float) -> float:
        """The y of 10**exponent, computed from the exponent: any decade, even one past the floats' range."""
        return self.bottom - (exponent - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)

    def draw(self, left: float, right: float) -> list[str]:
        out = []
        for d in decade_ticks(self.lo, self.hi):
            y = self.at(d)
            out.append(f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}" stroke="#e3e3e3"/>')
            out.append(_decade_label(left - 6, y + 4, d))
        if self.hi - self.lo <= 2:  # few decades: label 2x and 5x too, so values can be read off
            for d in range(self.lo, self.hi):
                for m in (2, 5):
                    if d + math.log10(m) > 308:  # past the largest float: no such value to read off
                        continue
                    y = self.at(d + math.log10(m))
                    out.append(f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}" '
                               'stroke="#f0f0f0"/>')
                    out.append(f'<text x="{_f(left - 6)}" y="{_f(y + 4)}" text-anchor="end" font-size="10" '
                               f'fill="#666">{num(m * 10.0 ** d, "g")}</text>')
        return out


class _LinX:
    def __init__(self, lo: float, hi: float, left: float, right: float):
        if hi == lo:
            lo, hi = lo - 1, hi + 1
        self.lo, self.hi, self.left, self.right = lo, hi, left, right

    def __call__(self, v: float) -> float:
        return self.left + (v - self.lo) / (self.hi - self.lo) * (self.right - self.left)

    def grid(self, top: float, bottom: float) -> list[str]:
        return [f'<line x1="{_f(self(t))}" x2="{_f(self(t))}" y1="{_f(top)}" y2="{_f(bottom)}" stroke="#f0f0f0"/>'
                for t in linear_ticks(self.lo, self.hi)]

    def draw(self, bottom: float) -> list[str]:
        out = []
        for t in linear_ticks(self.lo, self.hi):
            x = self(t)
            out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(bottom)}" y2="{_f(bottom + 5)}" stroke="#555"/>')
            out.append(f'<text x="{_f(x)}" y="{_f(bottom + 18)}" text-anchor="middle" font-size="11">'
                       f'{tick_text(t)}</text>')
        return out


def _open(width: float, height: float, title: str, key: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="plot-{_e(key)}" role="img" '
            f'viewBox="0 0 {_f(width)} {_f(height)}" width="{_f(width)}" height="{_f(height)}" {FONT}>',
            f"<title>{_e(title)}</title>",
            f'<rect width="{_f(width)}" height="{_f(height)}" fill="#ffffff"/>',
            f'<text x="16" y="24" font-size="15" font-weight="600">{_e(title)}</text>']


def _axis_labels(x_label: str, y_label: str, left: float, right: float, top: float, bottom: float) -> list[str]:
    mid_y = (top + bottom) / 2
    return [
        f'<text x="{_f((left + right) / 2)}" y="{_f(bottom + 38)}" text-anchor="middle" font-size="12">'
        f"{_e(x_label)}</text>",
        f'<text transform="translate(16 {_f(mid_y)}) rotate(-90)" text-anchor="middle" font-size="12">'
        f"{_e(y_label)}</text>",
    ]


def _no_data(width: float, height: float, message: str) -> str:
    return (f'<text x="{_f(width / 2)}" y="{_f(height / 2)}" text-anchor="middle" font-size="13" fill="#666">'
            f"{_e(message)}</text>")


def marker(index: int, x: float, y: float, fill: str, tip: str = "") -> str:
    """Series ``index``'s point shape (:func:`marker_kind`: circle, square, triangle, diamond, inverted triangle,
    ring): with the color, they tell apart more series than colors alone, also in grey print."""
    r = 3.2
    title = f"<title>{tip}</title>" if tip else ""
    kind = marker_kind(index)
    if kind == 0:
        return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{r - 0.4:.1f}" fill="{fill}">{title}</circle>'
    if kind == 5:
        return (f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{r - 0.6:.1f}" fill="#fff" stroke="{fill}" '
                f'stroke-width="1.6">{title}</circle>')
    points = {1: ((-r, -r), (r, -r), (r, r), (-r, r)),
              2: ((0, -r - 0.8), (r + 0.6, r - 0.2), (-r - 0.6, r - 0.2)),
              3: ((0, -r - 0.8), (r + 0.8, 0), (0, r + 0.8), (-r - 0.8, 0)),
              4: ((0, r + 0.8), (r + 0.6, -r + 0.2), (-r - 0.6, -r + 0.2))}[kind]
    d = " ".join(f"{_f(x + dx)},{_f(y + dy)}" for dx, dy in points)
    return f'<polygon points="{d}" fill="{fill}">{title}</polygon>'


def swatch(index: int) -> str:
    """Series ``index``'s color and marker shape as a small inline SVG, for a table row that names the series."""
    return (f'<svg class="swatch" aria-hidden="true" viewBox="1 1 8 8" width="10" height="10">'
            f"{marker(index, 5, 5, color(index))}</svg>")


def _sample(x: float, y: float, index: int, style: str, with_marker: bool) -> list[str]:
    out = [f'<line x1="{_f(x)}" x2="{_f(x + 28)}" y1="{_f(y)}" y2="{_f(y)}" stroke="{color(index)}" '
           f'stroke-width="2"{_dash(style)}/>']
    return out + ([marker(index, x + 14, y, color(index))] if with_marker and style != "dotted" else [])


def _legend_layout(labels: list[str], width: float) -> tuple[int, float]:
    """(columns, column width) of a legend under the plot, wide enough for the longest label."""
    col_w = min(width, 52 + 6.3 * max((len(label) for label in labels), default=0))
    return max(1, min(len(labels), int(width // col_w))), col_w


def _legend(entries: list[tuple[str, int, str]], left: float, top: float, width: float,
            with_markers: bool) -> list[str]:
    """Entries (label, color index, line style) in columns under the plot; each entry is tagged with its series
    number so that the page's script can highlight that series."""
    columns, col_w = _legend_layout([label for label, _, _ in entries], width)
    out = []
    for k, (label, index, style) in enumerate(entries):
        x, y = left + (k % columns) * col_w, top + (k // columns) * 18
        out.append(f'<g class="legend-item" data-series="{k}">'
                   + "".join(_sample(x, y, index, style, with_markers))
                   + f'<text x="{_f(x + 34)}" y="{_f(y + 4)}" font-size="11.5">{_e(label)}</text></g>')
    return out


def legend_height(labels: list[str], width: float) -> float:
    columns, _ = _legend_layout(labels, width)
    return 18.0 * math.ceil(len(labels) / columns) if labels else 0.0


# --- line plots ------------------------------------------------------------------------


LONE_POINT_PX = 2.0  # half the width of the tick a point with missing values on both sides is drawn as


def _path(points: list[tuple[float, Optional[float]]]) -> str:
    """An SVG path through the points, lifting the pen at each missing value; a point with a missing value (or
    none) on both sides is a short horizontal tick, so that it shows even without markers (a step clipped alone)."""
    parts = []
    for i, (x, y) in enumerate(points):
        if y is None:
            continue
        before = i > 0 and points[i - 1][1] is not None
        after = i + 1 < len(points) and points[i + 1][1] is not None
        if before:
            parts.append(f"L{_f(x)} {_f(y)}")
        elif after:
            parts.append(f"M{_f(x)} {_f(y)}")
        else:
            parts.append(f"M{_f(x - LONE_POINT_PX)} {_f(y)} L{_f(x + LONE_POINT_PX)} {_f(y)}")
    return " ".join(parts)


def legend_entries(spec: LinePlot) -> list[tuple[str, int, str]]:
    """One legend entry per series (variant or pair), in order: (name, color index, line style): the style its
    lines share, solid where they differ (a variant's dL/dθ solid and dL/dh dashed)."""
    entries: dict[str, list] = {}
    for line in spec.lines:
        name = line.series or line.label
        entry = entries.setdefault(name, [name, line.color, line_style(line)])
        entry[2] = entry[2] if entry[2] == line_style(line) else "solid"
    return [tuple(e) for e in entries.values()]  # type: ignore[misc]


def line_plot(spec: LinePlot) -> str:
    """Lines on a log y axis; lines of several quantities (``Line.panel``) in stacked panels sharing the x axis,
    each with its own decades; a legend naming each series once; flagged x values (``marks``) in red."""
    entries = legend_entries(spec)
    index_of = {name: k for k, (name, _, _) in enumerate(entries)}
    panels = list(dict.fromkeys(line.panel for line in spec.lines))
    titled = len(panels) > 1 or panels != [""]
    left, right, top = 78.0, WIDTH - 24.0, 44.0 + (18 if titled else 0) + (12 if spec.marks else 0)
    gap = 44.0
    panel_h = 340.0 if len(panels) == 1 else max(200.0, 440.0 / len(panels))
    bottom_last = top + len(panels) * panel_h + (len(panels) - 1) * gap
    legend_top = bottom_last + 62
    height = legend_top + legend_height([e[0] for e in entries], right - left) + 12
    out = _open(WIDTH, height, spec.title, spec.key)
    xs = [x for line in spec.lines for x in line.x]
    if not xs or all(v is None for line in spec.lines for v in line.y):
        return "\n".join(out + [_no_data(WIDTH, height, "no positive values to draw on a log scale"), "</svg>"])
    lx = _LinX(min(xs), max(xs), left, right)
    markers = all(len(line.x) <= MARKERS_UP_TO for line in spec.lines)
    for p, panel in enumerate(panels):
        p_top = top + p * (panel_h + gap)
        p_bottom = p_top + panel_h
        lines = [line for line in spec.lines if line.panel == panel]
        values = [v for line in lines for v in line.y] + ([spec.reference_y] if spec.reference_y else [])
        if titled:
            out.append(f'<text x="{_f(left)}" y="{_f(p_top - 7)}" font-size="12.5" font-weight="600">'
                       f"{_e(panel or 'all')}</text>")
        decades = log_range(values)
        if decades is None:
            out.append(_no_data(WIDTH, 2 * p_top + panel_h, "no positive values to draw on a log scale"))
            continue
        ly = _LogY(*decades, p_top, p_bottom)
        out += ly.draw(left, right) + lx.grid(p_top, p_bottom)
        out.append(f'<rect x="{_f(left)}" y="{_f(p_top)}" width="{_f(right - left)}" height="{_f(panel_h)}" '
                   'fill="none" stroke="#888"/>')
        if spec.reference_y is not None:
            y = ly(spec.reference_y)
            out.append(f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}" stroke="#222" '
                       'stroke-width="1.2" stroke-dasharray="2 3"/>')
        for x, _ in spec.marks[:MAX_MARKS]:
            out.append(f'<line x1="{_f(lx(x))}" x2="{_f(lx(x))}" y1="{_f(p_top)}" y2="{_f(p_bottom)}" '
                       f'stroke="{NONFINITE}" stroke-opacity="0.45"/>')
        for line in lines:
            stroke = color(line.color)
            pts = [(lx(x), ly(y) if y is not None else None) for x, y in zip(line.x, line.y)]
            group = [f'<g class="series" data-series="{index_of[line.series or line.label]}">'
                     f"<title>{_e(line.label)}</title>"
                     f'<path d="{_path(pts)}" fill="none" stroke="{stroke}" stroke-width="1.8"'
                     f"{_dash(line_style(line))}/>"]
            if markers and not line.dotted:
                names = line.point_names or [tick_text(x) for x in line.x]
                group += [marker(line.color, px, py, stroke, f"{_e(line.label)}: {_e(name)} = {num(v)}")
                          for (px, py), name, v in zip(pts, names, line.y) if py is not None]
            out.append("".join(group) + "</g>")
    out += _marks(spec.marks, lx, top)
    out += lx.draw(bottom_last)
    out += _axis_labels(spec.x_label, spec.y_label, left, right, top, bottom_last)
    out += _legend(list(entries), left, legend_top, right - left, markers)
    out.append("</svg>")
    return "\n".join(out)


MAX_MARKS = 200  # flagged steps drawn; more would be a red wall (the caption and the page's table count them)


def _mark(px: float, top: float, what: str) -> str:
    """A red triangle above the plot at ``px``, with what happened there as its tooltip."""
    return (f'<polygon class="mark" points="{_f(px - 5)},{_f(top - 11)} {_f(px + 5)},{_f(top - 11)} '
            f'{_f(px)},{_f(top - 2)}" fill="{NONFINITE}"><title>{_e(what)}</title></polygon>')


def _marks(marks: list[tuple[float, str]], lx: "_LinX", top: float) -> list[str]:
    """A red triangle above the plot at each flagged x."""
    return [_mark(lx(x), top, what) for x, what in marks[:MAX_MARKS]]


# --- bar charts -----------------------------------------------------------------------


MIN_BAR_PX = 1.5  # the least height of a drawn bar: a value many decades below the others is still seen


def _floor_note(cx: float, bottom: float, note: str) -> str:
    """A block's note (plots.ZERO or plots.NONFINITE_NOTE), standing on the axis floor at the block's bars."""
    fill = NONFINITE if note == NONFINITE_NOTE else "#333"
    return (f'<text class="floor-note" x="{_f(cx)}" y="{_f(bottom - 3)}" text-anchor="middle" font-size="10" '
            f'font-weight="600" fill="{fill}">{_e(note)}</text>')


def bar_plot(spec: BarPlot) -> str:
    panel_h, gap = (150.0 if len(spec.panels) <= 4 else 110.0), 34.0
    left, right, top = 78.0, WIDTH - 24.0, 64.0
    last_bottom = top + 14 + (len(spec.panels) - 1) * (panel_h + gap) + panel_h
    height = last_bottom + 52
    out = _open(WIDTH, height, spec.title, spec.key)
    decades = bar_range([v for p in spec.panels for v in p.back + p.front])
    if decades is None:
        return "\n".join(out + [_no_data(WIDTH, height, "no positive values to draw on a log scale"), "</svg>"])
    x_lo, x_hi = min(x for p in spec.panels for x in p.x), max(x for p in spec.panels for x in p.x)
    keys = [(label, opacity) for label, opacity, values in ((spec.back_label, ' fill-opacity="0.3"', "back"),
                                                            (spec.front_label, "", "front"))
            if any(v is not None for p in spec.panels for v in getattr(p, values))]  # only what is drawn
    for k, (label, opacity) in enumerate(keys):
        x = right - 250 + 100 * k
        out.append(f'<rect x="{_f(x)}" y="34" width="12" height="10" fill="#555"{opacity}/>'
                   f'<text x="{_f(x + 16)}" y="43" font-size="11">{_e(label)}</text>')
    for k, panel in enumerate(spec.panels):
        p_top = top + k * (panel_h + gap) + 14
        p_bottom = p_top + panel_h
        ly = _LogY(*decades, p_top, p_bottom)
        lx = _LinX(x_lo - 0.5, x_hi + 0.5, left, right)  # one depth axis for all panels, drawn under the last
        fill = color(panel.color)
        out.append(f'<text x="{_f(left)}" y="{_f(p_top - 5)}" font-size="12" font-weight="600">'
                   f"{_e(panel.label)}</text>")
        out += ly.draw(left, right)
        bar_w = max(0.6, (lx(1) - lx(0)) * 0.8)
        notes = panel.at_floor or [""] * len(panel.x)
        for x, name, back, front, note in zip(panel.x, panel.names, panel.back, panel.front, notes):
            cx = lx(x) - bar_w / 2
            tip = f"{_e(name)}: {_e(spec.back_label)} {num(back)}, {_e(spec.front_label)} {num(front)}" + (
                f" ({FLOOR_NOTES[note]})" if note else "")
            bars = []
            for value, opacity in ((back, ' fill-opacity="0.3"'), (front, "")):
                if value is not None:
                    y = min(ly(value), p_bottom - MIN_BAR_PX)  # the axis is below every value; this is for pixels
                    bars.append(f'<rect x="{_f(cx)}" y="{_f(y)}" width="{_f(bar_w)}" height="{_f(p_bottom - y)}" '
                                f'fill="{fill}"{opacity}/>')
            if note:
                bars.append(_floor_note(lx(x), p_bottom, note))
            if bars:
                out.append(f"<g><title>{tip}</title>{''.join(bars)}</g>")
        out.append(f'<rect x="{_f(left)}" y="{_f(p_top)}" width="{_f(right - left)}" height="{panel_h}" '
                   'fill="none" stroke="#888"/>')
        out += lx.draw(p_bottom) if k == len(spec.panels) - 1 else []
    out.append(f'<text x="{_f((left + right) / 2)}" y="{_f(last_bottom + 38)}" text-anchor="middle" '
               f'font-size="12">{_e(spec.x_label)}</text>')
    out.append(f'<text transform="translate(16 {_f((top + last_bottom) / 2)}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{_e(spec.y_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --- heatmaps ------------------------------------------------------------------------


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def viridis(t: float) -> tuple[int, int, int]:
    """The viridis color at t in [0, 1] (linear between 11 anchors)."""
    t = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    a, b = _hex(VIRIDIS[i]), _hex(VIRIDIS[i + 1])
    f = t - i
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))  # type: ignore[return-value]


def png(rgb_rows: list[list[tuple[int, int, int]]]) -> bytes:
    """A truecolor PNG of the pixel rows (top first)."""
    height, width = len(rgb_rows), len(rgb_rows[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rgb_rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def heatmap(spec: Heatmap) -> str:
    left, top, right = 78.0, 54.0, WIDTH - 130.0
    rows, cols = len(spec.rows), len(spec.x)
    plot_h = float(min(max(4 * rows, 220), 620))
    bottom = top + plot_h
    height = bottom + 80
    out = _open(WIDTH, height, spec.title, spec.key)
    logs = [math.log10(v) for row in spec.values for v in row if v is not None]
    if not logs or not cols:
        return "\n".join(out + [_no_data(WIDTH, height, "no positive values to draw on a log scale"), "</svg>"])
    lo, hi = min(logs), max(logs)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    missing, bad = _hex(MISSING), _hex(NONFINITE)
    flags = spec.nonfinite or [[False] * cols for _ in range(rows)]
    pixels = [[bad if flag else viridis((math.log10(v) - lo) / (hi - lo)) if v is not None else missing
               for v, flag in zip(spec.values[r], flags[r])]
              for r in reversed(range(rows))]  # the top pixel row is the deepest block
    image = base64.b64encode(png(pixels)).decode("ascii")
    out.append(f'<image x="{_f(left)}" y="{_f(top)}" width="{_f(right - left)}" height="{_f(plot_h)}" '
               f'preserveAspectRatio="none" image-rendering="pixelated" href="data:image/png;base64,{image}"/>')
    row_h, col_w = plot_h / rows, (right - left) / cols
    for t in linear_ticks(0, rows - 1, 8):
        y = bottom - (t + 0.5) * row_h
        out.append(f'<line x1="{_f(left - 5)}" x2="{_f(left)}" y1="{_f(y)}" y2="{_f(y)}" stroke="#555"/>'
                   f'<text x="{_f(left - 8)}" y="{_f(y + 4)}" text-anchor="end" font-size="11">{int(t)}'
                   f"<title>{_e(spec.rows[int(t)])}</title></text>")
    for t in linear_ticks(min(spec.x), max(spec.x), 8):
        j = bisect.bisect_left(spec.x, t)  # round steps, at the column of the nearest shown step at or after them
        if j >= cols:
            continue
        x = left + (j + 0.5) * col_w
        out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(bottom)}" y2="{_f(bottom + 5)}" stroke="#555"/>'
                   f'<text x="{_f(x)}" y="{_f(bottom + 18)}" text-anchor="middle" font-size="11">'
                   f"{tick_text(t)}</text>")
    flagged = [j for j in range(cols) if any(flags[r][j] for r in range(rows))]
    for j in flagged[:MAX_MARKS]:  # a shape above each column with a non-finite cell: not by color alone
        blocks = [spec.rows[r] for r in range(rows) if flags[r][j]]
        what = f"step {tick_text(spec.x[j])}: non-finite gradient in " + ", ".join(blocks[:5]) + (
            f" and {len(blocks) - 5} more" if len(blocks) > 5 else "")
        out.append(_mark(left + (j + 0.5) * col_w, top, what))
    out.append(f'<rect x="{_f(left)}" y="{_f(top)}" width="{_f(right - left)}" height="{_f(plot_h)}" '
               'fill="none" stroke="#888"/>')
    out += _axis_labels(spec.x_label, spec.y_label, left, right, top, bottom)
    # what grey and red cells are, under the plot
    key_y = bottom + 62
    for k, (fill, label) in enumerate(heatmap_key(spec)):
        x = left + 200 * k
        out.append(f'<rect x="{_f(x)}" y="{_f(key_y - 9)}" width="12" height="12" fill="{fill}" stroke="#888"/>'
                   f'<text x="{_f(x + 17)}" y="{_f(key_y + 1)}" font-size="11">{_e(label)}</text>')
    # color bar: the same map, low at the bottom
    bar_x = right + 24
    stops = "".join(f'<stop offset="{i / (len(VIRIDIS) - 1):.2f}" stop-color="{c}"/>' for i, c in enumerate(VIRIDIS))
    out.append(f'<defs><linearGradient id="cbar-{_e(spec.key)}" x1="0" y1="1" x2="0" y2="0">{stops}'
               "</linearGradient></defs>")
    out.append(f'<rect x="{_f(bar_x)}" y="{_f(top)}" width="14" height="{_f(plot_h)}" '
               f'fill="url(#cbar-{_e(spec.key)})" stroke="#888"/>')
    decades = [d for d in range(math.ceil(lo), math.floor(hi) + 1)]
    step = max(1, math.ceil(len(decades) / 8))
    for d in decades[::step]:
        y = bottom - (d - lo) / (hi - lo) * plot_h
        out.append(_decade_label(bar_x + 20, y + 4, d, anchor="start"))
    if len(decades) < 2:
        for value, y in ((pow10(lo), bottom), (pow10(hi), top + 8)):
            out.append(f'<text x="{_f(bar_x + 20)}" y="{_f(y)}" font-size="11">{num(value)}</text>')
    out.append(f'<text transform="translate({_f(WIDTH - 12)} {_f((top + bottom) / 2)}) rotate(-90)" '
               f'text-anchor="middle" font-size="12">{_e(spec.color_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def render(spec) -> str:
    """Any plot spec as a standalone SVG document."""
    if isinstance(spec, LinePlot):
        return line_plot(spec)
    if isinstance(spec, BarPlot):
        return bar_plot(spec)
    if isinstance(spec, Heatmap):
        return heatmap(spec)
    raise TypeError(f"no SVG drawer for {type(spec).__name__}")
