"""sweep.confirm: the search's best configurations trained again with new seeds, ranked by their
mean, and promoted by it. One small sweep on sample data against a real mlflow server: a search
of 3 trials, then its 2 best configurations with 2 new seeds each."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from mlflow import MlflowClient

from captioning.config.loading import load_experiment
from captioning.tracking.model_registry import promote
from captioning.tracking.runs import CONFIRM_DRAW_TAG, CONFIRM_SEED_TAG, CONFIRMS_TAG
from conftest import REPO, small_overrides, start_local_ray, trial_runs

pytestmark = pytest.mark.slow
TOP, SEEDS, SEED = 2, 2, 7


def _sweep(sample_root, storage, mlflow_server, resume=False):
    import ray

    from captioning.tune.launcher import run_sweep

    config = load_experiment(REPO / "experiments" / "quickstart.yaml", [
        *small_overrides(sample_root), "name=confirmed", f"sweep.tracking_uri={mlflow_server}",
        f"sweep.storage_path={storage}", "train.epochs=2", "train.score_images=5",
        f"train.seed={SEED}", "sweep.grace_period=2", "sweep.num_samples=3",
        "sweep.startup_trials=3", f"sweep.confirm={{top: {TOP}, seeds: {SEEDS}}}"])
    start_local_ray()
    try:
        return run_sweep(config, resume=resume, say=lambda _: None)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def confirmed(sample_root, tmp_path_factory, mlflow_server):
    storage = tmp_path_factory.mktemp("confirm") / "runs"
    return _sweep(sample_root, storage, mlflow_server), storage


def _confirmation_runs(mlflow_server, result):
    return [r for r in trial_runs(mlflow_server, "confirmed", result.parent_run_id)
            if CONFIRMS_TAG in r.data.tags]


def _search_runs(mlflow_server, result):
    return [r for r in trial_runs(mlflow_server, "confirmed", result.parent_run_id)
            if CONFIRMS_TAG not in r.data.tags]


def test_the_top_configurations_are_each_trained_again_with_new_seeds_as_nested_runs(
        confirmed, mlflow_server):
    result, _ = confirmed
    search = _search_runs(mlflow_server, result)
    runs = _confirmation_runs(mlflow_server, result)
    assert len(search) == 3 and len(runs) == TOP * SEEDS
    assert all(r.info.status == "FINISHED" for r in runs)
    pairs = {(r.data.tags[CONFIRMS_TAG], int(r.data.tags[CONFIRM_SEED_TAG])) for r in runs}
    assert len(pairs) == TOP * SEEDS  # each configuration once per seed
    assert {seed for _, seed in pairs} == {SEED + 1, SEED + 2}
    # The configurations confirmed are the search's two best at their kept epochs.
    by_score = sorted(search, key=lambda r: -r.data.metrics["best_val_cider"])
    trial_of = {r.data.tags["captioning.trial_id"]: r for r in search}
    assert {c for c, _ in pairs} == {r.data.tags["captioning.trial_id"] for r in by_score[:TOP]}
    for run in runs:  # trained with the draw it confirms, and its own seed
        source = trial_of[run.data.tags[CONFIRMS_TAG]]
        draw = json.loads(run.data.tags[CONFIRM_DRAW_TAG])
        assert draw and all(run.data.params[k] == source.data.params[k] for k in draw)
        assert run.data.params["train.seed"] == run.data.tags[CONFIRM_SEED_TAG]


def test_the_confirm_table_ranks_by_the_mean_of_the_runs_kept_scores(confirmed, mlflow_server):
    result, _ = confirmed
    client = MlflowClient(mlflow_server)
    folder = client.download_artifacts(result.parent_run_id, "confirm")
    table = json.loads(open(f"{folder}/confirm.json", encoding="utf-8").read())
    rows = table["configurations"]
    assert result.confirmation == rows and len(rows) == TOP
    runs = _confirmation_runs(mlflow_server, result)
    for row in rows:
        values = [r.data.metrics["best_val_cider"] for r in runs
                  if r.data.tags[CONFIRMS_TAG] == row["trial_id"]]
        stats = row["spread"]["val_cider"]
        assert stats["n"] == SEEDS
        assert stats["mean"] == pytest.approx(statistics.mean(values), abs=1e-9)
        assert stats["std"] == pytest.approx(statistics.stdev(values), abs=1e-9)
        assert stats["low"] < stats["mean"] < stats["high"] or stats["std"] == 0
    means = [row["spread"]["val_cider"]["mean"] for row in rows]
    assert means == sorted(means, reverse=True)
    markdown = open(f"{folder}/confirm.md", encoding="utf-8").read()
    assert markdown == result.confirm_table and all(r["trial_id"] in markdown for r in rows)


def test_promote_picks_the_configuration_with_the_best_mean_and_records_its_spread(
        confirmed, mlflow_server):
    result, _ = confirmed
    runs = _confirmation_runs(mlflow_server, result)
    means = {c: statistics.mean(r.data.metrics["best_val_cider"] for r in runs
                                if r.data.tags[CONFIRMS_TAG] == c)
             for c in {r.data.tags[CONFIRMS_TAG] for r in runs}}
    best = max(means, key=means.get)
    done = promote(mlflow_server, sweep_run=result.parent_run_id, model_name="confirmed")
    assert done.confirmed["confirms"] == best
    assert done.value == pytest.approx(means[best])
    promoted = MlflowClient(mlflow_server).get_run(done.run_id)
    assert promoted.data.tags[CONFIRMS_TAG] == best  # its best seed's model
    seeds = [r for r in runs if r.data.tags[CONFIRMS_TAG] == best]
    assert promoted.data.metrics["best_val_cider"] == max(
        r.data.metrics["best_val_cider"] for r in seeds)
    version = MlflowClient(mlflow_server).get_model_version("confirmed", done.version)
    assert float(version.tags["confirm.mean"]) == pytest.approx(means[best], rel=1e-5)
    assert version.tags["confirm.seeds"] == f"{SEED + 1},{SEED + 2}"
    assert math.isfinite(float(version.tags["confirm.ci95"]))
    assert "mean val_cider over seeds" in version.description
    # A bound on the means that only the other configuration meets moves the choice to it.
    other = min(means, key=means.get)
    if means[other] < means[best]:
        done = promote(mlflow_server, sweep_run=result.parent_run_id, model_name="confirmed",
                       at_most={"val_cider": means[other] + 1e-9})
        assert done.confirmed["confirms"] == other


def test_a_resumed_confirmed_sweep_trains_nothing_again_and_keeps_the_table(
        confirmed, sample_root, mlflow_server):
    result, storage = confirmed
    before = {r.info.run_id for r in trial_runs(mlflow_server, "confirmed",
                                                result.parent_run_id)}
    again = _sweep(sample_root, storage, mlflow_server, resume=True)
    assert again.parent_run_id == result.parent_run_id
    after = {r.info.run_id for r in trial_runs(mlflow_server, "confirmed",
                                               result.parent_run_id)}
    assert after == before
    assert [r["spread"] for r in again.confirmation] == [r["spread"] for r in
                                                          result.confirmation]
