"""The `sweep` section of an experiment: how many trials, what ranks them (one metric, or
several objectives traded against each other), ASHA's rungs, resources, where results go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import Field, StrictInt, field_validator, model_validator

from captioning.config.limits import MAX_TRIALS, TRIALS_WHY
from captioning.config.metrics import Mode, ObjectiveMetric, RankingMetric, mode_of
from captioning.config.section import KeyProblem, Section, at_most
from captioning.config.shipped import builtin_path

# Named here, built in tune/strategy.py (which imports Ray; the config must not).
SEARCHERS = ("tpe", "random", "nsga2")
SCHEDULERS = ("asha", "hyperband", "fifo", "pbt", "pb2")
# Population Based Training and its bandit variant: they change a running trial's draw.
POPULATION_SCHEDULERS = ("pbt", "pb2")
# What Population Based Training may change in a running trial: keys that leave the model's
# architecture as it is (training/perturb.py applies them to a trial it continues). PBT
# perturbs those of them the search space draws without a `when` condition; PB2 those of
# them with numeric bounds (not a `choice`).
PERTURBABLE = ("train.learning_rate", "train.label_smoothing", "train.batch_size",
               "model.dropout")
MODELLING_SEARCHERS = ("tpe", "nsga2")
UNFIT_SEARCHERS = {
    "cmaes": "CMA-ES samples a fixed, continuous space, so categorical and conditional keys "
             "would be drawn at random",
    "qmc": "QMC samples a fixed, continuous space, so categorical and conditional keys would "
           "be drawn at random",
    "gp": "the Gaussian-process sampler takes no categorical or conditional keys",
}


class ResourcesConfig(Section):
    cpu: Annotated[float, Field(gt=0), at_most(1024, "CPUs per trial")] = 1.0
    # Fractions share a card between trials (0.5 = two trials per GPU); TensorFlow's memory
    # growth is switched on in every trial so they can.
    gpu: Annotated[float, Field(ge=0), at_most(64, "GPUs per trial")] = 0.0


class PbtConfig(Section):
    """Population Based Training (sweep.scheduler: pbt, Ray Tune's PopulationBasedTraining)
    and Population Based Bandits (pb2, Ray Tune's PB2: the new values are chosen by a
    Gaussian-process bandit within the bounds, not by perturbing; resample_probability is
    PBT's only)."""
    # Every `interval` epochs, a trial in the bottom `quantile` continues from the checkpoint
    # of one in the top quantile, with its hyperparameters perturbed (times 0.8 or 1.2, or a
    # neighbouring choice; redrawn from the space with `resample_probability`), kept inside
    # the space's bounds.
    interval: Annotated[StrictInt, Field(ge=1), at_most(10_000, "epochs")] = 2
    quantile: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    # Synchronous PBT: trials wait, paused, until all have reached the interval, then the
    # bottom ones exploit (same choices every run); else each trial as it gets there.
    synch: bool = False


class ConfirmConfig(Section):
    """sweep.confirm: when the search ends, train its `top` best distinct configurations again
    with `seeds` new train.seeds each (train.seed + 1, ..., + seeds), and rank them by the mean
    of those runs' kept validation scores: one validation number on a few hundred photos moves
    by a few hundredths of CIDEr-D between seeds, so the search's best trial is partly luck
    (tune/confirm.py)."""
    top: Annotated[StrictInt, Field(ge=1), at_most(100, "configurations confirmed")] = 3
    # Two at least: one seed gives no spread.
    seeds: Annotated[StrictInt, Field(ge=2), at_most(100, "seeds per configuration")] = 3


class SweepConfig(Section):
    # Relative to the experiment file that names it; the default is the built-in default.yaml.
    search_space: Path = Field(default_factory=lambda: builtin_path("default", "search_spaces"))
    num_samples: Annotated[StrictInt, Field(ge=1), at_most(MAX_TRIALS, TRIALS_WHY)] = 8
    max_concurrent_trials: Annotated[StrictInt, Field(ge=1), at_most(4096, "trials at once")] = 2
    # TPE draws this many trials at random before it models the results (Optuna's
    # n_startup_trials, default 10): a sweep of no more trials than this is a random search.
    startup_trials: Annotated[StrictInt, Field(ge=1),
                              at_most(10_000, "random trials before TPE models")] = 10
    # What trials are ranked by, and what each keeps its best epoch by (train.monitor).
    metric: RankingMetric = "val_cider"
    # A multi-objective sweep: metric -> max or min, in priority order, a quality first (it is
    # sweep.metric: ASHA, each trial's kept epoch and promote rank by it), then costs or
    # other scores, e.g. {val_cider: max, decode_ms_per_caption: min}. Optuna's TPE models
    # them all; the sweep's parent run gets the Pareto front of the trials' kept epochs.
    objectives: dict[ObjectiveMetric, Mode] | None = None
    # Optuna's sampler of the trials (tune/strategy.py): tpe (models the results after
    # startup_trials), random (the baseline), nsga2 (a genetic algorithm, multi-objective).
    searcher: str = "tpe"
    # Ray Tune's scheduler: asha (stops poor trials at each rung), hyperband (synchronous
    # brackets; trials pause for theirs), fifo (no early stopping) or pbt (Population Based
    # Training, sweep.pbt; its searcher is random) or pb2 (PBT whose new values a bandit
    # chooses). One metric: sweep.metric.
    scheduler: str = "asha"
    pbt: PbtConfig = PbtConfig()
    # ASHA: every trial runs grace_period epochs; then only the best 1/reduction_factor go on,
    # up to train.epochs (HyperBand halves by reduction_factor too).
    grace_period: Annotated[StrictInt, Field(ge=1), at_most(10_000, "epochs")] = 2
    reduction_factor: Annotated[StrictInt, Field(ge=2),
                                at_most(100, "ASHA keeps 1 in this many")] = 2
    max_failures: Annotated[StrictInt, Field(ge=0), at_most(100, "retries of a failing trial")] = 2
    resources: ResourcesConfig = ResourcesConfig()
    # Off (None) by default: {top: K, seeds: N} trains the K best configurations N more times.
    confirm: ConfirmConfig | None = None
    # None = $MLFLOW_TRACKING_URI, else a local SQLite store (sqlite:///mlflow.db).
    tracking_uri: str | None = None
    # None = ./ray_results; on a cluster, a shared file system path or an s3:// / gs:// URI.
    storage_path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _pbt_draws_at_random(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("scheduler") in POPULATION_SCHEDULERS \
                and "searcher" not in data:
            data = {**data, "searcher": "random"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _metric_of_objectives(cls, data: Any) -> Any:
        objectives = data.get("objectives") if isinstance(data, dict) else None
        if isinstance(objectives, dict) and objectives and "metric" not in data \
                and next(iter(objectives)) in get_args(RankingMetric):
            data = {**data, "metric": next(iter(objectives))}
        return data

    @field_validator("searcher")
    @classmethod
    def _known_searcher(cls, name: str) -> str:
        if name in UNFIT_SEARCHERS:
            raise ValueError(f"{name}: not offered: {UNFIT_SEARCHERS[name]}; choose one of "
                             f"{', '.join(SEARCHERS)}")
        if name not in SEARCHERS:
            raise ValueError(f"unknown searcher {name!r}; choose one of {', '.join(SEARCHERS)}")
        return name

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of "
                             f"{', '.join(SCHEDULERS)}")
        return name

    @model_validator(mode="after")
    def _pbt_fits(self) -> SweepConfig:
        if self.scheduler not in POPULATION_SCHEDULERS:
            return self
        if self.searcher in MODELLING_SEARCHERS:
            raise KeyProblem("searcher", f"{self.searcher} models each trial's score as that of "
                             f"its first draw, which {self.scheduler.upper()} changes as the "
                             f"trial goes on; with scheduler {self.scheduler}, use searcher "
                             f"random (the default for {self.scheduler})")
        return self

    @model_validator(mode="after")
    def _objectives_fit(self) -> SweepConfig:
        if self.objectives is None:
            return self
        if len(self.objectives) < 2:
            raise KeyProblem("objectives", "name two or more metrics (one is sweep.metric)")
        first = next(iter(self.objectives))
        if first != self.metric:
            raise KeyProblem("objectives", f"its first metric ({first}) is what the sweep ranks "
                             f"by, but sweep.metric is {self.metric}; put a score such as "
                             f"{self.metric} first, or leave sweep.metric unset")
        for name, direction in self.objectives.items():
            if direction != mode_of(name):
                raise KeyProblem("objectives", f"{name} is best at its {mode_of(name)}, not "
                                 f"its {direction}")
        return self

    @property
    def mode(self) -> Mode:
        return mode_of(self.metric)
