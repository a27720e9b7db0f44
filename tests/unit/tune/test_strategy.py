"""How a sweep searches (tune/strategy.py): every offered Optuna sampler draws a conditional
space as it is written, the samplers that cannot are refused saying why, and each scheduler is
Ray Tune's own."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

from captioning.config.schema import SweepConfig, parse_config
from captioning.errors import ConfigError
from captioning.tune import strategy
from captioning.tune.search_space import load_search_space

SPACE = """model.decoder: {choice: [merge, attention]}
train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
model.attention.units: {int: [16, 64], when: {model.decoder: attention}}
"""


@pytest.mark.parametrize("searcher", ["tpe", "random", "nsga2"])
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


@pytest.mark.parametrize("name, kind", [("asha", ASHAScheduler), ("fifo", FIFOScheduler),
                                        ("hyperband", HyperBandScheduler)])
def test_each_scheduler_is_ray_tunes_own_and_the_parent_run_says_which(name, kind):
    sweep = SweepConfig(scheduler=name, searcher="random")
    assert type(strategy.scheduler(sweep, max_t=6)) is kind
    described = strategy.describe(sweep, seed=3, max_t=6)
    assert described["sampler"] == "optuna RandomSampler(seed=3)"
    assert described["scheduler"].startswith({"asha": "ASHA(max_t=6", "fifo": "FIFO",
                                              "hyperband": "HyperBand(max_t=6"}[name])
