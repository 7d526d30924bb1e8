"""``gradscope compare``: several saved reports side by side, as one :class:`~gradscope.report.Report`.

The same model under different conditions (dtype, seed, a fix), or different
models. The first report is the reference. Each variant of a later report is
compared with the reference's variant of the same name (or, when the two
reports share no variant name, with the reference's variant at the same
position), and the pair's blocks are matched by name (or, when the models
share no block name, by depth). A later report of another model, or with
other block names, is still compared, with a one-line warning in
``meta["warnings"]`` saying how. The result is an ordinary Report whose
variants are named ``<label>/<variant>``, where a label names the report (its
directory, or its file name without ``.json``), whose ``comparisons`` hold
the per-block ratios (later / reference) and whose summaries hold each
verdict, so every renderer shows the overlaid flow plot, the ratios and which
verdicts changed. Training time series are not carried over.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Sequence

from . import __version__
from .analysis import compare
from .errors import UsageError
from .report import Report


def report_label(path) -> str:
    """``runs/fp16`` or ``runs/fp16/report.json`` -> ``fp16``; ``b.json`` -> ``b``."""
    path = Path(path)
    if path.is_dir() or path.name == "report.json":
        return (path if path.is_dir() else path.parent).resolve().name or str(path)
    return path.name.removesuffix(".json")


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _renamed(rows: list[dict], names: dict[str, str]) -> list[dict]:
    return [{**r, "variant": names[r["variant"]]} for r in rows if r.get("variant") in names]


def _pairs(reference, other) -> list[tuple[str, str]]:
    """(other's variant, reference's variant) pairs: same name, else same position."""
    ref_names, other_names = reference.variant_names, other.variant_names
    shared = [n for n in other_names if n in ref_names]
    if shared:
        return [(n, n) for n in shared]
    return list(zip(other_names, ref_names))


def _norms(rows: list[dict]) -> list[dict]:
    """Rows with both norms as floats: a saved report writes NaN as null, a monitor's rows have no dL/dh."""
    def value(v):
        return math.nan if v is None else v

    return [{**r, "grad_l2": value(r.get("grad_l2")), "act_grad_l2": value(r.get("act_grad_l2"))} for r in rows]


def _compare_blocks(a: str, b: str, blocks_a: list[dict], blocks_b: list[dict]) -> dict:
    """Per-block ratios a / b, matched by block name, or by depth when the names have nothing in common."""
    blocks_a, blocks_b = _norms(blocks_a), _norms(blocks_b)
    if {r["block"] for r in blocks_a} & {r["block"] for r in blocks_b}:
        return {**compare(a, b, blocks_a, blocks_b), "matched_by": "block"}
    by_depth = {r["depth"]: r["block"] for r in blocks_a}
    aligned = [{**r, "block": by_depth[r["depth"]]} for r in blocks_b if r["depth"] in by_depth]
    return {**compare(a, b, blocks_a, aligned), "matched_by": "depth"}


def _model(report) -> tuple:
    return report.meta.get("model"), report.meta.get("source")


def _block_names(report, variant: str) -> list:
    return [r["block"] for r in report.block_rows(variant)]


def _matching_warning(ref_label: str, reference, label: str, report, pairs: list[tuple[str, str]],
                     comparisons: list[dict]) -> str:
    """One line when ``report`` is not simply the reference's model under other conditions, else "".

    Different models (meta model or source), or blocks of other names, are still compared, but by rules a
    reader should know: variants paired in order when no names are shared, blocks by depth when no block
    names are shared (by name, only the shared ones, otherwise).
    """
    other_names = any(_block_names(report, mine) != _block_names(reference, theirs) for mine, theirs in pairs)
    by_position = bool(pairs) and not any(mine == theirs for mine, theirs in pairs)
    same_model = _model(report) == _model(reference)
    if same_model and not other_names and not by_position:
        return ""
    if not same_model:
        subject = (f"{label} and {ref_label} are different models "
                   f"({report.meta.get('model')!s}; {reference.meta.get('model')!s})")
    elif other_names:
        subject = f"{label} and {ref_label} have different blocks"
    else:
        subject = f"{label} and {ref_label}"
    how = []
    if by_position:
        how.append("variants are paired in order, having no names in common")
    if any(c.get("matched_by") == "depth" for c in comparisons):
        how.append("blocks are matched by depth (position from the input), not by name")
    elif other_names:
        how.append("blocks are matched by name, only those both have")
    else:
        how.append("blocks are matched by name")
    return f"{subject}: {'; '.join(how)}"


def _kind(meta: dict) -> str:
    """``training`` for a monitor's report or a comparison of only those, else ``analysis``."""
    if meta.get("kind") == "comparison":
        inner = {_kind(r.get("meta") or {}) for r in meta.get("reports") or []}
        return "training" if inner == {"training"} else "analysis"
    return "training" if meta.get("kind") == "monitor" else "analysis"


def compare_reports(paths: Sequence, labels: Sequence[str] = ()):
    """Load the reports at ``paths`` and combine them into one comparison Report.

    >>> combined = compare_reports(["runs/fp32", "runs/fp16"])  # doctest: +SKIP
    >>> [(c["a"], c["b"]) for c in combined.comparisons]  # doctest: +SKIP
    [('fp16/pretrained', 'fp32/pretrained'), ...]
    """
    if len(paths) < 2:
        raise UsageError("compare: give at least two reports (report.json files or the directories holding them)")
    reports = [Report.load(p) for p in paths]
    for path, report in zip(paths, reports):
        if not report.variants:
            raise UsageError(f"compare: {os.fspath(path)} holds no variants: nothing to compare; give reports "
                             "written by analyze, demo or a training monitor")
    kinds = [_kind(r.meta) for r in reports]
    if len(set(kinds)) > 1:  # per-step parameter gradients of a run beside one pass's dL/dh: no common measure
        i = kinds.index("training")
        j = kinds.index("analysis")
        raise UsageError(f"compare: {os.fspath(paths[i])} is a training run's report and {os.fspath(paths[j])} "
                         "an analysis; compare training runs with training runs, analyses with analyses")
    labels = _unique(list(labels) if labels else [report_label(p) for p in paths])
    if len(labels) != len(reports):
        raise UsageError(f"compare: {len(labels)} label{'s' if len(labels) != 1 else ''} for {len(reports)} reports")

    combined = Report()
    renames = []
    for label, report in zip(labels, reports):
        names = {n: f"{label}/{n}" for n in report.variant_names}
        renames.append(names)
        combined.variants += [{**v, "name": names[v["name"]], "base": names.get(v.get("base")), "report": label}
                              for v in report.variants]
        combined.summaries += _renamed(report.summaries, names)
        combined.findings += _renamed(report.findings, names)
        combined.blocks += _renamed(report.blocks, names)
        combined.params += _renamed(report.params, names)

    reference, warnings = reports[0], []
    for label, report, names in zip(labels[1:], reports[1:], renames[1:]):
        comparisons, pairs = [], _pairs(reference, report)
        for mine, theirs in pairs:
            a, b = names[mine], renames[0][theirs]
            comparisons.append(_compare_blocks(a, b, combined.block_rows(a), combined.block_rows(b)))
        combined.comparisons += comparisons
        warning = _matching_warning(labels[0], reference, label, report, pairs, comparisons)
        if warning:
            warnings.append(warning)

    combined.meta = {
        "kind": "comparison",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"gradscope": __version__},
        "reports": [{"label": label, "path": os.fspath(path), "model": r.meta.get("model"),
                    "created": r.meta.get("created"), "meta": r.meta}
                   for label, path, r in zip(labels, paths, reports)],
        "warnings": warnings,
    }
    return combined
