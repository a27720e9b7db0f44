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
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler
from ray.tune.search.optuna import OptunaSearch


def sampler(sweep: Any, seed: int) -> Any:
    """The Optuna sampler of sweep.searcher, seeded with `seed`."""
    from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

    if sweep.searcher == "random":
        return RandomSampler(seed=seed)
    if sweep.searcher == "nsga2":
        return NSGAIISampler(seed=seed)
    return TPESampler(seed=seed, n_startup_trials=sweep.startup_trials)


def searcher(sweep: Any, seed: int, define_by_run: Any) -> OptunaSearch:
    """Ray's OptunaSearch over the space, with the metric and mode of every objective."""
    objectives = sweep.objectives
    return OptunaSearch(space=define_by_run,
                        metric=list(objectives) if objectives else sweep.metric,
                        mode=list(objectives.values()) if objectives else sweep.mode,
                        sampler=sampler(sweep, seed))


def scheduler(sweep: Any, max_t: int) -> Any:
    """The Ray Tune scheduler of sweep.scheduler, over at most `max_t` epochs a trial."""
    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    if sweep.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                                  reduction_factor=sweep.reduction_factor)
    return ASHAScheduler(max_t=max_t, grace_period=sweep.grace_period,
                         reduction_factor=sweep.reduction_factor,
                         time_attr="training_iteration")


def describe(sweep: Any, seed: int, max_t: int) -> dict[str, str]:
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
    return {"sampler": samplers[sweep.searcher], "scheduler": schedulers[sweep.scheduler]}
