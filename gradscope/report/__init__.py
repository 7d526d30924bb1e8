"""The result of an analysis as one tidy object, and writing it.

A :class:`Report` holds plain Python data only (no tensors, no models):

- ``meta``: run metadata (versions, model, device, dtype, backend, seed, batch, command line);
- ``variants``: one dict per variant (name, description, base, changes, architecture counts);
- ``summaries``: one dict per variant with its verdict, ratios and decay fit;
- ``findings``: evidence and fix, per variant;
- ``comparisons``: per-block ratios between variants (pretrained/scratch, deep/shallow, what-if/base);
- ``blocks``: per-block rows (``block`` and ``depth`` first), all variants in one table;
- ``params``: per-parameter rows (``name`` and ``depth`` first), all variants in one table;
- ``series``: per-step rows of a training-time monitor (empty for ``analyze``).

JSON is the source of truth (``docs/report-schema.md`` documents it field by
field). Non-finite floats (NaN, +-Inf) are written as ``null``: JSON has no
spelling for them. The other formats render what the report holds and compute
nothing: ``csv`` (:mod:`.tables`), ``md`` (:mod:`.markdown`), ``html``
(:mod:`.html`, plots drawn by :mod:`.svg` from the specs in :mod:`.plots`),
``svg`` and ``png`` (:mod:`.mpl`, needs matplotlib), and the terminal text
(:mod:`.terminal`). Each is imported only when used.

Writing is atomic: every file is rendered in memory and written to a temporary
name first, and renamed only when all of them succeeded. A directory holds one
report: one already there is not replaced unless ``force=True``, and then its
files that the new report does not rewrite are removed with the same care.
Reading checks the structure (:mod:`.validate`), so a file that is not a
report is refused in one sentence rather than failing somewhere downstream.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import GradscopeError, UsageError, did_you_mean

SCHEMA = "gradscope.report/1"
JSON_NAME = "report.json"
DEFAULT_FORMATS = ("json", "html", "md")


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

    def to_dict(self) -> dict:
        """Plain, JSON-safe data with the schema version first."""
        return {"schema": SCHEMA, **_clean(asdict(self))}

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
        return cls(**{f.name: data[f.name] for f in fields(cls)})

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
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read report {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"{path} is not a gradscope report: it is not JSON ({exc})") from None
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
        if existing and not force:
            raise UsageError(_exists_message(out, existing, "--force (force=True)"))
        created = [d for d in (out, *out.parents) if not d.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GradscopeError(f"cannot create the output directory {out}: {exc.strerror or exc}") from None
        try:
            _write_all(out, rendered, remove=[name for name in existing if name not in rendered])
        except BaseException as exc:
            for d in created:  # leaf first; only directories this call made, and only if empty
                try:
                    d.rmdir()
                except OSError:
                    break
            if isinstance(exc, OSError):
                raise GradscopeError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
            raise
        return [out / name for name in rendered]


def _write_all(out: Path, rendered: dict[str, bytes], remove: Iterable[str] = ()) -> None:
    """Write every file and remove every file in ``remove``, or do none of it.

    Temporary files first, then renames, then the removals (each moved aside, not deleted, until all is
    done); if any step fails, what was placed is undone and what was moved aside is put back.
    """
    mask = os.umask(0)  # the only way to read the umask; set back at once
    os.umask(mask)
    temps: list[tuple[str, Path]] = []
    placed: list[tuple[Path, bool, Optional[Path]]] = []  # (target, existed, hard link to what it replaced)
    backups: list[Path] = []
    moved_aside: list[tuple[Path, Path]] = []  # (removed file, where it waits until the write succeeded)
    done = False
    try:
        for name, content in rendered.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            temps.append((name, Path(tmp)))
            try:
                handle = os.fdopen(fd, "wb")
            except BaseException:
                os.close(fd)
                raise
            with handle:
                os.fchmod(handle.fileno(), 0o666 & ~mask)  # mkstemp's 0600 would hide the report from others
                handle.write(content)
        for name, tmp in temps:
            target = out / name
            backup, existed = None, target.exists()
            if existed:
                backup = out / f".{name}.{uuid.uuid4().hex}.bak"
                try:
                    os.link(target, backup)
                except OSError:
                    backup = None  # no hard links here: the old file cannot be restored, only replaced
            if backup is not None:
                backups.append(backup)
            os.replace(tmp, target)
            placed.append((target, existed, backup))
        for name in remove:
            target = out / name
            aside = out / f".{name}.{uuid.uuid4().hex}.old"
            os.replace(target, aside)
            moved_aside.append((target, aside))
        done = True
    except BaseException:
        for target, aside in reversed(moved_aside):
            try:
                os.replace(aside, target)
            except OSError:
                pass
        for target, existed, backup in reversed(placed):
            try:
                if backup is not None:
                    os.replace(backup, target)
                elif not existed:
                    target.unlink(missing_ok=True)
            except OSError:
                pass
        raise
    finally:
        for _, tmp in temps:
            tmp.unlink(missing_ok=True)
        for backup in backups:
            backup.unlink(missing_ok=True)
        if done:  # after a failure, a file that could not be put back stays aside rather than be lost
            for _, aside in moved_aside:
                aside.unlink(missing_ok=True)


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


def check_writable(directory: Path, option: str = "--out") -> None:
    """UsageError unless ``directory`` is, or can be created as, a writable directory (checked before any work).

    A file is made and removed in the nearest folder that exists: permission bits
    alone pass for root, also on a read-only mount or in /proc. ``option`` names the
    setting in the message (``--out``, or a callback's ``report_dir=``).
    """
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{option} {directory}: {probe} is a file, not a directory; choose another {option}")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".gradscope-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {directory}: cannot create a file in {probe} ({exc.strerror or exc}); "
                         f"choose another {option}") from None
