"""How a sweep searches: which Optuna sampler draws the trials (sweep.searcher) and which Ray
Tune scheduler stops or pauses them (sweep.scheduler). The one place that builds them: one row
each in SEARCHERS and SCHEDULERS (name -> how to build it -> how the parent run records it),
as Ray's own SCHEDULER_IMPORT does, so adding one is one row (and its name in
config/sweep.py, which validates the config without importing Ray; a test keeps both equal).

What Population Based Training (PBT, PB2) changes about the rest of a sweep is decided once,
from the config, by `SweepPlan.of`; the launcher reads the plan, never the scheduler's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler
from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    PopulationBasedTraining,
)
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from captioning.config.sweep import PERTURBABLE, POPULATION_SCHEDULERS
from captioning.errors import ConfigError
from captioning.tune.search_space import NOT_DRAWN


@dataclass(frozen=True)
class Searcher:
    """A row of SEARCHERS: the Optuna sampler of (sweep config, seed), and the line the sweep's
    parent run records of it."""
    build: Callable[[Any, int], Any]
    describe: Callable[[Any, int], str]


@dataclass(frozen=True)
class Scheduler:
    """A row of SCHEDULERS: the Ray Tune scheduler of (sweep config, max_t, space), over at
    most max_t epochs a trial (PBT perturbs the keys the space draws), and the line the sweep's
    parent run records of it (the space may be None there)."""
    build: Callable[[Any, int, Any], Any]
    describe: Callable[[Any, int, Any], str]


# Optuna samplers behind Ray's OptunaSearch; all draw define-by-run (conditional) spaces, so a
# `when` key is drawn only for the trials it applies to. Not offered, because they do not fit
# these spaces (config/sweep.py UNFIT_SEARCHERS refuses them saying so): CMA-ES and QMC (a
# continuous, fixed space: they would draw our categorical and conditional keys at random)
# and the Gaussian-process sampler (no categorical or conditional keys at all).
SEARCHERS: dict[str, Searcher] = {
    # Optuna's TPE (the default): sweep.startup_trials at random, then modelled.
    "tpe": Searcher(
        lambda sweep, seed: TPESampler(seed=seed, n_startup_trials=sweep.startup_trials),
        lambda sweep, seed: f"optuna TPESampler(seed={seed}, n_startup_trials="
                            f"{sweep.startup_trials})"),
    # Every trial at random: the baseline to beat (and PBT's first population).
    "random": Searcher(lambda sweep, seed: RandomSampler(seed=seed),
                       lambda sweep, seed: f"optuna RandomSampler(seed={seed})"),
    # NSGA-II: a genetic algorithm, for multi-objective sweeps.
    "nsga2": Searcher(lambda sweep, seed: NSGAIISampler(seed=seed),
                      lambda sweep, seed: f"optuna NSGAIISampler(seed={seed})"),
}


def sampler(sweep: Any, seed: int) -> Any:
    """The Optuna sampler of sweep.searcher, seeded with `seed`."""
    return SEARCHERS[sweep.searcher].build(sweep, seed)


@dataclass(frozen=True)
class SweepPlan:
    """What sweep.scheduler asks of the rest of the sweep, decided once from the config.
    Population Based Training (PBT, PB2) changes a running trial's draw, so Ray runs it with no
    searcher of its own: Optuna's random sampler draws the population up front."""
    scheduler: str  # a key of SCHEDULERS
    population: bool  # PBT or PB2: the population is drawn up front (`population`)
    # PBT may clone any trial's earlier checkpoint: none is deleted until the sweep ends.
    keep_checkpoints: bool
    # The Tuner's limit on trials at once; None where the searcher limits them (PBT's
    # generator, `searcher`).
    max_concurrent: int | None
    # A trial's last epoch ends it before PBT sees it: none is cloned with nothing left to
    # train.
    stop_at_last_epoch: bool

    @classmethod
    def of(cls, sweep: Any) -> SweepPlan:
        population = sweep.scheduler in POPULATION_SCHEDULERS
        return cls(scheduler=sweep.scheduler, population=population,
                   keep_checkpoints=population,
                   max_concurrent=None if population else sweep.max_concurrent_trials,
                   stop_at_last_epoch=population)

    def perturbed(self, space: Any) -> tuple[str, ...]:
        """The keys the scheduler changes in running trials (none but PBT's and PB2's); refuses,
        with a ConfigError, a space of which PBT could perturb nothing."""
        return tuple(_perturbable(self.scheduler, space)) if self.population else ()


def population(sweep: Any, seed: int, define_by_run: Any) -> list[dict[str, Any]]:
    """PBT's first population: sweep.num_samples draws of the space by Optuna's seeded random
    sampler (define-by-run, so a `when` key is drawn only where it applies)."""
    study = optuna.create_study(sampler=sampler(sweep, seed))
    draws = []
    for _ in range(sweep.num_samples):
        trial = study.ask()
        define_by_run(trial)
        draws.append(dict(trial.params))
    return draws


def param_space(sweep: Any, space: Any) -> dict[str, Any]:
    """The Tuner's param_space: none (Optuna draws define-by-run), but for PBT every key of the
    space, at NOT_DRAWN where a trial of the population did not draw it (Ray sets each
    population's draw on these keys, and needs them all named)."""
    if not SweepPlan.of(sweep).population:
        return {}
    return dict.fromkeys(space.params, NOT_DRAWN)


def searcher(sweep: Any, seed: int, define_by_run: Any) -> Any:
    """Ray's OptunaSearch over the space, with the metric and mode of every objective. For
    PBT, which Ray runs with no searcher of its own: Ray's BasicVariantGenerator over the
    population drawn up front (`population`)."""
    if SweepPlan.of(sweep).population:
        return BasicVariantGenerator(
            points_to_evaluate=population(sweep, seed, define_by_run),
            max_concurrent=sweep.max_concurrent_trials)
    objectives = sweep.objectives
    return OptunaSearch(space=define_by_run,
                        metric=list(objectives) if objectives else sweep.metric,
                        mode=list(objectives.values()) if objectives else sweep.mode,
                        sampler=sampler(sweep, seed))


def perturbed_keys(space: Any, scheduler: str = "pbt") -> dict[str, Any]:
    """The keys PBT perturbs: those of PERTURBABLE the space draws for every trial (for PB2,
    only those with numeric bounds: its bandit takes a [low, high] per key)."""
    return {key: space.params[key] for key in PERTURBABLE
            if key in space.params and space.params[key].when is None
            and (scheduler != "pb2" or _bounds(space.params[key]) is not None)}


def _perturbable(scheduler: str, space: Any) -> dict[str, Any]:
    """perturbed_keys, or a ConfigError where the space draws none of them."""
    params = perturbed_keys(space, scheduler)
    if not params:
        which = " with bounds (its bandit takes no choice)" if scheduler == "pb2" else ""
        raise ConfigError(f"sweep.scheduler: {scheduler} perturbs {', '.join(PERTURBABLE)}, "
                          f"and the search space {space.source} draws none of them{which} "
                          "for every trial; add one, or choose another scheduler")
    return params


def _bounds(param: Any) -> Any:
    """A space's numeric [low, high], or None for a choice."""
    return param.uniform or param.loguniform or param.integer


def _mutation(param: Any) -> Any:
    """A space's distribution as PBT's hyperparam_mutations takes it."""
    if param.choice is not None:
        return list(param.choice)
    if param.loguniform is not None:
        return tune.loguniform(*param.loguniform)
    if param.uniform is not None:
        return tune.uniform(*param.uniform)
    low, high = param.integer
    return tune.qrandint(low, high, param.step or 1)


def _within_bounds(params: dict[str, Any]) -> Any:
    """PBT's explore step, after its own: a value it multiplied past the space's bounds is put
    back on the nearest bound (an integer on the nearest step), so every trial stays a draw of
    the space and a valid config."""

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        for key, param in params.items():
            bounds = _bounds(param)
            if bounds is None or key not in config:
                continue
            value = min(max(config[key], bounds[0]), bounds[1])
            if param.integer is not None:
                step = param.step or 1
                value = bounds[0] + step * math.floor((value - bounds[0]) / step + 0.5)
                value = int(min(value, bounds[1]))
            config[key] = value
        return config

    return explore


def _population_settings(sweep: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What PBT and PB2 share: sweep.pbt, and the explore step that keeps draws in bounds."""
    return {"time_attr": "training_iteration", "perturbation_interval": sweep.pbt.interval,
            "quantile_fraction": sweep.pbt.quantile, "synch": sweep.pbt.synch,
            "custom_explore_fn": _within_bounds(params)}


def _pbt(sweep: Any, max_t: int, space: Any) -> PopulationBasedTraining:
    params = _perturbable("pbt", space)
    return PopulationBasedTraining(
        hyperparam_mutations={key: _mutation(param) for key, param in params.items()},
        resample_probability=sweep.pbt.resample_probability,
        **_population_settings(sweep, params))


def _pb2(sweep: Any, max_t: int, space: Any) -> PB2:
    params = _perturbable("pb2", space)
    return PB2(hyperparam_bounds={key: list(_bounds(param)) for key, param in params.items()},
               **_population_settings(sweep, params))


def _describe_population(sweep: Any, max_t: int, space: Any) -> str:
    keys = ", ".join(perturbed_keys(space, sweep.scheduler)) if space is not None else "?"
    chosen = (f"resample_probability={sweep.pbt.resample_probability}, "
              if sweep.scheduler == "pbt" else "")
    return (f"{sweep.scheduler.upper()}(interval={sweep.pbt.interval} epochs, quantile="
            f"{sweep.pbt.quantile}, {chosen}synch={sweep.pbt.synch}, perturbs {keys})")


# Ray Tune's schedulers; each takes one metric, the first objective (sweep.metric).
SCHEDULERS: dict[str, Scheduler] = {
    # ASHA: every trial runs grace_period epochs, then only the best 1/reduction_factor at
    # each rung go on.
    "asha": Scheduler(
        lambda sweep, max_t, space: ASHAScheduler(
            max_t=max_t, grace_period=sweep.grace_period,
            reduction_factor=sweep.reduction_factor, time_attr="training_iteration"),
        lambda sweep, max_t, space: f"ASHA(max_t={max_t}, grace_period={sweep.grace_period}, "
                                    f"reduction_factor={sweep.reduction_factor})"),
    # Synchronous HyperBand: brackets of trials, the poor ones stopped at each halving; trials
    # wait, paused, for their bracket (resumed from checkpoints).
    "hyperband": Scheduler(
        lambda sweep, max_t, space: HyperBandScheduler(
            time_attr="training_iteration", max_t=max_t,
            reduction_factor=sweep.reduction_factor),
        lambda sweep, max_t, space: f"HyperBand(max_t={max_t}, reduction_factor="
                                    f"{sweep.reduction_factor})"),
    # No early stopping: every trial runs all its epochs.
    "fifo": Scheduler(lambda sweep, max_t, space: FIFOScheduler(),
                      lambda sweep, max_t, space: "FIFO (no early stopping)"),
    # Population Based Training: every sweep.pbt.interval epochs a trial in the bottom
    # quantile continues from a top trial's checkpoint with that trial's hyperparameters,
    # perturbed (config/sweep.py PERTURBABLE: learning rate, smoothing, batch size, dropout,
    # those the space draws), within the space's bounds; Optuna's random sampler draws the
    # first population up front (Ray runs PBT with no searcher: BasicVariantGenerator gives
    # the draws).
    "pbt": Scheduler(_pbt, _describe_population),
    # Population Based Bandits: PBT whose new values a Gaussian-process bandit chooses within
    # the bounds, from how much each trial's metric rose at its values; so only the keys of
    # PERTURBABLE with numeric bounds (uniform, loguniform, integer; not a choice). Its bandit
    # sees each bound on a linear scale, a loguniform one too. Needs scikit-learn (an MLflow
    # dependency).
    "pb2": Scheduler(_pb2, _describe_population),
}


def scheduler(sweep: Any, max_t: int, space: Any = None) -> Any:
    """The Ray Tune scheduler of sweep.scheduler, over at most `max_t` epochs a trial (PBT
    perturbs the keys `space` draws)."""
    return SCHEDULERS[sweep.scheduler].build(sweep, max_t, space)


def describe(sweep: Any, seed: int, max_t: int, space: Any = None) -> dict[str, str]:
    """The sampler and scheduler as the sweep's parent run records them."""
    return {"sampler": SEARCHERS[sweep.searcher].describe(sweep, seed),
            "scheduler": SCHEDULERS[sweep.scheduler].describe(sweep, max_t, space)}
