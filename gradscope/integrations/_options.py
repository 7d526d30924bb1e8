"""What the framework callbacks share: which gradients to monitor and where the report goes."""

from __future__ import annotations

from torch import nn

from ..monitor import GradientMonitor, MonitorConfig

# Steps a callback keeps on the host when it writes no report: it only logs the latest.
CALLBACK_KEEP_LAST = 1024


class MonitorCallbackOptions:
    """The options of a training-framework callback, and the monitor it makes from them.

    ``options`` are :class:`~gradscope.GradientMonitor`'s (``every``, ``params``,
    ``on_nonfinite``, ``keep_last``, ...); ``report_dir`` writes a report with
    every recorded step when training ends; ``prefix`` starts every log key.
    Without ``report_dir`` only the last ``CALLBACK_KEEP_LAST`` steps stay on
    the host, unless ``keep_last`` says otherwise.
    """

    def __init__(self, *, report_dir=None, prefix: str = "gradscope", **options):
        if report_dir is None:
            options.setdefault("keep_last", CALLBACK_KEEP_LAST)
        self.config = MonitorConfig.with_options(None, options)  # bad options fail here, not at train time
        self.report_dir = report_dir
        self.prefix = prefix
        self.monitor: GradientMonitor | None = None

    def make_monitor(self, model: nn.Module) -> GradientMonitor:
        return GradientMonitor(model, config=self.config)
