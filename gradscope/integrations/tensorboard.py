"""TensorBoard without a trainer: ``monitor.log_to(SummaryWriter(...))``.

Scalars, written at each flush for every recorded step:

- ``{prefix}/grad_norm/global``: L2 norm of all monitored gradients (pre-clip);
- ``{prefix}/grad_norm_post_clip/global``: on steps recorded by ``monitor.clip_grad_norm_``;
- ``{prefix}/grad_norm/{block}``: per block (execution order; blocks as :mod:`gradscope.blocks` defines them);
- ``{prefix}/nonfinite/global``: non-finite gradient values.

Histograms (on request): ``{prefix}/grad/{block}`` at each recorded step.
Any object with ``add_scalar`` (and ``add_histogram``) works as the writer.
"""

from __future__ import annotations

import math

import torch


class TensorBoardSink:
    """Writes a monitor's new steps to a ``SummaryWriter``-like object."""

    def __init__(self, writer, prefix: str = "gradscope"):
        self.writer = writer
        self.prefix = prefix

    def __call__(self, history) -> None:
        block_l2 = history.block_l2().tolist()
        glob = history.global_l2().tolist()
        post = history.post_clip_l2.tolist()
        nonfinite = history.nonfinite().sum(-1).tolist()
        p = self.prefix
        for t, step in enumerate(history.steps.tolist()):
            self.writer.add_scalar(f"{p}/grad_norm/global", glob[t], step)
            if not math.isnan(post[t]):
                self.writer.add_scalar(f"{p}/grad_norm_post_clip/global", post[t], step)
            self.writer.add_scalar(f"{p}/nonfinite/global", nonfinite[t], step)
            for block, value in zip(history.blocks, block_l2[t]):
                if not math.isnan(value):  # a block without gradients has no norm, not a zero one
                    self.writer.add_scalar(f"{p}/grad_norm/{block}", value, step)

    def write_histograms(self, monitor, step: int) -> None:
        """One histogram per block of the current gradients (copies them to the host)."""
        for block, grads in monitor.block_gradients().items():
            if grads:
                values = torch.cat([g.detach().reshape(-1).float() for g in grads])
                self.writer.add_histogram(f"{self.prefix}/grad/{block}", values[torch.isfinite(values)].cpu(), step)
