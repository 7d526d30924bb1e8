"""A report's formats: each format's name -> its renderer, and the files each can write.

A renderer takes a report and returns its files in memory (``{file name: bytes}``); it reads what the
report holds and computes nothing: ``json`` (here), ``csv`` (:mod:`.tables`), ``md`` (:mod:`.markdown`),
``html`` (:mod:`.html`, plots drawn by :mod:`.svg` from the specs in :mod:`.plots`), ``svg`` (:mod:`.svg`)
and ``png`` (:mod:`.mpl`, needs matplotlib, which it imports only when it draws).
"""

from __future__ import annotations

import importlib.util
import json
from typing import Callable, Iterable

from ..errors import UsageError, did_you_mean
from . import mpl, svg
from .html import render_html
from .markdown import render_md
from .plots import PLOT_KEYS, all_plots
from .tables import TABLES, render_csv

JSON_NAME = "report.json"
DEFAULT_FORMATS = ("json", "html", "md")

Renderer = Callable[..., dict[str, bytes]]  # report -> {file name: bytes}


def render_json(report) -> dict[str, bytes]:
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False)
    return {JSON_NAME: (text + "\n").encode("utf-8")}


def render_svg_files(report) -> dict[str, bytes]:
    return {f"{spec.key}.svg": svg.render(spec).encode("utf-8") for spec in all_plots(report)}


def render_png_files(report) -> dict[str, bytes]:
    return {f"{spec.key}.png": mpl.render_png(spec) for spec in all_plots(report)}


RENDERERS: dict[str, Renderer] = {
    "json": render_json, "csv": render_csv, "md": render_md, "html": render_html,
    "svg": render_svg_files, "png": render_png_files,
}


def output_names(fmt: str) -> tuple[str, ...]:
    """Every file name a format can write (which of them it does depends on the report)."""
    fixed = {"json": (JSON_NAME,), "md": ("report.md",), "html": ("report.html",)}
    if fmt in fixed:
        return fixed[fmt]
    if fmt == "csv":
        return tuple(f"{t}.csv" for t in TABLES)
    return tuple(f"{key}.{fmt}" for key in PLOT_KEYS)


def check_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Parse ``"json,csv"`` or a list of names; UsageError for an unknown format, or png without matplotlib.

    >>> check_formats("json, md,json")
    ('json', 'md')
    """
    if isinstance(formats, str):
        formats = formats.split(",")
    names = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    if not names:
        raise UsageError("`formats`: give at least one format, e.g. `formats='json'`")
    for name in names:
        if name not in RENDERERS:
            raise UsageError(f"`formats={name!r}`: unknown format{did_you_mean(name, RENDERERS)}; "
                             f"choose from {', '.join(RENDERERS)}")
    if "png" in names and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(mpl.NO_MATPLOTLIB)
    return names
