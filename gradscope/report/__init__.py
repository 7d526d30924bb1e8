"""The result of an analysis as one tidy object, and writing it.

A :class:`Report` holds plain Python data only (no tensors, no models):

- ``meta``: run metadata (versions, model, device, dtype, backend, seed, batch, command line);
- ``variants``: one dict per variant (name, description, base, changes, architecture counts);
- ``summaries``: one dict per variant with its verdict, ratios and decay fit;
- ``findings``: evidence and fix, per variant;
- ``comparisons``: per-block ratios between variants (pretrained/scratch, deep/shallow, what-if/base);
- ``blocks``: per-block rows (``block`` and ``depth`` first), all variants in one table;
- ``params``: per-parameter rows (``name`` and ``depth`` first), all variants in one table;
- ``series``: per-step rows of a training-time monitor (empty for ``analyze``);
- ``training``: ``gradscope demo --train``'s runs: each variant trained with SGD and Adam, its loss curve and
  how far its first and last block moved (empty otherwise, and then left out of the JSON).

JSON is the source of truth (``docs/report-schema.md`` documents it field by
field). Non-finite floats (NaN, +-Inf) are written as ``null``: JSON has no
spelling for them. The other formats render what the report holds and compute
nothing: ``csv`` (:mod:`.tables`), ``md`` (:mod:`.markdown`), ``html``
(:mod:`.html`, plots drawn by :mod:`.svg` from the specs in :mod:`.plots`),
``svg`` and ``png`` (:mod:`.mpl`, needs matplotlib), and the terminal text
(:mod:`.terminal`). Each is imported only when used.

Writing is all or nothing (:mod:`.files`): every file is rendered in memory,
then written under a lock on the directory with SIGINT/SIGTERM deferred, so the
directory holds the old report or the new one whatever stops it. A directory
holds one report: one already there is not replaced unless ``force=True``, and
then its files that the new report does not rewrite are removed with the same care.
Reading checks the structure (:mod:`.validate`), so a file that is not a
report is refused in one sentence rather than failing somewhere downstream.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import UsageError, did_you_mean
from ..limits import MAX_REPORT_BYTES, bound, read_bounded
from .files import check_writable, save_files

SCHEMA = "gradscope.report/1"
JSON_NAME = "report.json"
DEFAULT_FORMATS = ("json", "html", "md")
OPTIONAL_SECTIONS = ("training",)  # top-level keys written only when they hold something


def _clean(value):
    """JSON-safe copy: non-finite floats become None, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class Report:
    """An analysis result; see the module docstring for its parts."""

    meta: dict = field(default_factory=dict)
    variants: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    series: list[dict] = field(default_factory=list)
    training: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain, JSON-safe data with the schema version first; an empty optional section is left out."""
        data = _clean(asdict(self))
        return {"schema": SCHEMA, **{k: v for k, v in data.items() if k not in OPTIONAL_SECTIONS or v}}

    def summary(self, variant: str) -> dict:
        """The summary of one variant by name (analyze, demo and compare reports; a training report has none)."""
        for s in self.summaries:
            if s["variant"] == variant:
                return s
        if self.meta.get("kind") == "monitor":
            raise KeyError("a training report has no summaries: its per-step values are in report.series / "
                           "report.blocks")
        raise KeyError(f"no variant {variant!r} in this report; it has {', '.join(self.variant_names)}")

    def block_rows(self, variant: str) -> list[dict]:
        """The per-block rows of one variant, in depth order."""
        return [b for b in self.blocks if b["variant"] == variant]

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.variants]

    def to_pandas(self, table: Optional[str] = None):
        """The report's tables as pandas DataFrames (pandas is optional; a clear error when it is missing).

        ``report.to_pandas("params")`` is one DataFrame; ``report.to_pandas()`` a dict of every
        non-empty table (``params``, ``blocks``, ``summaries``, ``findings``, ``comparisons``,
        ``comparison_blocks``, ``variants``, ``series``), with the columns of the CSV files.

        >>> report.to_pandas("blocks").pivot(index="depth", columns="variant", values="grad_l2")  # doctest: +SKIP
        """
        from .tables import to_pandas

        return to_pandas(self, table)

    @classmethod
    def from_dict(cls, data, *, source: str = "the data") -> "Report":
        """The Report in ``data`` (parsed ``report.json``); UsageError naming ``source`` unless it is one.

        Only ``gradscope.report/1`` is read: a newer version is refused with both versions named (an older
        gradscope never misreads a newer report), anything else with what is missing or wrong.
        """
        from .validate import describe_json, schema_version, structure_problem

        if not isinstance(data, dict):
            raise UsageError(f"{source} is not a gradscope report: it holds {describe_json(data)}, not an object")
        schema, version = data.get("schema"), schema_version(data)
        if version is not None and version > 1:
            raise UsageError(f"{source}: report schema {schema!r} is not {SCHEMA!r}; this gradscope reads {SCHEMA} "
                             "(upgrade gradscope to read newer reports)")
        if schema != SCHEMA:
            found = "it has no \"schema\" key" if "schema" not in data else f"its schema is {schema!r}, not {SCHEMA!r}"
            raise UsageError(f"{source} is not a gradscope report: {found}")
        problem = structure_problem(data)
        if problem:
            raise UsageError(f"{source} is not a gradscope report: {problem}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # the others: checked above

    @classmethod
    def load(cls, path) -> "Report":
        """Read a report written by :meth:`save` (a ``report.json`` file, or the directory holding one)."""
        path = Path(path)
        if path.is_dir():
            if not (path / JSON_NAME).exists() and report_files(path):
                raise UsageError(f"{path} holds a report without {JSON_NAME} (written without the json format); "
                                 "gradscope reads reports from their json: write it with --format json")
            path = path / JSON_NAME
        try:
            text = read_bounded(path, "report", bound(MAX_REPORT_BYTES, "GRADSCOPE_MAX_REPORT_MB"),
                                "GRADSCOPE_MAX_REPORT_MB")
            data = json.loads(text.decode("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read report {path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise UsageError(f"{path} is not a gradscope report: it is not JSON ({exc})") from None
        except RecursionError:
            raise UsageError(f"{path} is not a gradscope report: its JSON is nested too deeply to be one") from None
        return cls.from_dict(data, source=str(path))

    def save(self, directory, formats: Iterable[str] | str = DEFAULT_FORMATS, *, force: bool = False) -> list[Path]:
        """Write the report into ``directory`` in each format (default json, html, md); return the paths written.

        A directory holds one report: without ``force``, UsageError if it already holds any file a report
        is made of (:func:`report_files`); with ``force``, the previous report's files that this one does not
        rewrite are removed, so no stale page or table is left beside the new ``report.json``. Every file
        is rendered in memory, written to a temporary name, and renamed only when all of them were written;
        a failure or an interruption at any point removes what this call wrote and restores what it replaced
        or removed.
        """
        formats = check_formats(formats)
        out = Path(directory)
        check_writable(out)
        rendered = {name: content for fmt in formats for name, content in RENDERERS[fmt](self).items()}
        existing = report_files(out)
        if existing and not force:  # before taking the lock too: the common case fails without touching the disk
            raise UsageError(_exists_message(out, existing, "--force (force=True)"))
        save_files(out, rendered, (name for fmt in RENDERERS for name in output_names(fmt)), force=force,
                   exists_error=lambda names: UsageError(_exists_message(out, names, "--force (force=True)")))
        return [out / name for name in rendered]


def _render_json(report: Report) -> dict[str, bytes]:
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False)
    return {JSON_NAME: (text + "\n").encode("utf-8")}


def _render_csv(report: Report) -> dict[str, bytes]:
    from .tables import render_csv

    return render_csv(report)


def _render_md(report: Report) -> dict[str, bytes]:
    from .markdown import render_md

    return render_md(report)


def _render_html(report: Report) -> dict[str, bytes]:
    from .html import render_html

    return render_html(report)


def _render_svg(report: Report) -> dict[str, bytes]:
    from .plots import all_plots
    from .svg import render

    return {f"{spec.key}.svg": render(spec).encode("utf-8") for spec in all_plots(report)}


def _render_png(report: Report) -> dict[str, bytes]:
    from .mpl import render_png
    from .plots import all_plots

    return {f"{spec.key}.png": render_png(spec) for spec in all_plots(report)}


# format -> renderer returning {file name: bytes}; each imports its module when called.
RENDERERS: dict[str, Callable[[Report], dict[str, bytes]]] = {
    "json": _render_json, "csv": _render_csv, "md": _render_md, "html": _render_html,
    "svg": _render_svg, "png": _render_png,
}


def output_names(fmt: str) -> tuple[str, ...]:
    """Every file name a format can write (which of them it does depends on the report)."""
    from .plots import PLOT_KEYS
    from .tables import TABLES

    fixed = {"json": (JSON_NAME,), "md": ("report.md",), "html": ("report.html",)}
    if fmt in fixed:
        return fixed[fmt]
    if fmt == "csv":
        return tuple(f"{t}.csv" for t in TABLES)
    return tuple(f"{key}.{fmt}" for key in PLOT_KEYS)


def check_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Parse ``"json,csv"`` or a list of names; UsageError for unknown or not yet implemented formats."""
    if isinstance(formats, str):
        formats = formats.split(",")
    names = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    if not names:
        raise UsageError("--format: give at least one format, e.g. --format json")
    for name in names:
        if name not in RENDERERS:
            raise UsageError(f"--format {name}: unknown format{did_you_mean(name, RENDERERS)}; "
                             f"choose from {', '.join(RENDERERS)}")
    if "png" in names:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            from .mpl import NO_MATPLOTLIB

            raise UsageError(NO_MATPLOTLIB)
    return names


def report_files(directory) -> list[str]:
    """Names of the files in ``directory`` that a report is made of (any format's), in format order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [name for fmt in RENDERERS for name in output_names(fmt) if (directory / name).is_file()]


def _exists_message(directory: Path, existing: list[str], force_flag: str = "--force") -> str:
    return (f"{directory / existing[0]} already exists; pass {force_flag} to replace the report in {directory} "
            "(all its files), or choose another --out")


def check_output(directory, formats: Iterable[str] | str = DEFAULT_FORMATS, *, force: bool = False) -> tuple[str, ...]:
    """Everything :meth:`Report.save` would refuse, checked before an analysis runs; returns the formats."""
    names = check_formats(formats)
    check_writable(Path(directory))
    existing = report_files(directory)
    if existing and not force:
        raise UsageError(_exists_message(Path(directory), existing))
    return names

