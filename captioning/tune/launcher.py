"""The sweep launcher: build the config, build the tuner, fit, summarise.

Ray Tune runs `train_trial` (tune/trainable.py) per trial, an Optuna sampler (TPE by default)
picks the next trial, a scheduler (ASHA by default) stops poor ones early (tune/strategy.py),
and every trial is a nested MLflow run (tune/mlflow_callback.py).
What makes a resume safe lives in tune/resume.py; the checks before Ray starts, in
tune/preflight.py.

    captioning sweep [--experiment F] [--search-space F] [--num-samples N]
                     [--address ADDR] [--storage PATH] [--resume] [--smoke-test]
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from captioning.config.schema import READS_GRID, ExperimentConfig, SweepConfig
from captioning.data.dataset import load_dataset
from captioning.errors import ConfigError
from captioning.evaluation.figures import pareto_plot, search_plot
from captioning.tracking.client import (
    check_reachable,
    is_unreachable,
    resolve_tracking_uri,
    tracking_failure,
)
from captioning.tracking.runs import (
    SEARCH_SPACE_PARAM,
    TRIAL_TAG,
    SweepTracker,
    dataset_input,
    flatten,
)
from captioning.training.backend import training_backend
from captioning.training.prepare import ensure_data
from captioning.tune import confirm, pareto, strategy
from captioning.tune import search_space as spaces
from captioning.tune.mlflow_callback import MlflowTrials, finished, trial_epochs
from captioning.tune.preflight import check_cpus, check_encoder_files, check_gpus
from captioning.tune.report import make_report
from captioning.tune.resume import CheckpointKeeper, keep_only_latest, repair_state
from captioning.tune.trainable import (
    FEATURES_EXTRACTED,
    kept_row,
    train_trial,
    trial_dirname,
)

log = logging.getLogger(__name__)

# Smoke mode: every path of a sweep, in about a minute on a CPU.
SMOKE_OVERRIDES = {"train": {"epochs": 3, "score_images": 10, "patience": 3},
                   "encoder": {"image_size": 75}, "sweep": {"num_samples": 3, "grace_period": 1}}


@dataclass
class SweepResult:
    sweep_dir: str
    tracking_uri: str
    parent_run_id: str
    best: dict[str, Any] | None  # trial_id, run_id, config, metrics
    trials: int
    errors: int
    # Per trial: trial_id, config, epochs run, features_extracted (0 or 1), start and end
    # (seconds since the epoch).
    timeline: list[dict[str, Any]]
    interrupted: int = 0  # trials left to run when Ctrl-C stopped the sweep
    experiment_id: str = ""  # the MLflow experiment
    # A multi-objective sweep's trials at their kept epochs, the Pareto front first
    # (tune/pareto.py); empty for one metric.
    pareto: list[dict[str, Any]] = field(default_factory=list)
    report: list[str] = field(default_factory=list)  # the report's summary (tune/report.py)
    # sweep.confirm's configurations, best mean first (tune/confirm.py: rank); empty if off.
    confirmation: list[dict[str, Any]] = field(default_factory=list)
    confirm_table: str = ""  # the same as a markdown table (confirm/confirm.md)


def _best(results: Any, metric: str, mode: str, runs: dict[str, str]) -> dict[str, Any] | None:
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
    except RuntimeError:  # no trial reported the metric
        return None
    row = kept_row(best.metrics_dataframe, metric, mode)
    if row is None:
        return None
    metrics = {k: float(row[k]) for k in row.index
               if k.startswith(("val_", "loss", "accuracy")) and row[k] == row[k]}
    trial_id = best.metrics["trial_id"]
    return {"trial_id": trial_id, "run_id": runs.get(trial_id, ""),
            "config": spaces.drawn_values(best.config), "epoch": int(row["epoch"]),
            "metrics": metrics,
            "checkpoint": best.checkpoint.path if best.checkpoint else None}


def run_sweep(config: ExperimentConfig, *, experiment_path: Path | None = None,
              search_space: Path | None = None, num_samples: int | None = None,
              address: str | None = None, storage: str | None = None, resume: bool = False,
              smoke_test: bool = False, trainable: Callable | None = None,
              callbacks: list[tune.Callback] | None = None,
              say: Callable[[str], None] = print) -> SweepResult:
    """Run (or with `resume`, continue) the sweep described by `config.sweep`.

    Validates the search space and reaches the tracking server before Ray starts anything.
    `trainable` replaces `train_trial` (tests use it to inject faults); `callbacks` are more
    Ray Tune callbacks, saved with the sweep and restored with it on resume.
    """
    config = _sweep_settings(config, smoke_test, num_samples)
    space_path = Path(search_space or config.sweep.search_space)
    space = spaces.load_search_space(space_path, config)
    plan = strategy.SweepPlan.of(config.sweep)
    perturbed = plan.perturbed(space)  # refuses a space PBT could perturb nothing of
    uri = resolve_tracking_uri(config.sweep.tracking_uri)
    check_reachable(uri)
    check_encoder_files(space.encoders(config))
    _start_ray(config, _most_epochs(config, space), address, say)
    check_gpus(config.sweep.resources.gpu, cluster=address is not None)
    check_cpus(config.sweep.resources.cpu, cluster=address is not None)

    storage_path = _storage(config, storage)
    sweep_dir = f"{storage_path}/{config.name}"
    config = _trial_settings(config, space, storage_path, say)
    if config.sweep.startup_trials >= config.sweep.num_samples and not resume:
        say(random_search_note(config.sweep))
    base = config.to_dict()
    dataset = load_dataset(config.data.root, config.data.format,
                           split_seed=config.data.split_seed,
                           keep_one_letter_words=config.data.keep_one_letter_words)
    tracker = SweepTracker(uri, config.name)
    resume = _resume_or_start(tracker, resume, sweep_dir, say)
    if not resume and tracker.parent_run_id is None:
        params = _parent_params(config, space, space_path, experiment_path, sweep_dir, dataset)
        files = {"search_space": space_path}
        if experiment_path is not None:
            files["experiment"] = Path(experiment_path)
        tracker.start_parent(config.name, sweep_dir, params, files, dataset_input(dataset))

    function = tune.with_resources(
        tune.with_parameters(trainable or train_trial, base=base),
        config.sweep.resources.model_dump())
    if resume:
        # Ray restores the searcher, the scheduler and the MLflow callback with the sweep.
        tuner = tune.Tuner.restore(sweep_dir, function, resume_errored=True)
    else:
        tuner = _new_tuner(function, config, space, plan, storage_path, [
            MlflowTrials(uri, config.name, tracker.parent_run_id, base, dataset_input(dataset),
                         perturbed),
            CheckpointKeeper(sweep_dir, delete=not plan.keep_checkpoints),
            *(callbacks or [])])
    results = _fit(tuner, tracker)
    # Ray Tune stops on Ctrl-C (SIGINT), ends the running trials and saves the sweep's state
    # for --resume: a trial is done only if it said so, reported its last epoch, or failed.
    unfinished = config.sweep.num_samples - sum(
        finished(result.metrics, result.error is not None, trial_epochs(base, result.config))
        for result in results)
    confirmation = None
    if unfinished <= 0 and config.sweep.confirm is not None:  # sweep.confirm: tune/confirm.py
        keep_only_latest(results)
        confirmation = confirm.run(function, config, results, storage_path, [MlflowTrials(
            uri, config.name, tracker.parent_run_id, base, dataset_input(dataset))],
            base, lambda tuner: _fit(tuner, tracker), say)
        unfinished = confirmation.unfinished
    if unfinished > 0:
        tracker.interrupted()
        return SweepResult(sweep_dir, uri, tracker.parent_run_id, None, len(results),
                           results.num_errors, [], interrupted=unfinished,
                           experiment_id=tracker.experiment_id)
    keep_only_latest(results)
    return _summarise(results, config, tracker, sweep_dir, confirmation)


def random_search_note(sweep: SweepConfig) -> str:
    """What to tell a user whose sweep is too short for TPE to model anything."""
    return (f"sweep.startup_trials ({sweep.startup_trials}) >= sweep.num_samples "
            f"({sweep.num_samples}): TPE draws every trial at random; set startup_trials "
            f"below num_samples for it to learn from the finished trials")


def _sweep_settings(config: ExperimentConfig, smoke_test: bool, num_samples: int | None
                    ) -> ExperimentConfig:
    """The experiment with the command's flags applied: smoke mode, --num-samples."""
    if smoke_test:
        data = config.to_dict()
        for section, values in SMOKE_OVERRIDES.items():
            data[section].update(values)
        config = ExperimentConfig.model_validate(data)
    if num_samples is not None:
        config = _updated(config, "sweep", num_samples=num_samples)
    return config


def _updated(config: ExperimentConfig, section: str, **values: Any) -> ExperimentConfig:
    """`config` with keys of one section replaced (the config itself is frozen)."""
    return config.model_copy(update={section: getattr(config, section).model_copy(
        update=values)})


def _start_ray(config: ExperimentConfig, epochs: int, address: str | None,
               say: Callable[[str], None]) -> None:
    if ray.is_initialized():
        return
    # Without --address, a Ray of this sweep's own: never one another program left running.
    # Its workers (the trials) get the Keras backend that trains (training/backend.py).
    # `epochs`: the longest trial's, SCST's included.
    backend = training_backend(config.train.backend, epochs, config.sweep.resources.gpu)
    ray.init(address=address or "local", log_to_driver=False, include_dashboard=False,
             runtime_env={"env_vars": {"KERAS_BACKEND": backend}})
    say(f"trials train on Keras' {backend} backend (train.backend: {config.train.backend})")


def _storage(config: ExperimentConfig, storage: str | None) -> str:
    path = storage or config.sweep.storage_path or "ray_results"
    return path if "://" in path else str(Path(path).resolve())


def _trial_settings(config: ExperimentConfig, space: spaces.SearchSpace, storage_path: str,
                    say: Callable[[str], None]) -> ExperimentConfig:
    """The base config every trial starts from: the data drawn if need be, and every path
    absolute (trials run in their own working folders, and on other nodes)."""
    if any(READS_GRID[name] for name in space.values("model.decoder", config.model.decoder)):
        # Some trials read feature maps: every trial caches them, so that each encoder is
        # extracted once for the whole sweep, whichever decoder its first trial drew.
        config = _updated(config, "encoder", keep_grid=True)
    # Each trial keeps its best epoch by the metric the sweep ranks trials by.
    config = _updated(config, "train", monitor=config.sweep.metric)
    if config.encoder.cache_dir is None and "://" not in storage_path:
        # One feature cache per sweep storage: shared by every trial, on every node.
        config = _updated(config, "encoder", cache_dir=Path(storage_path) / "feature_cache")
    ensure_data(config, say)
    config = _updated(config, "data", root=Path(config.data.root).resolve())
    config = config.model_copy(update={"embedding": _absolute_embedding(config.embedding)})
    # Trials find their own checkpoints on the storage (trainable.trial_storage).
    return _updated(config, "sweep", storage_path=storage_path)


def _absolute_embedding(embedding: str) -> str:
    """`spacy:<pipeline folder>` relative to this folder, made absolute (trials run in folders
    of their own); a model's name, or an absolute path, as it is."""
    folder = Path(embedding.removeprefix("spacy:")).expanduser()
    if embedding.startswith("spacy:") and not folder.is_absolute() and folder.is_dir():
        return f"spacy:{folder.resolve()}"
    return embedding


def _resume_or_start(tracker: SweepTracker, resume: bool, sweep_dir: str,
                     say: Callable[[str], None]) -> bool:
    """Whether Ray Tune resumes the sweep's saved state; either way `tracker` has the sweep's
    MLflow parent run if there is one (found by the storage path it was tagged with)."""
    if resume and not tune.Tuner.can_restore(sweep_dir):
        if tracker.find_parent(sweep_dir) is None:
            raise ConfigError(f"--resume: no sweep to resume in {sweep_dir}")
        # Stopped before Ray Tune saved anything: no trial had started.
        say(f"the sweep in {sweep_dir} stopped before it saved its state: starting it again "
            f"(MLflow parent run {tracker.parent_run_id})")
        return False
    if resume:
        # The sweep's own state is Ray's, in its storage (any file system or bucket).
        if tracker.find_parent(sweep_dir) is None:
            raise ConfigError(f"--resume: {tracker.uri} has no parent run for the sweep in "
                              f"{sweep_dir}")
        repaired = repair_state(sweep_dir)
        if repaired:
            log.warning("%s", repaired)
        say(f"resuming sweep {sweep_dir} (MLflow parent run {tracker.parent_run_id})")
    return resume


def _parent_params(config: ExperimentConfig, space: spaces.SearchSpace, space_path: Path,
                   experiment_path: Path | None, sweep_dir: str, dataset: Any
                   ) -> dict[str, Any]:
    """What the sweep's MLflow parent run records of how the sweep was set up."""
    return {
        "experiment_file": str(experiment_path or ""), "search_space_file": str(space_path),
        SEARCH_SPACE_PARAM: space.to_dict(), "num_samples": config.sweep.num_samples,
        "max_concurrent_trials": config.sweep.max_concurrent_trials,
        **strategy.describe(config.sweep, config.train.seed, _most_epochs(config, space),
                            space),
        "metric": config.sweep.metric, "mode": config.sweep.mode,
        "resources": config.sweep.resources.model_dump(), "storage": sweep_dir,
        **{f"dataset.{k}": v for k, v in dataset.summary().items()},
        **{f"base.{k}": v for k, v in flatten(config.to_dict()).items()},
    }


def _most_epochs(config: ExperimentConfig, space: spaces.SearchSpace) -> int:
    """The most epochs any trial can report: ASHA's max_t."""
    return (max(space.values("train.epochs", config.train.epochs))
            + max(space.values("train.scst.epochs", config.train.scst.epochs)))


def _new_tuner(function: Any, config: ExperimentConfig, space: spaces.SearchSpace,
               plan: strategy.SweepPlan, storage_path: str, callbacks: list[tune.Callback]
               ) -> tune.Tuner:
    """An Optuna sampler draws each trial from the space (sweep.searcher); a Ray Tune
    scheduler stops the poor ones early (sweep.scheduler): tune/strategy.py. Several
    objectives: the sampler models them all (a multi-objective study); the scheduler and the
    ranking of trials use the first, sweep.metric."""
    searcher = strategy.searcher(config.sweep, config.train.seed, space.define_by_run)
    scheduler = strategy.scheduler(config.sweep, _most_epochs(config, space), space)
    return tune.Tuner(
        function, param_space=strategy.param_space(config.sweep, space),
        tune_config=tune.TuneConfig(
            metric=config.sweep.metric, mode=config.sweep.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=config.sweep.num_samples,
            max_concurrent_trials=plan.max_concurrent,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=config.name, storage_path=storage_path, callbacks=callbacks,
            stop=({"training_iteration": _most_epochs(config, space)}
                  if plan.stop_at_last_epoch else None),
            failure_config=tune.FailureConfig(max_failures=config.sweep.max_failures),
            # Ray deletes no checkpoint: CheckpointKeeper does, once it is safe.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))


def _fit(tuner: tune.Tuner, tracker: SweepTracker) -> Any:
    sigint = signal.getsignal(signal.SIGINT)
    try:
        return tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Ray Tune took over
        tracker.interrupted()
        raise
    finally:
        # Ray Tune's own Ctrl-C handler outlives fit() until a first Ctrl-C: put ours back.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)


def _summarise(results: Any, config: ExperimentConfig, tracker: SweepTracker, sweep_dir: str,
               confirmation: confirm.Confirmation | None = None) -> SweepResult:
    """The best trial and every trial's timeline; the parent run gets the best trial and a
    plot of the metric against each searched key, and is marked finished."""
    metric, mode = config.sweep.metric, config.sweep.mode
    ended = f"the sweep ended (its results are in {sweep_dir})"
    with tracking_failure(tracker.uri, ended):
        runs = {run.data.tags.get(TRIAL_TAG): run.info.run_id for run in tracker.child_runs()}
    best = _best(results, metric, mode, runs)
    rows, timeline = [], []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and len(frame):
            last = frame.iloc[-1]
            extracted = frame.get(FEATURES_EXTRACTED)
            timeline.append({"trial_id": last["trial_id"],
                             "config": spaces.drawn_values(result.config),
                             "epochs": int(last["training_iteration"]),
                             "features_extracted": int(extracted.sum())
                             if extracted is not None else 0,
                             "start": float(last["timestamp"] - last["time_total_s"]),
                             "end": float(last["timestamp"])})
        if frame is not None and metric in frame:
            value = frame[metric].max() if mode == "max" else frame[metric].min()
            rows.append({"params": spaces.drawn_values(result.config),
                         "value": float(value)})
    objectives = config.sweep.objectives or {}
    front = pareto.front_rows(results, objectives, runs) if objectives else []
    with tempfile.TemporaryDirectory(prefix="captioning-sweep-") as folder:
        plot = search_plot(rows, metric, Path(folder) / "search.png")
        files = {}
        if front:
            files = {"pareto.json": Path(folder) / "pareto.json",
                     "pareto.md": Path(folder) / "pareto.md"}
            files["pareto.json"].write_text(json.dumps(front, indent=2), encoding="utf-8")
            files["pareto.md"].write_text(pareto.table(front, list(objectives)), "utf-8")
            figure = pareto_plot(front, dict(objectives), Path(folder) / "pareto.png")
            if figure is not None:
                files["pareto.png"] = figure
        confirmed = confirm.write(confirmation.rows, metric, Path(folder)) \
            if confirmation is not None else {}
        with tracking_failure(tracker.uri, ended):
            for path in confirmed.values():
                tracker.client.log_artifact(tracker.parent_run_id, str(path), "confirm")
            tracker.finish_parent(best, plot, pareto=files)
    summary = []
    with tracking_failure(tracker.uri, ended):
        try:
            summary = make_report(tracker.uri, sweep_run=tracker.parent_run_id).summary
        except Exception as error:  # noqa: BLE001 - the sweep is done and kept whatever this is
            if is_unreachable(error):
                raise
            log.warning("the sweep's report could not be made (%s: %s); make it again with "
                        "captioning report --sweep-run %s", type(error).__name__, error,
                        tracker.parent_run_id)
    return SweepResult(sweep_dir, tracker.uri, tracker.parent_run_id, best, len(results),
                       results.num_errors, timeline, experiment_id=tracker.experiment_id,
                       pareto=front, report=summary,
                       confirmation=confirmation.rows if confirmation else [],
                       confirm_table=confirm.table(confirmation.rows, metric)
                       if confirmation else "")
