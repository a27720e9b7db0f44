"""How a sweep searches: which Optuna sampler draws the trials (sweep.searcher) and which Ray
Tune scheduler stops or pauses them (sweep.scheduler). The one place that names them.

Searchers, all Optuna samplers behind Ray's OptunaSearch, all of which draw define-by-run
(conditional) spaces, so a `when` key is drawn only for the trials it applies to:

    tpe      Optuna's TPE (the default): sweep.startup_trials at random, then modelled
    random   Optuna's RandomSampler: every trial at random (the baseline to beat)
    nsga2    Optuna's NSGA-II: a genetic algorithm, for multi-objective sweeps

Not offered, because they do not fit these spaces (config/sweep.py refuses them saying so):
CMA-ES and QMC (a continuous, fixed search space: they draw categorical and conditional keys
at random, i.e. most of ours) and the Gaussian-process sampler (no categorical or conditional
keys at all).

Schedulers (Ray Tune's; each takes one metric, the first objective, sweep.metric):

    asha       ASHA: every trial runs grace_period epochs, then only the best
               1/reduction_factor at each rung go on
    hyperband  synchronous HyperBand: brackets of trials, the poor ones stopped at each
               halving; trials wait, paused, for their bracket (resumed from checkpoints)
    fifo       no early stopping: every trial runs all its epochs
    pbt        Population Based Training: every sweep.pbt.interval epochs a trial in the
               bottom quantile continues from a top trial's checkpoint with that trial's
               hyperparameters, perturbed (config/sweep.py PERTURBABLE: learning rate,
               smoothing, batch size, dropout, those the space draws), within the space's
               bounds; Optuna's random sampler draws the first population up front (Ray
               runs PBT with no searcher: BasicVariantGenerator gives the draws)
    pb2        Population Based Bandits: PBT whose new values a Gaussian-process bandit
               chooses within the bounds, from how much each trial's metric rose at its
               values; so only the keys of PERTURBABLE with numeric bounds (uniform,
               loguniform, integer; not a choice). Its bandit sees each bound on a linear
               scale, a loguniform one too. Needs scikit-learn (an MLflow dependency).
"""

from __future__ import annotations

import math
from typing import Any

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


def population_based(sweep: Any) -> bool:
    """Whether sweep.scheduler changes a running trial's draw (PBT, PB2)."""
    return sweep.scheduler in POPULATION_SCHEDULERS


def sampler(sweep: Any, seed: int) -> Any:
    """The Optuna sampler of sweep.searcher, seeded with `seed`."""
    from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

    if sweep.searcher == "random":
        return RandomSampler(seed=seed)
    if sweep.searcher == "nsga2":
        return NSGAIISampler(seed=seed)
    return TPESampler(seed=seed, n_startup_trials=sweep.startup_trials)


def population(sweep: Any, seed: int, define_by_run: Any) -> list[dict[str, Any]]:
    """PBT's first population: sweep.num_samples draws of the space by Optuna's seeded random
    sampler (define-by-run, so a `when` key is drawn only where it applies)."""
    import optuna

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
    if not population_based(sweep):
        return {}
    return dict.fromkeys(space.params, NOT_DRAWN)


def searcher(sweep: Any, seed: int, define_by_run: Any) -> Any:
    """Ray's OptunaSearch over the space, with the metric and mode of every objective. For
    PBT, which Ray runs with no searcher of its own: Ray's BasicVariantGenerator over the
    population drawn up front (`population`)."""
    if population_based(sweep):
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


def scheduler(sweep: Any, max_t: int, space: Any = None) -> Any:
    """The Ray Tune scheduler of sweep.scheduler, over at most `max_t` epochs a trial (PBT
    perturbs the keys `space` draws)."""
    if population_based(sweep):
        params = perturbed_keys(space, sweep.scheduler)
        if not params:
            which = " with bounds (its bandit takes no choice)" if sweep.scheduler == "pb2" \
                else ""
            raise ConfigError(f"sweep.scheduler: {sweep.scheduler} perturbs "
                              f"{', '.join(PERTURBABLE)}, and the search space {space.source} "
                              f"draws none of them{which} for every trial; add one, or choose "
                              "another scheduler")
        shared = {"time_attr": "training_iteration",
                  "perturbation_interval": sweep.pbt.interval,
                  "quantile_fraction": sweep.pbt.quantile, "synch": sweep.pbt.synch,
                  "custom_explore_fn": _within_bounds(params)}
        if sweep.scheduler == "pb2":
            return PB2(hyperparam_bounds={key: list(_bounds(param))
                                          for key, param in params.items()}, **shared)
        return PopulationBasedTraining(
            hyperparam_mutations={key: _mutation(param) for key, param in params.items()},
            resample_probability=sweep.pbt.resample_probability, **shared)
    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    if sweep.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                                  reduction_factor=sweep.reduction_factor)
    return ASHAScheduler(max_t=max_t, grace_period=sweep.grace_period,
                         reduction_factor=sweep.reduction_factor,
                         time_attr="training_iteration")


def describe(sweep: Any, seed: int, max_t: int, space: Any = None) -> dict[str, str]:
    """The sampler and scheduler as the sweep's parent run records them."""
    samplers = {"tpe": f"optuna TPESampler(seed={seed}, n_startup_trials="
                       f"{sweep.startup_trials})",
                "random": f"optuna RandomSampler(seed={seed})",
                "nsga2": f"optuna NSGAIISampler(seed={seed})"}
    schedulers = {"asha": f"ASHA(max_t={max_t}, grace_period={sweep.grace_period}, "
                          f"reduction_factor={sweep.reduction_factor})",
                  "hyperband": f"HyperBand(max_t={max_t}, reduction_factor="
                               f"{sweep.reduction_factor})",
                  "fifo": "FIFO (no early stopping)"}
    if population_based(sweep):
        keys = ", ".join(perturbed_keys(space, sweep.scheduler)) if space is not None else "?"
        chosen = (f"resample_probability={sweep.pbt.resample_probability}, "
                  if sweep.scheduler == "pbt" else "")
        schedulers[sweep.scheduler] = (
            f"{sweep.scheduler.upper()}(interval={sweep.pbt.interval} epochs, quantile="
            f"{sweep.pbt.quantile}, {chosen}synch={sweep.pbt.synch}, perturbs {keys})")
    return {"sampler": samplers[sweep.searcher], "scheduler": schedulers[sweep.scheduler]}
