"""A monitored run as a :class:`~gradscope.report.Report`: the time series (a long run's thinned, its incidents
kept), the last step's block and parameter tables, and the findings (non-finite values, spikes, the flow over
windows of steps)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .. import __version__
from ..analysis import training_flow_findings
from ..errors import UsageError
from ..report import Report
from ..variants import describe_architecture
from .findings import nonfinite_findings, spike_findings
from .history import MonitorHistory

MAX_SERIES_STEPS = 2000  # steps a monitor report's time series keeps by default


def check_max_series_steps(max_series_steps: Optional[int]) -> None:
    if max_series_steps is not None and (not isinstance(max_series_steps, int) or max_series_steps < 1):
        raise UsageError(f"`max_series_steps` must be None or a positive integer; got {max_series_steps!r}")


def series_positions(history: MonitorHistory, limit: Optional[int]) -> torch.Tensor:
    """Positions of the recorded steps a report's series keeps: all of them up to ``limit`` (None: no
    limit); beyond it evenly spaced ones, plus the last, the largest global norm and every step with
    non-finite values (incidents are what a reader looks for)."""
    count = len(history)
    if limit is None or count <= limit:
        return torch.arange(count)
    stride = -(-count // limit)  # ceil: at most `limit` evenly spaced steps
    glob = history.global_l2()
    incidents = (history.nonfinite().sum(-1) > 0).nonzero().flatten()
    largest = torch.nan_to_num(glob, nan=-1.0).argmax().reshape(1)
    return torch.cat([torch.arange(0, count, stride), incidents, largest, torch.tensor([count - 1])]).unique()


def monitor_report(history: MonitorHistory, model: nn.Module, *, steps_recorded: int, every: int, mode: str,
                   frozen_params: int, skipped_steps: Sequence[int], meta: Optional[dict],
                   max_series_steps: Optional[int]) -> Report:
    """The report of ``history`` (every step kept) of a run of ``model``: ``steps_recorded`` steps in all,
    one of ``every`` sampled, in distributed ``mode``, with ``frozen_params`` frozen parameters left out and
    the optimizer steps ``on_nonfinite="skip"`` skipped; ``meta`` is added to the report's. See
    :meth:`GradientMonitor.report <gradscope.monitor.GradientMonitor.report>`."""
    last = history.select(slice(-1, None))
    kept = series_positions(history, max_series_steps)
    rows = history.select(kept).rows()
    step = int(last.steps[0])
    param_l2 = last.param_l2()[0].tolist()
    nonfinite = last.nonfinite()[0].tolist()
    weight_l2 = last.weight_sumsq[0].sqrt().tolist()  # NaN: not recorded (weight_norms off)
    params = [{"name": n, "depth": int(last.param_block[i]) if last.param_block[i] >= 0 else None,
               "variant": "training", "step": step,
               "block": last.blocks[last.param_block[i]] if last.param_block[i] >= 0 else None,
               "has_grad": bool(last.present[0, i]), "grad_l2": param_l2[i], "grad_nonfinite": nonfinite[i],
               **({} if math.isnan(weight_l2[i]) else {"weight_l2": weight_l2[i]})}
              for i, n in enumerate(history.param_names)]
    blocks = [{**{k: v for k, v in r.items() if k != "step"}, "variant": "training", "step": step}
              for r in rows if r["step"] == step and r["block"] is not None]
    info = {"kind": "monitor", "gradscope": __version__, "torch": torch.__version__,
            "model": type(model).__name__, "steps_recorded": steps_recorded,
            "steps_kept": len(history), "series_steps": len(kept),
            "every": every, "distributed": mode, "block_order":
            "execution" if history.order_known else "registration",
            "frozen_params": frozen_params, **(meta or {})}
    return Report(meta=info, variants=[{"name": "training", "description": "gradients during training"}],
                  findings=nonfinite_findings(history, steps_recorded, skipped_steps)
                  + spike_findings(history) + training_flow_findings(rows, describe_architecture(model)),
                  blocks=blocks, params=params,
                  series=rows)
