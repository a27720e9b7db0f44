"""How far a score moves between seeds: the mean of a few runs' scores, their standard
deviation and a 95% interval of the mean (Student's t, scipy), for sweep.confirm's ranking
(tune/confirm.py) and promote's (tracking/model_registry.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float
    std: float  # the sample standard deviation (n - 1); 0 for one value
    ci95: float  # half the width of the 95% interval of the mean; inf for one value

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "low": self.low, "high": self.high}


def spread(values: Sequence[float]) -> Spread:
    """The mean of `values` (one or more finite numbers) and how far it can be trusted."""
    if not values:
        raise ValueError("no values to take the spread of")
    n, mean = len(values), math.fsum(values) / len(values)
    if n == 1:
        return Spread(1, mean, 0.0, math.inf)
    from scipy import stats

    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Spread(n, mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n))
