"""What a report holds: :class:`Report`, the version of its schema, and its JSON-ready form.

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
spelling for them. :meth:`Report.from_dict` checks the structure
(:mod:`.validate`), so data that is not a report is refused in one sentence
rather than failing somewhere downstream.

:meth:`Report.save` and :meth:`Report.load` are the report's way to disk; the
work is :mod:`.storage`'s, which never needs this class: renderers and storage
take a report as an argument, so this module is the only one that imports them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Iterable, Optional

from ..errors import UsageError
from . import storage, tables
from .formats import DEFAULT_FORMATS
from .validate import describe_json, schema_version, structure_problem

SCHEMA = "gradscope.report/1"
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

    schema: ClassVar[str] = SCHEMA  # what the report's JSON starts with; renderers name it in their footers

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
        return {"schema": self.schema, **{k: v for k, v in data.items() if k not in OPTIONAL_SECTIONS or v}}

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
        return tables.to_pandas(self, table)

    @classmethod
    def from_dict(cls, data, *, source: str = "the data") -> "Report":
        """The Report in ``data`` (parsed ``report.json``); UsageError naming ``source`` unless it is one.

        Only ``gradscope.report/1`` is read: a newer version is refused with both versions named (an older
        gradscope never misreads a newer report), anything else with what is missing or wrong.
        """
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
        data, read = storage.read_report_json(path)
        return cls.from_dict(data, source=str(read))

    def save(self, directory, formats: Iterable[str] | str = DEFAULT_FORMATS, *, force: bool = False) -> list[Path]:
        """Write the report into ``directory`` in each format (default json, html, md); return the paths written.

        A directory holds one report: without ``force``, UsageError if it already holds any file a report
        is made of (:func:`~.storage.report_files`); with ``force``, the previous report's files that this
        one does not rewrite are removed, so no stale page or table is left beside the new ``report.json``.
        Every file is rendered in memory, written to a temporary name, and renamed only when all of them
        were written; a failure or an interruption at any point removes what this call wrote and restores
        what it replaced or removed.
        """
        return storage.save_report(self, directory, formats, force=force)
