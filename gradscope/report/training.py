"""The report's ``training`` section (``gradscope demo --train``) as words and one table, for every renderer.

The terminal, Markdown and HTML views show the same table beside the verdicts: one row per variant and
optimizer, with the variant's verdict and first/last ratio from its summary, the loss on the evaluation batch
before and after training, their ratio, and how far the first and the last block moved. It is built here, once;
each renderer only escapes and lays it out. Nothing is recomputed: every number is the section's or a summary's.
"""

from __future__ import annotations

from typing import Optional

from .fmt import num

HEADER = ["variant", "verdict", "optimizer", "loss before", "loss after", "after/before", "first moved",
          "last moved"]
VARIANT, VERDICT = 0, 1  # the columns a renderer marks up (the variant's swatch, the verdict's badge)
NUMBER_COLUMNS = frozenset({3, 4, 5, 6, 7})  # right-aligned
MOVED_LEGEND = ("first (last) moved: how far the first (last) block's parameters moved in training, "
                "||W after - W before|| / ||W before||; 0: not one weight changed")


def optimizer_text(optimizer: dict) -> str:
    """``SGD (lr 0.03, momentum 0.9)``: an optimizer of the section with its settings."""
    momentum = f", momentum {optimizer['momentum']:g}" if optimizer.get("momentum") is not None else ""
    return f"{optimizer.get('label', optimizer['name'])} (lr {optimizer['lr']:g}{momentum})"


def optimizer_texts(training: dict) -> dict[str, str]:
    """Each optimizer's key (``sgd``) -> :func:`optimizer_text`."""
    return {o["name"]: optimizer_text(o) for o in training.get("optimizers") or []}


def training_rows(report) -> list[list[str]]:
    """The table's rows (cells as text, in :data:`HEADER` order), variants in report order, optimizers in run order."""
    labels = {o["name"]: o.get("label", o["name"]) for o in report.training.get("optimizers") or []}
    verdicts = {s["variant"]: s["verdict"] for s in report.summaries}
    return [[run["variant"], verdicts.get(run["variant"], "-"), labels.get(run["optimizer"], run["optimizer"]),
             num(run.get("initial_loss")), num(run.get("final_loss")), num(run.get("final_to_initial")),
             num(run.get("first_block_moved"), ".2g"), num(run.get("last_block_moved"), ".2g")]
            for run in report.training.get("runs") or []]


def training_note(report) -> Optional[str]:
    """What was trained, how, on what, and how long it took; None when the report has no training."""
    training = report.training
    if not training:
        return None
    optimizers = " and with ".join(optimizer_texts(training).values())
    return (f"Each variant trained from the weights measured above for {training.get('steps')} steps of "
            f"{training.get('batch_size')} samples, with {optimizers}, on a {training.get('task')} "
            f"({training.get('loss_function')}). Loss before and after: on a fixed batch of "
            f"{training.get('eval_samples')} samples of the task, where a network that ignores its input reaches "
            f"{num(training.get('label_entropy'))} at best (the entropy of the class frequencies). {MOVED_LEGEND}. "
            f"Seed {training.get('seed')}; {num(training.get('seconds'), '.1f')} s in all.")
