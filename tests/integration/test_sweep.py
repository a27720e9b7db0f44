"""Sweeps against a real `mlflow server` (SQLite, 127.0.0.1) and a real local Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from captioning.config.loading import load_experiment
from captioning.data.dataset import load_dataset
from captioning.tracking.runs import MODEL_TAG
from captioning.tune.launcher import run_sweep
from conftest import REPO, free_port, run_cli, start_local_ray, trial_runs

pytestmark = pytest.mark.slow
SMOKE_EPOCHS = 3


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray()
    yield
    ray.shutdown()


def experiment(sample_root: Path, tmp_path: Path, mlflow_url: str, name: str, *extra: str):
    return load_experiment(REPO / "experiments" / "quickstart.yaml", [
        f"name={name}", f"data.root={sample_root}", f"sweep.tracking_uri={mlflow_url}",
        f"sweep.storage_path={tmp_path / 'ray_results'}", *extra])


# smoke_sweep (conftest.py): the quickstart in smoke mode, 4 trials, experiment "smoke".


def test_a_smoke_sweep_logs_a_parent_and_one_nested_child_per_trial(smoke_sweep, mlflow_server,
                                                                   sample_root):
    result, _ = smoke_sweep
    client = MlflowClient(mlflow_server)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["num_samples"] == "4"
    assert "ASHA" in parent.data.params["scheduler"]
    # TPE's random start is the experiment's sweep.startup_trials (set to 4 here), not
    # Optuna's default 10.
    assert "TPESampler" in parent.data.params["sampler"]
    assert "n_startup_trials=4" in parent.data.params["sampler"]
    assert int(parent.data.params["dataset.images"]) == 300
    assert parent.data.tags["best_trial_id"] == result.best["trial_id"]
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_trial.json", "search", "search_space", "experiment"} <= parent_files

    # The MLflow UI opens the experiment on its training runs, not on the GenAI overview.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    dataset = load_dataset(sample_root)

    def dataset_of(run_id: str):
        [used] = client.get_run(run_id).inputs.dataset_inputs
        return used.dataset

    logged = dataset_of(parent.info.run_id)
    assert (logged.name, logged.digest) == (sample_root.name, dataset.digest())
    assert json.loads(logged.profile) == dataset.profile()
    assert json.loads(logged.profile)["train_images"] == len(dataset.splits["train"])

    runs = trial_runs(mlflow_server, "smoke", result.parent_run_id)
    assert len(runs) == result.trials == 4
    for run in runs:
        assert dataset_of(run.info.run_id).digest == dataset.digest()
        assert run.info.status == "FINISHED"
        assert run.info.run_name.startswith(run.data.params["model.decoder"] + " ")
        assert run.data.params["encoder.name"] in run.info.run_name
        assert {"model.lstm_units", "train.learning_rate", "data.root"} <= set(run.data.params)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_cider")]
        assert steps == list(range(1, len(steps) + 1))
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "val_cider",
                       "val_rouge_l", "val_bleu1"):
            assert metric in run.data.metrics
        # The kept epoch is logged as an MLflow model, with that epoch's scores linked to it.
        model = client.get_logged_model(run.data.tags[MODEL_TAG])
        assert model.source_run_id == run.info.run_id and model.name == "model"
        # Kept by the metric the sweep ranks trials by (val_cider by default).
        history = client.get_metric_history(run.info.run_id, "val_cider")
        linked = {m.key: m for m in model.metrics}
        assert linked["val_cider"].value == max(m.value for m in history)
        assert linked["val_cider"].step == min(m.step for m in history
                                               if m.value == linked["val_cider"].value)
        # The runs table's best_ columns are that kept epoch's scores (its val_cider column
        # is the last epoch's).
        assert run.data.metrics["best_val_cider"] == linked["val_cider"].value
        assert run.data.metrics["best_val_loss"] == linked["val_loss"].value
        assert run.data.metrics["best_epoch"] == linked["val_cider"].step
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"val_samples.json", "val_samples.png"} <= artifacts
        # An attention trial shows where it looked for each word of a few captions.
        assert ("attention.png" in artifacts) == (run.data.params["model.decoder"] == "attention")
        assert run.data.tags["early_stopped"] == str(
            int(run.data.tags["epochs_run"]) < SMOKE_EPOCHS).lower()
    # Each trial's model is in the sweep's experiment (its Models tab), linked to its run
    # (MLflow puts a model logged without an active run in the Default experiment).
    models = client.search_logged_models([parent.info.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in runs)
    assert {m.model_id for m in models} == {r.data.tags[MODEL_TAG] for r in runs}


def test_asha_stops_a_trial_whose_first_rung_score_is_below_the_cutoff(
        sample_root, tmp_path, mlflow_server, local_ray):
    # Scores fixed by start order, trials one at a time: ASHA's decisions are forced. The
    # first trial scores 1.0 and runs all epochs; the others score 0.0, below the cutoff of
    # the first rung (grace period 1), and stop after one epoch.
    claim = tmp_path / "first"

    def scored(drawn, base):
        from ray import tune

        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
            score = 1.0
        except FileExistsError:
            score = 0.0
        for epoch in range(1, base["train"]["epochs"] + 1):
            tune.report({"epoch": epoch, "loss": 1.0, "val_loss": 1.0, "val_cider": score})

    config = experiment(sample_root, tmp_path, mlflow_server, "asha",
                        "sweep.max_concurrent_trials=1")
    result = run_sweep(config, smoke_test=True, num_samples=3, trainable=scored,
                       say=lambda _: None)
    assert result.trials == 3 and result.errors == 0
    runs = trial_runs(mlflow_server, "asha", result.parent_run_id)
    ran = sorted((int(run.data.tags["epochs_run"]), run.data.tags["early_stopped"])
                 for run in runs)
    assert ran == [(1, "true"), (1, "true"), (SMOKE_EPOCHS, "false")]
    assert result.best["metrics"]["val_cider"] == 1.0


def test_a_sweep_searches_scst_epochs_and_each_trial_runs_them_after_cross_entropy(
        sample_root, tmp_path, mlflow_server, local_ray, spacy_pipeline):
    space = tmp_path / "space.yaml"
    space.write_text("train.scst.epochs:\n  choice: [1, 2]\n"
                     "train.scst.learning_rate:\n  loguniform: [1.0e-4, 1.0e-3]\n")
    # Two cross-entropy epochs, then the drawn SCST epochs: ASHA's max_t counts both, and a
    # grace period that long lets every trial finish.
    config = experiment(sample_root, tmp_path, mlflow_server, "scst",
                        f"sweep.search_space={space}", "train.epochs=2", "train.patience=4",
                        "train.score_images=10", "encoder.image_size=75",
                        "sweep.grace_period=4", "sweep.max_concurrent_trials=2",
                        # frozen spaCy vectors from a folder given relative to this one (as
                        # benchmarks/experiments/flickr8k-dev.yaml does), read by trials that
                        # run in folders of their own
                        f"embedding=spacy:{os.path.relpath(spacy_pipeline)}",
                        "model.train_embedding=false")
    result = run_sweep(config, num_samples=2, say=lambda _: None)
    assert result.trials == 2 and result.errors == 0
    client = MlflowClient(mlflow_server)
    assert "max_t=4" in client.get_run(result.parent_run_id).data.params["scheduler"]
    for run in trial_runs(mlflow_server, "scst", result.parent_run_id):
        scst_epochs = int(run.data.params["train.scst.epochs"])
        assert scst_epochs in (1, 2)
        assert run.data.tags["epochs_run"] == str(2 + scst_epochs)
        assert run.data.tags["early_stopped"] == "false"
        stage = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "scst"),
                                         key=lambda m: m.step)]
        assert stage == [0.0, 0.0] + [1.0] * scst_epochs
        rewards = client.get_metric_history(run.info.run_id, "reward")
        assert sorted(m.step for m in rewards) == list(range(3, 3 + scst_epochs))


def test_a_multi_objective_sweep_logs_its_pareto_front_to_the_parent_run(
        sample_root, tmp_path, mlflow_server, local_ray):
    from captioning.tune.pareto import on_front

    space = tmp_path / "space.yaml"
    space.write_text("model.lstm_units:\n  choice: [16, 64, 256]\n"
                     "model.decoder:\n  choice: [merge, attention]\n")
    config = experiment(sample_root, tmp_path, mlflow_server, "pareto",
                        f"sweep.search_space={space}", "train.epochs=1", "train.score_images=10",
                        "encoder.image_size=75", "sweep.startup_trials=3",
                        "sweep.objectives={val_cider: max, param_count: min}")
    result = run_sweep(config, num_samples=3, say=lambda _: None)
    assert result.trials == 3 and result.errors == 0
    client = MlflowClient(mlflow_server)
    folder = client.download_artifacts(result.parent_run_id, "pareto", str(tmp_path / "got"))
    assert sorted(os.listdir(folder)) == ["pareto.json", "pareto.md", "pareto.png"]
    rows = json.loads(Path(folder, "pareto.json").read_text())
    assert rows == result.pareto and len(rows) == 3
    # The front, recomputed from what each trial's run logged at its kept epoch.
    kept = {}
    for run in trial_runs(mlflow_server, "pareto", result.parent_run_id):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                      "val_cider")}
        epoch = max(history, key=history.get)
        params = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                     "param_count")}
        kept[run.info.run_id] = [history[epoch], params[epoch]]
    ids = list(kept)
    expected = {i for i, flag in zip(ids, on_front([kept[i] for i in ids], ["max", "min"]),
                                     strict=True) if flag}
    assert {row["run_id"] for row in rows if row["on_front"]} == expected
    assert rows[0]["on_front"]  # the front first
    assert "| trial | decoder | epoch | val_cider | param_count | front |" in \
        Path(folder, "pareto.md").read_text()


def test_features_are_extracted_once_per_encoder_for_the_whole_sweep(smoke_sweep,
                                                                     mlflow_server):
    result, tmp = smoke_sweep
    runs = trial_runs(mlflow_server, "smoke", result.parent_run_id)
    encoders = {run.data.params["encoder.name"] for run in runs}
    # Merge trials read pooled vectors, attention trials feature maps: one extraction serves
    # both (the sweep caches the maps from the start).
    assert {run.data.params["model.decoder"] for run in runs} == {"merge", "attention"}
    folder = tmp / "ray_results" / "feature_cache" / "features"
    cached = sorted(path for path in folder.glob("*.npy")
                    if not path.name.endswith((".grid.npy", ".gridsq.npy")))
    assert sorted(path.name.rsplit("-", 1)[0] for path in cached) == sorted(encoders)
    assert all(path.with_suffix(".grid.npy").is_file() for path in cached)
    extractions = {encoder: 0 for encoder in encoders}
    for trial in result.timeline:
        extractions[trial["config"]["encoder.name"]] += trial["features_extracted"]
    assert extractions == {encoder: 1 for encoder in encoders}
    assert len(result.timeline) > len(encoders)  # some trials reused another's features


def test_a_bad_search_space_fails_fast_with_one_line_naming_it(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.learning_rate:\n  loguniform: [0.1, 0.001]\n")
    result = run_cli("sweep", "--experiment", str(REPO / "experiments" / "quickstart.yaml"),
                     "--search-space", str(space), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {space}: train.learning_rate: low bound 0.1 is not below high bound 0.001")
    assert not (tmp_path / "ray_results").exists()


def test_an_unknown_encoder_in_the_space_is_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("encoder.name:\n  choice: [resnet50, vgg99]\n")
    result = run_cli("sweep", "--search-space", str(space),
                     "--experiment", str(REPO / "experiments" / "quickstart.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "encoder.name: unknown encoder 'vgg99'" in result.stderr


def test_a_weights_file_that_fits_only_some_encoders_of_the_space_is_refused_before_ray(
        tmp_path):
    from captioning.config.encoder import EncoderConfig
    from captioning.features.encoders import build_encoder

    weights = tmp_path / "mobilenet_quarter.weights.h5"
    build_encoder(EncoderConfig(name="mobilenet", alpha=0.25, weights="none")).save_weights(
        weights)
    space = tmp_path / "space.yaml"
    space.write_text("encoder.name:\n  choice: [mobilenet, mobilenet_v2]\n")
    result = run_cli("sweep", "--search-space", str(space), "--set", "encoder.name=mobilenet",
                     "--set", "encoder.alpha=0.25",
                     "--set", f"encoder.weights={weights}", "--set", "encoder.image_size=96",
                     "--storage", str(tmp_path / "ray_results"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: encoder.weights: {weights} does not fit mobilenet_v2 alpha 0.25 at 96x96")
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(("request_", "message"), [
    ("gpu=1", "sweep.resources.gpu: each trial asks for 1 GPU(s) but this machine has 0; set "
              "sweep.resources.gpu=0 to train on the CPU"),
    ("gpu=1.5", "sweep.resources.gpu: 1.5 is neither a share of one GPU (at most 1) nor a "
                "whole number of GPUs"),
    ("cpu=1000", "sweep.resources.cpu: each trial asks for 1000 CPUs but this machine has "),
])
def test_resources_no_node_here_can_give_are_refused_before_any_work(tmp_path, request_,
                                                                      message):
    result = run_cli("sweep", "--set", f"sweep.resources.{request_}",
                     "--set", f"sweep.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                     "--storage", str(tmp_path / "ray_results"), cwd=REPO,
                     env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, even on a machine with one
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not (tmp_path / "ray_results").exists()


def test_an_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli("sweep", "--set", f"sweep.tracking_uri={dead}",
                     "--storage", str(tmp_path / "ray_results"), cwd=REPO)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow tracking server {dead} cannot be reached")
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("path", [*sorted((REPO / "experiments").glob("*.yaml")),
                                  *sorted((REPO / "benchmarks" / "experiments").glob("*.yaml"))],
                         ids=lambda p: p.stem)
def test_every_experiment_names_a_valid_search_space(path):
    from captioning.tune.search_space import load_search_space

    # Random weights: benchmarks/experiments/ name a weights file beside the checkout.
    config = load_experiment(path, ["encoder.weights=none"])
    space = load_search_space(REPO / config.sweep.search_space, config)
    assert space.params
    assert config.train.epochs >= config.sweep.grace_period


def test_the_second_real_photo_sweep_space_loads_with_scst_on():
    from captioning.tune.search_space import load_search_space

    # As docs/quality.md runs it: flickr8k-dev with train.scst.epochs=4 and this space.
    config = load_experiment(REPO / "benchmarks" / "experiments" / "flickr8k-dev.yaml",
                             ["encoder.weights=none", "train.scst.epochs=4"])
    space = load_search_space(
        REPO / "benchmarks" / "search_spaces" / "flickr8k-dev-scst.yaml", config)
    assert "train.scst.learning_rate" in space.params
    assert "train.scst.epochs" not in space.params


@pytest.mark.parametrize("searcher, scheduler", [("random", "fifo"), ("tpe", "hyperband")])
def test_a_sweep_runs_with_each_searcher_and_scheduler_and_its_parent_run_says_which(
        searcher, scheduler, sample_root, tmp_path, mlflow_server, local_ray, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("model.lstm_units:\n  choice: [16, 32]\n"
                     "train.learning_rate:\n  loguniform: [1.0e-3, 1.0e-2]\n")
    name = f"{searcher}-{scheduler}"
    config = experiment(sample_root, tmp_path, mlflow_server, name,
                        f"sweep.search_space={space}", "train.epochs=2", "train.patience=4",
                        "train.score_images=10", "encoder.image_size=75",
                        f"sweep.searcher={searcher}", f"sweep.scheduler={scheduler}",
                        "sweep.startup_trials=2")
    result = run_sweep(config, num_samples=3, say=lambda _: None)
    assert result.trials == 3 and result.errors == 0
    params = MlflowClient(mlflow_server).get_run(result.parent_run_id).data.params
    assert params["sampler"].startswith({"random": "optuna RandomSampler(seed=0)",
                                         "tpe": "optuna TPESampler(seed=0"}[searcher])
    assert params["scheduler"].startswith({"fifo": "FIFO", "hyperband": "HyperBand"}[scheduler])
    epochs = sorted(int(run.data.tags["epochs_run"])
                    for run in trial_runs(mlflow_server, name, result.parent_run_id))
    if scheduler == "fifo":  # no early stopping: every trial ran every epoch
        assert epochs == [2, 2, 2]
    else:  # HyperBand pauses and stops trials by their brackets; the best bracket finishes
        assert len(epochs) == 3 and max(epochs) == 2 and min(epochs) >= 1
        return
    # The report: written to the parent run when the sweep ended, and again on demand.
    client = MlflowClient(mlflow_server)
    listed = sorted(f.path for f in client.list_artifacts(result.parent_run_id, "report"))
    assert listed == [f"report/{name}" for name in (
        "history.png", "importances.png", "parallel_coordinates.png", "report.html",
        "report.md")]
    assert result.report[0] == f"sweep run {result.parent_run_id}: 3 finished trial(s) " \
        "ranked by val_cider"
    from captioning.cli import main

    capsys.readouterr()
    assert main(["report", "--sweep-run", result.parent_run_id,
                 "--tracking-uri", mlflow_server]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == result.report
    importance = next(line for line in printed if line.startswith("importance: "))
    assert {part.rsplit(" ", 1)[0] for part in importance[12:].split(", ")} == {
        "model.lstm_units", "train.learning_rate"}
    md = Path(client.download_artifacts(result.parent_run_id, "report/report.md",
                                        str(tmp_path / "got"))).read_text()
    best = max(trial_runs(mlflow_server, name, result.parent_run_id),
               key=lambda run: max(m.value for m in client.get_metric_history(
                   run.info.run_id, "val_cider")))
    assert md.splitlines()[0] == "# Sweep report: 3 finished trials, ranked by val_cider (max)"
    html = Path(client.download_artifacts(result.parent_run_id, "report/report.html",
                                          str(tmp_path / "got"))).read_text()
    # Self-contained (plotly.js inside, once), the three figures, each trial a point.
    assert html.count("<h2>") == 3 and "Parameter importances" in html
    assert "<script src=" not in html and html.count("Plotly.newPlot") == 3
    top = md.split("## Top 3 trials")[1].splitlines()[4]  # the first row under the header
    assert top.startswith(f"| {best.info.run_name} |")


# PB2 is PBT whose new values a bandit chooses: the same clones, recorded the same way.
@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_a_pbt_sweep_continues_bottom_trials_from_top_ones_and_their_runs_record_each_change(
        sample_root, tmp_path, mlflow_server, local_ray, scheduler):
    from captioning.tracking.runs import CLONES_TAG, TRIAL_TAG
    from captioning.tune.trainable import trial_name

    space = tmp_path / "space.yaml"
    space.write_text("model.lstm_units:\n  choice: [16, 32]\n"
                     "train.learning_rate:\n  loguniform: [1.0e-3, 1.0e-2]\n"
                     "model.dropout:\n  uniform: [0.1, 0.5]\n")
    # Synchronous PBT: at every epoch all four trials have reported before the bottom one
    # continues from a top one, so a clone happens whatever the timing.
    config = experiment(sample_root, tmp_path, mlflow_server, scheduler,
                        f"sweep.search_space={space}", "train.epochs=3", "train.patience=4",
                        "train.score_images=10", "encoder.image_size=75",
                        f"sweep.scheduler={scheduler}", "sweep.pbt.interval=1",
                        "sweep.pbt.synch=true")
    assert config.sweep.searcher == "random"  # PBT's own default
    result = run_sweep(config, num_samples=4, say=lambda _: None)
    assert result.trials == 4 and result.errors == 0
    client = MlflowClient(mlflow_server)
    params = client.get_run(result.parent_run_id).data.params
    assert params["sampler"] == "optuna RandomSampler(seed=0)"
    assert params["scheduler"].startswith(f"{scheduler.upper()}(interval=1 epochs, "
                                          "quantile=0.25")
    assert params["scheduler"].endswith("perturbs train.learning_rate, model.dropout)")

    runs = trial_runs(mlflow_server, scheduler, result.parent_run_id)
    trial_ids = {run.data.tags[TRIAL_TAG] for run in runs}
    cloned = [run for run in runs if CLONES_TAG in run.data.tags]
    assert cloned, "no trial continued from another"
    for run in runs:  # every epoch once, with the values it trained with
        history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                            key)}
                   for key in ("loss", "learning_rate", "pbt/train.learning_rate",
                               "pbt/model.dropout")}
        assert sorted(history["loss"]) == [1, 2, 3]
        assert sorted(history["pbt/train.learning_rate"]) == [1, 2, 3]
        # The optimizer's own rate (a constant schedule) is the trial's, clones included.
        assert history["learning_rate"] == pytest.approx(history["pbt/train.learning_rate"])
        assert all(1e-3 <= rate <= 1e-2 for rate in history["pbt/train.learning_rate"].values())
        assert all(0.1 <= rate <= 0.5 for rate in history["pbt/model.dropout"].values())
        if run not in cloned:
            continue
        for clone in json.loads(run.data.tags[CLONES_TAG]):
            assert clone["from_trial"] in trial_ids - {run.data.tags[TRIAL_TAG]}
            assert clone["epoch"] in (1, 2)
            after = clone["epoch"] + 1  # the first epoch trained with the clone's values
            assert history["pbt/train.learning_rate"][after] == \
                pytest.approx(clone["draw"]["train.learning_rate"])
            assert history["pbt/model.dropout"][after] == \
                pytest.approx(clone["draw"]["model.dropout"])
        # Named after the draw it ended with (its params stay its first draw).
        last = json.loads(run.data.tags[CLONES_TAG])[-1]["draw"]
        assert run.info.run_name == trial_name(last)
        # The model the trial ends with says what it ended with.
        trial_dir = Path(result.sweep_dir) / f"trial_{run.data.tags[TRIAL_TAG]}"
        (checkpoint,) = trial_dir.glob("checkpoint_*")
        ended = json.loads((checkpoint / "config.json").read_text())
        assert ended["model"]["lstm_units"] == last["model.lstm_units"]
        assert ended["train"]["learning_rate"] == \
            pytest.approx(history["pbt/train.learning_rate"][3])
        assert ended["model"]["dropout"] == pytest.approx(history["pbt/model.dropout"][3])
