"""How a sweep searches (tune/strategy.py): every offered Optuna sampler draws a conditional
space as it is written, the samplers that cannot are refused saying why, and each scheduler is
Ray Tune's own. Every row of the searcher and scheduler tables is held to the same contract,
so a new row is tested by adding it."""

from __future__ import annotations

import itertools

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import SearchAlgorithm, Searcher

from captioning.config import sweep as sweep_config
from captioning.config.schema import SweepConfig, parse_config
from captioning.errors import ConfigError
from captioning.tune import strategy
from captioning.tune.search_space import load_search_space

SPACE = """model.decoder: {choice: [merge, attention]}
train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
model.attention.units: {int: [16, 64], when: {model.decoder: attention}}
"""


@pytest.mark.parametrize("searcher", list(strategy.SEARCHERS))
def test_every_searcher_draws_a_conditional_key_only_for_the_trials_it_applies_to(
        searcher, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    space = load_search_space(path, parse_config({}))
    sweep = SweepConfig(searcher=searcher, startup_trials=3)
    study = optuna.create_study(sampler=strategy.sampler(sweep, seed=0), direction="maximize")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda trial: (space.define_by_run(trial), trial.number)[1], n_trials=12)
    drawn = [trial.params for trial in study.trials]
    assert {params["model.decoder"] for params in drawn} == {"merge", "attention"}
    for params in drawn:
        assert ("model.attention.units" in params) == (params["model.decoder"] == "attention")
        assert 1e-4 <= params["train.learning_rate"] <= 1e-2


def test_a_sampler_that_does_not_fit_conditional_spaces_is_refused_saying_why():
    with pytest.raises(ConfigError, match=r"sweep.searcher: cmaes: not offered: CMA-ES samples "
                                          r"a fixed, continuous space.*tpe, random, nsga2"):
        parse_config({"sweep": {"searcher": "cmaes"}})
    with pytest.raises(ConfigError, match="sweep.scheduler: unknown scheduler 'median'"):
        parse_config({"sweep": {"scheduler": "median"}})


def test_the_tables_name_exactly_what_the_config_accepts():
    # config/sweep.py validates without importing Ray: its names and the tables' rows agree.
    assert tuple(strategy.SEARCHERS) == sweep_config.SEARCHERS
    assert tuple(strategy.SCHEDULERS) == sweep_config.SCHEDULERS
    assert set(sweep_config.MODELLING_SEARCHERS) <= set(strategy.SEARCHERS)
    assert set(sweep_config.POPULATION_SCHEDULERS) <= set(strategy.SCHEDULERS)


@pytest.mark.parametrize("name", list(strategy.SEARCHERS))
def test_every_searcher_builds_a_seeded_optuna_sampler_the_parent_run_names(name):
    sweep = SweepConfig(searcher=name, startup_trials=3)
    built = strategy.sampler(sweep, seed=7)
    assert isinstance(built, optuna.samplers.BaseSampler)
    described = strategy.SEARCHERS[name].describe(sweep, 7)
    assert described.startswith(f"optuna {type(built).__name__}(seed=7")
    assert "\n" not in described


@pytest.mark.parametrize("name", list(strategy.SCHEDULERS))
def test_every_scheduler_builds_a_ray_scheduler_the_parent_run_describes(name, tmp_path):
    space = _space(tmp_path, PBT_SPACE)
    sweep = SweepConfig(scheduler=name, searcher="random")
    assert isinstance(strategy.scheduler(sweep, max_t=6, space=space), TrialScheduler)
    for described in (strategy.SCHEDULERS[name].describe(sweep, 6, space),
                      strategy.SCHEDULERS[name].describe(sweep, 6, None)):
        assert described and "\n" not in described


@pytest.mark.parametrize("searcher, scheduler", list(itertools.product(strategy.SEARCHERS,
                                                                       strategy.SCHEDULERS)))
def test_every_pair_of_searcher_and_scheduler_builds_or_is_refused_in_one_line(
        searcher, scheduler, tmp_path):
    sections = {"sweep": {"searcher": searcher, "scheduler": scheduler, "num_samples": 3}}
    if searcher in sweep_config.MODELLING_SEARCHERS \
            and scheduler in sweep_config.POPULATION_SCHEDULERS:
        with pytest.raises(ConfigError) as refused:
            parse_config(sections)
        assert f"sweep.searcher: {searcher} " in str(refused.value)
        assert "\n" not in str(refused.value)
        return
    config = parse_config(sections)
    space = _space(tmp_path, PBT_SPACE)
    search = strategy.searcher(config.sweep, config.train.seed, space.define_by_run)
    assert isinstance(search, Searcher | SearchAlgorithm)
    assert isinstance(strategy.scheduler(config.sweep, max_t=6, space=space), TrialScheduler)
    assert set(strategy.describe(config.sweep, 0, 6, space)) == {"sampler", "scheduler"}


@pytest.mark.parametrize("name", list(strategy.SCHEDULERS))
def test_only_population_based_training_changes_how_the_sweep_runs(name, tmp_path):
    space = _space(tmp_path, PBT_SPACE)
    sweep = SweepConfig(scheduler=name, searcher="random", max_concurrent_trials=3)
    population = name in sweep_config.POPULATION_SCHEDULERS
    # PBT draws its population up front (its generator limits the trials at once), may clone
    # any trial's earlier checkpoint, and must not clone a trial at its last epoch.
    assert strategy.SweepPlan.of(sweep) == strategy.SweepPlan(
        scheduler=name, population=population, keep_checkpoints=population,
        max_concurrent=None if population else 3, stop_at_last_epoch=population)
    assert bool(strategy.SweepPlan.of(sweep).perturbed(space)) == population
    assert bool(strategy.param_space(sweep, space)) == population


def test_the_parent_run_records_the_samplers_and_schedulers_settings():
    assert strategy.describe(SweepConfig(startup_trials=4), seed=3, max_t=6) == {
        "sampler": "optuna TPESampler(seed=3, n_startup_trials=4)",
        "scheduler": "ASHA(max_t=6, grace_period=2, reduction_factor=2)"}
    assert strategy.describe(SweepConfig(scheduler="hyperband", searcher="random",
                                         reduction_factor=3), seed=3, max_t=6) == {
        "sampler": "optuna RandomSampler(seed=3)",
        "scheduler": "HyperBand(max_t=6, reduction_factor=3)"}
    assert strategy.describe(SweepConfig(scheduler="fifo", searcher="nsga2"), seed=1,
                             max_t=6) == {"sampler": "optuna NSGAIISampler(seed=1)",
                                          "scheduler": "FIFO (no early stopping)"}


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_search_space(path, parse_config({}))


PBT_SPACE = """model.decoder: {choice: [merge, attention]}
train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
train.batch_size: {int: [32, 128], step: 32}
model.dropout: {uniform: [0.1, 0.5], when: {model.decoder: merge}}
model.attention.units: {int: [16, 64], when: {model.decoder: attention}}
"""


def test_pbt_perturbs_the_spaces_unconditional_training_keys_within_their_bounds(tmp_path):
    from ray.tune.schedulers import PopulationBasedTraining

    path = tmp_path / "space.yaml"
    path.write_text(PBT_SPACE)
    space = load_search_space(path, parse_config({}))
    sweep = SweepConfig(scheduler="pbt", num_samples=6, pbt={"interval": 3})
    assert sweep.searcher == "random"
    pbt = strategy.scheduler(sweep, max_t=6, space=space)
    assert type(pbt) is PopulationBasedTraining
    # The architecture, and keys only some trials draw, are never perturbed.
    assert list(strategy.perturbed_keys(space)) == ["train.learning_rate", "train.batch_size"]
    explore = pbt._custom_explore_fn
    assert explore({"train.learning_rate": 0.05, "train.batch_size": 157}) == \
        {"train.learning_rate": 1e-2, "train.batch_size": 128}
    assert explore({"train.learning_rate": 1e-5, "train.batch_size": 47}) == \
        {"train.learning_rate": 1e-4, "train.batch_size": 32}
    assert strategy.describe(sweep, seed=0, max_t=6, space=space)["scheduler"] == (
        "PBT(interval=3 epochs, quantile=0.25, resample_probability=0.25, synch=False, "
        "perturbs train.learning_rate, train.batch_size)")
    # The first population: seeded random draws, a conditional key only where it applies,
    # every other key of the space named as not drawn (Ray needs them all).
    population = strategy.population(sweep, 0, space.define_by_run)
    assert population == strategy.population(sweep, 0, space.define_by_run)
    assert len(population) == 6
    for draw in population:
        assert ("model.attention.units" in draw) == (draw["model.decoder"] == "attention")
    assert strategy.param_space(sweep, space) == dict.fromkeys(space.params, "<not drawn>")


def test_pb2_chooses_new_values_of_the_keys_with_bounds_and_keeps_them_within(tmp_path):
    from ray.tune.schedulers.pb2 import PB2

    path = tmp_path / "space.yaml"
    path.write_text(PBT_SPACE + "train.label_smoothing: {uniform: [0.0, 0.2]}\n"
                    "model.lstm_units: {choice: [16, 32]}\n")
    space = load_search_space(path, parse_config({}))
    sweep = SweepConfig(scheduler="pb2", pbt={"interval": 2, "synch": True})
    assert sweep.searcher == "random"
    pb2 = strategy.scheduler(sweep, max_t=6, space=space)
    assert type(pb2) is PB2
    # Numeric bounds only, as the space gives them; a conditional key is never perturbed.
    assert pb2._hyperparam_bounds == {"train.learning_rate": [1e-4, 1e-2],
                                      "train.label_smoothing": [0.0, 0.2],
                                      "train.batch_size": [32, 128]}
    assert pb2._custom_explore_fn({"train.batch_size": 70}) == {"train.batch_size": 64}
    assert strategy.describe(sweep, seed=0, max_t=6, space=space)["scheduler"] == (
        "PB2(interval=2 epochs, quantile=0.25, synch=True, perturbs train.learning_rate, "
        "train.label_smoothing, train.batch_size)")
    assert strategy.param_space(sweep, space) == dict.fromkeys(space.params, "<not drawn>")

    path.write_text("train.batch_size: {choice: [32, 64]}\n")
    choices = load_search_space(path, parse_config({}))
    assert list(strategy.perturbed_keys(choices)) == ["train.batch_size"]  # PBT takes it
    with pytest.raises(ConfigError, match="sweep.scheduler: pb2 perturbs .* draws none of them "
                                          "with bounds \\(its bandit takes no choice\\)"):
        strategy.scheduler(sweep, max_t=4, space=choices)
    with pytest.raises(ConfigError, match="which PB2 changes as the trial goes on"):
        parse_config({"sweep": {"scheduler": "pb2", "searcher": "nsga2"}})


def test_pbt_with_a_modelling_searcher_or_a_space_it_cannot_perturb_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="sweep.searcher: tpe models each trial's score as "
                                          "that of its first draw, which PBT changes"):
        parse_config({"sweep": {"scheduler": "pbt", "searcher": "tpe"}})
    path = tmp_path / "space.yaml"
    path.write_text("model.lstm_units: {choice: [16, 32]}\n")
    space = load_search_space(path, parse_config({}))
    with pytest.raises(ConfigError, match="sweep.scheduler: pbt perturbs train.learning_rate, "
                                          ".* draws none of them"):
        strategy.scheduler(SweepConfig(scheduler="pbt"), max_t=4, space=space)
    with pytest.raises(ConfigError, match="sweep.scheduler: pbt perturbs .* draws none"):
        strategy.SweepPlan.of(SweepConfig(scheduler="pbt")).perturbed(space)
