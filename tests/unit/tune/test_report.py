"""A sweep's report, read back from a real `mlflow server`: a parent run that records the
shipped default search space (its `null`, `true` and `false` choices included) as a sweep
records it, and trial runs written as the MLflow callback writes them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from captioning.config.loading import load_experiment
from captioning.config.shipped import builtin_path
from captioning.tracking.runs import SweepTracker, flatten, recorded_search_space
from captioning.tune import search_space as spaces
from captioning.tune.report import Trial, caution, make_report
from captioning.tune.search_space import Param

# Three trials of the default space: a transformer that ties its embeddings, a frozen ResNet50
# (fine_tune.from_layer: null), and a PBT clone of the first (its last draw is the first's).
# The keys not fixed here are drawn as a sweep draws them, by Optuna (seeded).
FIXED = [
    {"model.decoder": "transformer", "encoder.name": "inception_v3",
     "model.transformer.tie_embeddings": True, "embedding": "learned"},
    {"model.decoder": "merge", "encoder.name": "resnet50",
     "encoder.fine_tune.from_layer": None, "embedding": "learned"},
    {"model.decoder": "transformer", "encoder.name": "convnext_tiny",
     "model.transformer.tie_embeddings": False, "embedding": "learned"},
]
SCORES = [0.9, 0.4, 0.6]


def draw(space: spaces.SearchSpace, fixed: dict[str, Any], seed: int) -> dict[str, Any]:
    """One trial's draw of `space`, with the `fixed` values."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler(
            fixed, optuna.samplers.RandomSampler(seed=seed))
    return space.suggest(optuna.create_study(sampler=sampler).ask())


@pytest.fixture(scope="module")
def default_sweep(mlflow_server: str) -> dict[str, Any]:
    """A finished sweep of search_spaces/default.yaml in MLflow: its parent run and space."""
    base = load_experiment("quickstart")
    space = spaces.load_search_space(builtin_path("default", "search_spaces"), base)
    tracker = SweepTracker(mlflow_server, "report-of-the-default-space")
    parent = tracker.start_parent("default-space", "/nowhere/default-space",
                                  {"search_space": space.to_dict(), "metric": "val_cider",
                                   "mode": "max"}, files={})
    draws = [draw(space, fixed, seed) for seed, fixed in enumerate(FIXED)]
    for index, (drawn, score) in enumerate(zip(draws, SCORES, strict=True)):
        config = flatten(spaces.apply(base.to_dict(), drawn).to_dict())
        run_id = tracker.trial_run(f"trial_{index}", f"trial {index}", config)
        tracker.log_epoch(run_id, {"epoch": 1, "val_cider": score})
        if index == 2:
            tracker.record_clone(run_id, {"from_trial": "trial_0", "epoch": 1,
                                          "draw": draws[0]}, "clone of trial 0")
        tracker.finish_trial(run_id, None, epochs_run=1, max_epochs=1)
    return {"uri": mlflow_server, "parent": parent, "space": space, "draws": draws}


def test_a_parent_run_reads_back_the_search_space_it_recorded(default_sweep):
    run = MlflowClient(default_sweep["uri"]).get_run(default_sweep["parent"])
    recorded = recorded_search_space(run)
    assert {k: Param.model_validate(v) for k, v in recorded.items()} == \
        default_sweep["space"].params
    assert recorded["encoder.fine_tune.from_layer"]["choice"] == [None, "conv5_block3_1_conv"]
    assert recorded["model.train_embedding"]["choice"] == [True, False]


def test_the_report_of_a_default_space_sweep_reads_its_null_and_boolean_choices(
        default_sweep):
    report = make_report(default_sweep["uri"], sweep_run=default_sweep["parent"])
    parent = default_sweep["parent"]

    assert [t.value for t in report.trials] == SCORES
    first, frozen = default_sweep["draws"][:2]
    # A frozen encoder is a config without a fine_tune section: its run has no from_layer.
    frozen = {k: v for k, v in frozen.items() if k != "encoder.fine_tune.from_layer"}
    assert [t.params for t in report.trials] == [first, frozen, first]  # a clone: its last draw
    assert report.trials[0].params["model.transformer.tie_embeddings"] is True
    assert report.summary[0] == f"sweep run {parent}: 3 finished trial(s) ranked by val_cider"
    assert report.summary[1].startswith("best: trial 0, val_cider 0.9000 at epoch 1 (")
    assert "model.transformer.tie_embeddings=True" in report.summary[1]
    assert report.files == ["history.png", "importances.png", "parallel_coordinates.png",
                            "report.html", "report.md"]

    client = MlflowClient(default_sweep["uri"])
    listed = sorted(f.path for f in client.list_artifacts(parent, "report"))
    assert listed == [f"report/{name}" for name in report.files]
    text = Path(client.download_artifacts(parent, "report/report.md")).read_text("utf-8")
    assert text.splitlines()[0] == "# Sweep report: 3 finished trials, ranked by val_cider (max)"
    for key in ("model.decoder=merge", "encoder.name=resnet50",
                "model.transformer.tie_embeddings=True", "embedding=learned"):
        assert key in text


def test_the_report_says_in_words_how_few_trials_its_importances_rest_on(default_sweep):
    # Three trials of one epoch each, of a sweep whose scheduler its run does not name: the
    # importances rest on trials none of which trained past its first epoch.
    report = make_report(default_sweep["uri"], sweep_run=default_sweep["parent"])
    said = ("Caution: these importances rest on 3 trial(s), 0 of them trained past their "
            "first epoch: with fewer than 20 trials past it, they are a hint, not a finding.")
    assert report.importances
    assert said in report.summary  # what `captioning report` prints
    assert report.summary.index(said) == report.summary.index(
        next(line for line in report.summary if line.startswith("importance: "))) + 1
    client = MlflowClient(default_sweep["uri"])
    text = Path(client.download_artifacts(default_sweep["parent"], "report/report.md")
                ).read_text("utf-8")
    heading = text.index("## Parameter importances")
    assert heading < text.index(said) < text.index("| key | importance |")


@pytest.fixture(scope="module")
def asha_sweep(mlflow_server: str) -> dict[str, Any]:
    """A finished ASHA sweep (grace_period 2) of the quickstart space: of its four trials,
    two trained past the first rung (4 and 3 epochs), two were stopped at it (2 epochs)."""
    from captioning.tune import strategy

    base = load_experiment("quickstart")
    space = spaces.load_search_space(builtin_path("quickstart", "search_spaces"), base)
    sweep = base.sweep.model_copy(update={"scheduler": "asha", "grace_period": 2})
    tracker = SweepTracker(mlflow_server, "report-of-an-asha-sweep")
    parent = tracker.start_parent("asha", "/nowhere/asha", {
        "search_space": space.to_dict(), "metric": "val_cider", "mode": "max",
        **strategy.describe(sweep, 0, 4, space)}, files={})
    for index, epochs in enumerate([4, 2, 3, 2]):
        drawn = draw(space, {}, index)
        run_id = tracker.trial_run(f"trial_{index}", f"trial {index}",
                                   flatten(spaces.apply(base.to_dict(), drawn).to_dict()))
        for epoch in range(1, epochs + 1):
            tracker.log_epoch(run_id, {"epoch": epoch, "val_cider": 0.1 * epoch + 0.01 * index})
        tracker.finish_trial(run_id, None, epochs_run=epochs, max_epochs=4)
    return {"uri": mlflow_server, "parent": parent}


def test_the_caution_counts_the_trials_past_ashas_first_rung(asha_sweep):
    report = make_report(asha_sweep["uri"], sweep_run=asha_sweep["parent"])
    assert [t.reported for t in report.trials] == [4, 2, 3, 2]
    said = ("Caution: these importances rest on 4 trial(s), 2 of them trained past ASHA's "
            "first rung (grace_period: 2 epoch(s)): with fewer than 20 trials past it, they "
            "are a hint, not a finding.")
    assert report.importances
    assert said in report.summary
    text = Path(MlflowClient(asha_sweep["uri"]).download_artifacts(
        asha_sweep["parent"], "report/report.md")).read_text("utf-8")
    assert said in text


def test_twenty_trials_past_the_first_rung_need_no_caution():
    scheduler = {"scheduler": "ASHA(max_t=10, grace_period=2, reduction_factor=2)"}
    trials = [Trial(str(i), f"trial {i}", i, {}, 0.5, 3, reported=3) for i in range(20)]
    assert caution(trials, scheduler) == ""
    assert "20 trial(s), 19 of them trained past ASHA's first rung" in caution(
        [*trials[:19], Trial("x", "x", 0, {}, 0.5, 2, reported=2)], scheduler)
    # Any other scheduler (FIFO, PBT, HyperBand): past a trial's first epoch.
    assert "1 trial(s), 0 of them trained past their first epoch" in caution(
        [Trial("x", "x", 0, {}, 0.5, 1, reported=1)], {"scheduler": "FIFO (no early stopping)"})
    assert caution(trials, {}) == ""
