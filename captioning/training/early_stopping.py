"""Early stopping, for cross-entropy and SCST epochs alike: the best epoch by a monitored metric,
and whether `patience` epochs have passed without a better one.

One rule, written once: an epoch is better when its monitor is strictly better than the best
so far (by `config.metrics.mode_of`: lower losses, higher scores), so on a tie the earlier
epoch stays best. A NaN (or missing) monitor is never better, and any number beats a NaN
best. The first epoch is always best, so a run always keeps a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from captioning.config.metrics import mode_of


class BestEpoch:
    """The best epoch so far by `monitor`, and the epochs waited since it.

    `restart` starts patience afresh (the best stays): at the start of a run's SCST epochs,
    and when a run resumes.
    """

    def __init__(self, monitor: str, patience: int, history: Iterable[dict[str, float]] = ()):
        self.monitor, self.patience, self.mode = monitor, patience, mode_of(monitor)
        self.best: dict[str, float] | None = None
        self.waited = 0  # epochs since the best one (or since `restart`)
        for metrics in history:
            self.update(metrics)

    def is_better(self, metrics: dict[str, float]) -> bool:
        """Whether the epoch of `metrics` would be the new best."""
        if self.best is None:
            return True
        value = float(metrics.get(self.monitor, math.nan))
        best = float(self.best.get(self.monitor, math.nan))
        if math.isnan(value):
            return False
        if math.isnan(best):
            return True
        return value < best if self.mode == "min" else value > best

    def update(self, metrics: dict[str, float]) -> bool:
        """Take the next epoch's metrics; True if it is the new best."""
        better = self.is_better(metrics)
        if better:
            self.best, self.waited = metrics, 0
        else:
            self.waited += 1
        return better

    def restart(self) -> None:
        self.waited = 0

    @property
    def patience_ran_out(self) -> bool:
        return self.waited >= self.patience
