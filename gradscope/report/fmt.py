"""Formatting shared by every renderer: numbers, labels, which blocks a long table shows.

Renderers format what the report holds. The one summary taken here is of a training report's series as it is
written (its median, its largest value, counts of its rows): a reader's glance at the rows the report keeps, not
a statistic of the run, which the monitor computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..records import TREND_RULE, VERDICTS, trend_cell

MAX_BLOCK_ROWS = 40  # text tables of longer models show evenly spaced blocks, the first and last always included


def num(x, spec: str = ".3g") -> str:
    """``1.23e-05``; ``-`` for a missing value (None or NaN), ``inf``/``-inf`` as such."""
    if x is None or isinstance(x, bool):
        return "-" if x is None else str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "-" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, int):
        return str(x)
    return format(x, spec)


def shown_depths(depth: int, max_rows: int = MAX_BLOCK_ROWS) -> list[int]:
    """Depths a text table shows: all of them, or ``max_rows`` evenly spaced ones (first and last included)."""
    if depth <= max_rows:
        return list(range(depth))
    step = (depth - 1) / (max_rows - 1)
    return sorted({round(i * step) for i in range(max_rows)})


TREND_HEADER = "trend toward input"
TREND_LEGEND = TREND_RULE  # the rule behind the trend column, for a line under each summary table


def summary_legend(report) -> str:
    """The line under a summary table: the trend rule, and for an encoder-decoder which stack each row is of."""
    judged = [f"{s['variant']} {s['first_block']} to {s['last_block']}" for s in report.summaries if s.get("stacks")]
    if not judged:
        return TREND_LEGEND
    return (f"{TREND_LEGEND}. The encoder and decoder are judged apart: each row's first/last and fit are of its "
            f"stack whose flow departs most from its output end ({', '.join(judged)})")


decay_text = trend_cell  # a table cell's words for the fit and shape: records.py words every profile, in one place


@dataclass
class FlowRow:
    """One row of a per-block table with a column per variant.

    ``cells[variant]`` is that variant's block row, or None (a blank cell); ``own_name[variant]`` is set where the
    variant's block is not the one the row is labelled with, so a renderer can name it beside the value.
    """

    depth: int
    block: str
    cells: dict[str, Optional[dict]]
    own_name: dict[str, str] = field(default_factory=dict)

    def text(self, variant: str, key: str, number: Callable, escape: Callable[[str], str] = str) -> str:
        """``variant``'s ``key`` as text (``number`` formats it), its own block name beside it where that
        differs from the row's; ``""`` for a blank cell."""
        cell = self.cells.get(variant)
        if cell is None:
            return ""
        value = number(cell.get(key))
        return f"{value} ({escape(self.own_name[variant])})" if variant in self.own_name else value


@dataclass
class FlowTable:
    """A per-block table's rows and how they were matched: ``name`` (rows are ``reference``'s blocks) or ``depth``."""

    matched_by: str
    reference: str
    rows: list[FlowRow]

    @property
    def note(self) -> str:
        """What a reader needs to read the table right: blank cells, or values named by their own block."""
        if any(r.own_name for r in self.rows):
            return ("the variants' blocks have different names: rows are depths, and a value from another block "
                    "than the row's has that block's name beside it")
        if any(c is None for r in self.rows for c in r.cells.values()):
            return f"a blank cell: that variant has no block of that name (depths are {self.reference}'s)"
        return ""


def _in_order_of(names: list[str], position: dict[str, int]) -> bool:
    """Whether every name is in ``position`` and they come in its order."""
    found = [position.get(n) for n in names]
    return None not in found and all(a < b for a, b in zip(found, found[1:]))  # type: ignore[operator]


def flow_table(per_variant: dict[str, list[dict]]) -> FlowTable:
    """Rows of a per-block table with a column per variant, so that a value is never shown against another block's name.

    Variants of one model (pretrained, scratch, a shallow copy that keeps some of the blocks) have blocks that
    are, in order, blocks of the variant with the most: the rows are that variant's blocks, matched by name, and
    a variant without a block of that name gets a blank cell. Otherwise (different models, as in a comparison)
    the rows are depths, and a cell whose block is not the row's carries its own block's name.
    """
    filled = [n for n, rows in per_variant.items() if rows]
    if not filled:
        return FlowTable("name", "", [])
    reference = max(filled, key=lambda n: len(per_variant[n]))  # the first of the longest
    position = {r["block"]: i for i, r in enumerate(per_variant[reference])}
    if all(_in_order_of([r["block"] for r in per_variant[n]], position) for n in filled):
        by_block = {n: {r["block"]: r for r in rows} for n, rows in per_variant.items()}
        return FlowTable("name", reference, [
            FlowRow(r["depth"], str(r["block"]), {n: by_block[n].get(r["block"]) for n in per_variant})
            for r in per_variant[reference]])
    rows = []
    for d in range(len(per_variant[reference])):
        cells = {n: (rows_of[d] if d < len(rows_of) else None) for n, rows_of in per_variant.items()}
        label = str(next(c["block"] for c in cells.values() if c is not None))
        own = {n: str(c["block"]) for n, c in cells.items() if c is not None and str(c["block"]) != label}
        rows.append(FlowRow(d, label, cells, own))
    return FlowTable("depth", reference, rows)


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def grouped_findings(report) -> list[tuple[tuple[str, str, str, str], list[str]]]:
    """Findings, most serious first, as ((severity, message, evidence, fix), variants): one that several
    variants share word for word is one entry (``fix`` is ``""`` where there is none)."""
    grouped: dict[tuple, list[str]] = {}
    for f in report.findings:
        grouped.setdefault((f["severity"], f["message"], f["evidence"], f.get("fix") or ""), []).append(f["variant"])
    return sorted(grouped.items(), key=lambda kv: SEVERITY_ORDER.get(kv[0][0], 3))


def title(report) -> str:
    """What the report is about, in one line: the model, or the reports a comparison combines."""
    meta = report.meta
    if meta.get("kind") == "comparison":
        return "comparison of " + ", ".join(str(i.get("label")) for i in meta.get("reports", []))
    return str(meta.get("model") or "model")


def adapter_line(meta: dict) -> Optional[str]:
    """``LORA adapter (SEQ_CLS), merged into its base model bert-base-uncased``, or None without an adapter."""
    adapter = meta.get("adapter")
    if not isinstance(adapter, dict):
        return None
    task = f" ({adapter['task_type']})" if adapter.get("task_type") else ""
    return f"{adapter.get('type') or 'PEFT'} adapter{task}, merged into its base model {adapter.get('base')}"


def measured_stage(meta: dict) -> Optional[str]:
    """Which gradient a training callback's report measured, in words (from ``clip_stage``); None without one.

    After the Trainer's clipping the global norm is at most ``max_grad_norm`` at every step, which reads as a
    flat, healthy run unless the report says so.
    """
    stage = meta.get("clip_stage")
    if stage == "after_clip":
        return (f"after the Trainer clipped to max_grad_norm {meta.get('max_grad_norm')}: the pre-clip norm is the "
                "Trainer's own grad_norm")
    if stage == "no_clip":
        return "without clipping (max_grad_norm 0): the global norm is the Trainer's own grad_norm"
    if stage == "pre_clip":
        return "before gradient clipping"
    return None


def clip_sentence(series: list[dict]) -> Optional[str]:
    """What clipping did in a training series, from its global rows; None where no step was clipped.

    ``Clipped at 12 of 12 recorded steps, to max_norm 1; the norm before clipping was above it at 3 of them;
    after clipping 0.4 at the last clipped step (grad_l2 is always before the clip).``
    """
    glob = sorted((r for r in series if r.get("block") is None and r.get("step") is not None), key=lambda r: r["step"])
    clipped = [r for r in glob if isinstance(r.get("clip_max_norm"), (int, float))
               and math.isfinite(r["clip_max_norm"])]
    if not clipped:
        return None
    levels = sorted({r["clip_max_norm"] for r in clipped})
    level = f"max_norm {levels[0]:g}" if len(levels) == 1 else f"max_norm {levels[0]:g} to {levels[-1]:g}"
    over = sum(1 for r in clipped if isinstance(r.get("grad_l2"), (int, float)) and r["grad_l2"] > r["clip_max_norm"])
    return (f"Clipped at {len(clipped)} of {len(glob)} recorded steps, to {level}; the norm before clipping was "
            f"above it at {over} of them; after clipping {num(clipped[-1].get('grad_l2_post_clip'))} at the last "
            "clipped step (grad_l2 is always before the clip)")


def series_columns(series: list[dict], columns) -> list[str]:
    """Which of ``columns`` the series' block rows hold a number in (a per-block value the monitor recorded)."""
    return [c for c in columns if any(r.get("block") is not None and isinstance(r.get(c), (int, float))
                                      and not isinstance(r.get(c), bool) for r in series)]


def steps_recorded(meta: dict) -> Optional[str]:
    """``12``, or ``12 (the last 3 kept)`` where ``keep_last`` dropped the older ones from the report."""
    recorded, kept = meta.get("steps_recorded"), meta.get("steps_kept")
    if recorded is None:
        return None
    return str(recorded) if kept in (None, recorded) else f"{recorded} (the last {kept} kept)"


def skipped_lines(meta: dict) -> list[str]:
    """One line per baseline that was asked for (or defaulted) but not run, with why."""
    return [f"{name} baseline skipped: {reason}" for name, reason in (meta.get("skipped") or {}).items()]


def run_facts(report) -> list[tuple[str, str]]:
    """(label, value) pairs of run metadata, in reading order; absent facts are left out."""
    meta = report.meta
    if meta.get("kind") == "comparison":
        return [("report " + str(i.get("label")), f"{i.get('model')} ({i.get('path')}, created {i.get('created')})")
                for i in meta.get("reports", [])] + [("created", str(meta.get("created")))] + [
                ("warning", str(w)) for w in meta.get("warnings") or []]
    versions = meta.get("versions") or {k: meta[k] for k in ("gradscope", "torch") if meta.get(k)}
    facts = [
        ("source", meta.get("source")),
        ("adapter", adapter_line(meta)),
        ("objective", meta.get("objective")),
        ("objective note", meta.get("objective_note")),
        ("inputs", meta.get("inputs")),
        ("device", meta.get("device")),
        ("dtype", meta.get("dtype")),
        ("grad_stats backend", meta.get("backend")),
        ("seed", meta.get("seed")),
        ("steps recorded", steps_recorded(meta)),
        ("gradients measured", measured_stage(meta)),
        ("stopped by", meta.get("stopped_by")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
        ("created", meta.get("created")),
        ("command", meta.get("command")),
    ]
    return [(k, str(v)) for k, v in facts if v not in (None, "", [])]


# --- a training monitor's report, read for a renderer ------------------------------------------------------
# What these return is read from the report's series and findings as they are: the only arithmetic is a median,
# a maximum and counts over the series' own rows. The words of every judgment are the findings' own.

# The per-block values a training series can hold, in the order a table shows them, with their column headers.
TRAINING_BLOCK_COLUMNS = {"grad_l2": "grad L2", "weight_l2": "weight L2", "update_ratio": "update ratio",
                          "act_grad_l2": "dL/dh L2"}
SPIKE_KIND, NONFINITE_KIND, CHANGE_KIND = "grad-spike", "non-finite", "verdict-change"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def global_rows(series: list[dict]) -> list[dict]:
    """The series' global rows (one per recorded step), in step order."""
    return sorted((r for r in series if r.get("block") is None and isinstance(r.get("step"), int)),
                  key=lambda r: r["step"])


@dataclass(frozen=True)
class GlobalNorms:
    """The global gradient norm over a training series: its first, median, largest and last value, with steps.

    ``first`` and ``last`` are None where that step's norm is undefined (a NaN or Inf in a gradient);
    ``median`` and ``largest`` are over the ``finite`` steps, None where there is none.
    """

    steps: int
    finite: int
    first_step: int
    first: Optional[float]
    median: Optional[float]
    largest_step: Optional[int]
    largest: Optional[float]
    last_step: int
    last: Optional[float]


def global_norms(series: list[dict]) -> Optional[GlobalNorms]:
    """:class:`GlobalNorms` of the series' global ``grad_l2`` (the norm before any clip the monitor saw); None
    without a global row."""
    rows = global_rows(series)
    if not rows:
        return None
    finite = [r for r in rows if _finite(r.get("grad_l2"))]
    values = sorted(r["grad_l2"] for r in finite)
    median = (values[(len(values) - 1) // 2] + values[len(values) // 2]) / 2 if values else None
    top = max(finite, key=lambda r: r["grad_l2"]) if finite else None  # the earliest of equal maxima
    value = lambda r: r["grad_l2"] if _finite(r.get("grad_l2")) else None  # noqa: E731
    return GlobalNorms(len(rows), len(finite), rows[0]["step"], value(rows[0]), median,
                       top["step"] if top else None, top["grad_l2"] if top else None, rows[-1]["step"], value(rows[-1]))


def global_norm_label(meta: dict) -> str:
    """Which global norm a training report's series holds, in two or three words: before clipping, unless a
    training callback measured it after the Trainer's clip or without one (:func:`measured_stage` says more)."""
    return {"after_clip": "after the Trainer's clip", "no_clip": "without clipping"}.get(meta.get("clip_stage"),
                                                                                          "before clipping")


def global_norm_sentence(series: list[dict], meta: dict) -> Optional[str]:
    """``global gradient L2 norm before clipping, over 30 recorded steps: first 1.23 (step 1), median 0.95,
    max 27.6 (step 21), last 2.04 (step 30)``; None without a global row."""
    g = global_norms(series)
    if g is None:
        return None
    shown = lambda v: "non-finite" if v is None else num(v)  # noqa: E731
    over = f"{g.steps} recorded steps" + (f" ({g.steps - g.finite} non-finite, left out of the median and max)"
                                          if g.finite < g.steps else "")
    extremes = (f", median {num(g.median)}, max {num(g.largest)} (step {g.largest_step})" if g.finite else "")
    return (f"global gradient L2 norm {global_norm_label(meta)}, over {over}: first {shown(g.first)} "
            f"(step {g.first_step}){extremes}, last {shown(g.last)} (step {g.last_step})")


@dataclass(frozen=True)
class NonfiniteStep:
    """A recorded step with NaN or Inf in a gradient: how many values, and the blocks holding them in depth order
    (``of`` blocks in all; ``outside``: values in parameters outside every block)."""

    step: int
    values: int
    blocks: list[str]
    of: int
    outside: int

    @property
    def first_block(self) -> str:
        """The first block holding one, in depth order; ``every block`` where all do (then the step cannot tell
        where they began: clipping with a non-finite total spreads them to every gradient)."""
        if not self.blocks:
            return "-"
        return "every block" if len(self.blocks) == self.of > 1 else self.blocks[0]


def nonfinite_steps(series: list[dict]) -> list[NonfiniteStep]:
    """The steps of a training series whose global row counts a non-finite gradient value, in step order."""
    by_step: dict[int, list[dict]] = {}
    for r in series:
        if r.get("block") is not None:
            by_step.setdefault(r.get("step"), []).append(r)
    out = []
    for g in global_rows(series):
        count = g.get("grad_nonfinite") or 0
        if not count:
            continue
        rows = sorted(by_step.get(g["step"], []), key=lambda r: (r.get("depth") is None, r.get("depth") or 0))
        hit = [r for r in rows if r.get("grad_nonfinite")]
        outside = count - sum(int(r["grad_nonfinite"]) for r in hit)
        out.append(NonfiniteStep(g["step"], int(count), [str(r["block"]) for r in hit], len(rows), max(outside, 0)))
    return out


def last_block_values(series: list[dict]) -> tuple[Optional[int], list[dict], dict[str, int]]:
    """The per-block table of a training series' last step: (that step, one row per block in depth order with
    ``depth``, ``block`` and each recorded value of :data:`TRAINING_BLOCK_COLUMNS`, {column: the step it is of}).

    A value recorded every N steps (dL/dh, update ratios) is taken from the last step that holds it, and its
    step is then not the table's; a value recorded at no step is no column (not a column of blanks).
    """
    rows = [r for r in series if r.get("block") is not None and isinstance(r.get("step"), int)]
    if not rows:
        return None, [], {}
    last = max(r["step"] for r in rows)
    table = {(r.get("depth"), str(r["block"])): {"depth": r.get("depth"), "block": str(r["block"])}
             for r in rows if r["step"] == last}
    taken: dict[str, int] = {}
    for column in TRAINING_BLOCK_COLUMNS:
        steps = [r["step"] for r in rows if _finite(r.get(column))]
        if column != "grad_l2" and not steps:
            continue
        at = last if column == "grad_l2" or last in steps else max(steps)
        taken[column] = at
        for r in rows:
            key = (r.get("depth"), str(r["block"]))
            if r["step"] == at and key in table:
                value = r.get(column)
                table[key][column] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    ordered = sorted(table.values(), key=lambda r: (r["depth"] is None, r["depth"] or 0))
    return last, ordered, taken


def training_findings(report) -> dict[str, list[dict]]:
    """A training report's findings by what they are about: ``spikes`` (of the global norm), ``nonfinite``,
    ``flow`` (the verdicts over windows of steps and their changes, in report order) and ``other``."""
    groups: dict[str, list[dict]] = {"spikes": [], "nonfinite": [], "flow": [], "other": []}
    for f in report.findings:
        kind = f.get("kind")
        group = ("spikes" if kind == SPIKE_KIND else "nonfinite" if kind == NONFINITE_KIND
                 else "flow" if kind == CHANGE_KIND or kind in VERDICTS else "other")
        groups[group].append(f)
    return groups
