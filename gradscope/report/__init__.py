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

JSON is the source of truth. Non-finite floats (NaN, +-Inf) are written as
``null``: JSON has no spelling for them. Writing is atomic (a temporary file,
then ``os.replace``) and refuses to overwrite an existing report unless
``force=True``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

from ..errors import GradscopeError, UsageError

SCHEMA = "gradscope.report/1"
JSON_NAME = "report.json"


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
        """The summary of one variant by name."""
        for s in self.summaries:
            if s["variant"] == variant:
                return s
        raise KeyError(f"no variant {variant!r} in this report; it has {', '.join(self.variant_names)}")

    def block_rows(self, variant: str) -> list[dict]:
        """The per-block rows of one variant, in depth order."""
        return [b for b in self.blocks if b["variant"] == variant]

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.variants]

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        schema = data.get("schema")
        if schema != SCHEMA:
            raise GradscopeError(
                f"report schema {schema!r} is not {SCHEMA!r}; this gradscope reads {SCHEMA} "
                "(upgrade gradscope to read newer reports)"
            )
        return cls(**{f.name: data.get(f.name, f.default_factory()) for f in fields(cls)})  # type: ignore[misc]

    @classmethod
    def load(cls, path) -> "Report":
        """Read a report written by :meth:`save` (a ``report.json`` file, or the directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / JSON_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise GradscopeError(f"cannot read report {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise GradscopeError(f"{path} is not a JSON report: {exc}") from None
        return cls.from_dict(data)

    def save(self, directory, formats: Iterable[str] = ("json",), *, force: bool = False) -> list[Path]:
        """Write the report into ``directory`` in each format; return the paths written.

        All files are written to temporary names first and renamed only when
        every one succeeded, so a failure leaves nothing half-written.
        """
        formats = check_formats(formats)
        out = Path(directory)
        check_writable(out)
        rendered = {name: content for fmt in formats for name, content in RENDERERS[fmt](self).items()}
        existing = [name for name in rendered if (out / name).exists()]
        if existing and not force:
            raise GradscopeError(
                f"{out / existing[0]} already exists; pass --force (force=True) to overwrite it, "
                "or choose another --out"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GradscopeError(f"cannot create the output directory {out}: {exc.strerror or exc}") from None
        temps: list[tuple[str, Path]] = []
        try:
            for name, content in rendered.items():
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
                temps.append((name, Path(tmp)))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
            for name, tmp in temps:
                os.replace(tmp, out / name)
        except OSError as exc:
            raise GradscopeError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
        finally:
            for _, tmp in temps:
                tmp.unlink(missing_ok=True)
        return [out / name for name in rendered]


def _render_json(report: Report) -> dict[str, bytes]:
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False)
    return {JSON_NAME: (text + "\n").encode("utf-8")}


# format -> renderer returning {file name: bytes}. The report issue adds csv, md, html and png here.
RENDERERS: dict[str, Callable[[Report], dict[str, bytes]]] = {"json": _render_json}
PLANNED_FORMATS = ("csv", "md", "html", "png")


def check_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Parse ``"json,csv"`` or a list of names; UsageError for unknown or not yet implemented formats."""
    if isinstance(formats, str):
        formats = formats.split(",")
    names = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    if not names:
        raise UsageError("--format: give at least one format, e.g. --format json")
    for name in names:
        if name in RENDERERS:
            continue
        if name in PLANNED_FORMATS:
            raise UsageError(f"--format {name}: not implemented yet in this version; available: {', '.join(RENDERERS)}")
        raise UsageError(f"--format {name}: unknown format; choose from {', '.join(RENDERERS)}")
    return names


def check_output(directory, formats: Iterable[str] | str, *, force: bool = False) -> tuple[str, ...]:
    """Everything :meth:`Report.save` would refuse, checked before an analysis runs; returns the formats."""
    names = check_formats(formats)
    check_writable(Path(directory))
    report_file = Path(directory) / JSON_NAME
    if report_file.exists() and not force:
        raise UsageError(f"{report_file} already exists; pass --force to overwrite it, or choose another --out")
    return names


def check_writable(directory: Path) -> None:
    """UsageError unless ``directory`` is, or can be created as, a writable directory (checked before any work)."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--out {directory}: {probe} is a file, not a directory; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {directory}: {probe} is not writable; choose another --out")
