"""Sweeps: Ray Tune runs `train_captioner` per trial, Optuna's TPE picks the next trial, ASHA
stops poor ones early, and every trial is a nested MLflow run. Every Ray call lives here, but
for the internals that make a resume safe (resume.py).

    captioning sweep [--experiment F] [--search-space F] [--num-samples N]
                     [--address ADDR] [--storage PATH] [--resume] [--smoke-test]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from captioning import search_space as spaces
from captioning.backend import training_backend
from captioning.config import ConfigError, ExperimentConfig
from captioning.datasets import load_dataset
from captioning.decoders import decoder_named
from captioning.errors import first_line
from captioning.figures import search_plot
from captioning.prepare import ensure_data
from captioning.resume import CheckpointKeeper, keep_only_latest, repair_state
from captioning.tracking import (
    EPOCH_METRICS,
    SweepTracker,
    check_reachable,
    dataset_input,
    fail_fast,
    flatten,
    is_unreachable,
    resolve_tracking_uri,
    temp_dir,
    tracking_failure,
)

log = logging.getLogger(__name__)

# Smoke mode: every path of a sweep, in about a minute on a CPU.
SMOKE_OVERRIDES = {"train": {"epochs": 3, "score_images": 10, "patience": 3},
                   "encoder": {"image_size": 75}, "sweep": {"num_samples": 3, "grace_period": 1}}


def trial_name(drawn: dict[str, Any]) -> str:
    """A name a person can tell trials apart by in the MLflow UI."""
    parts = []
    if "model.decoder" in drawn:
        parts.append(str(drawn["model.decoder"]))
    if "encoder.name" in drawn:
        parts.append(str(drawn["encoder.name"]))
    if "model.lstm_units" in drawn:
        parts.append(f"w{drawn['model.lstm_units']}")
    if "train.learning_rate" in drawn:
        parts.append(f"lr{drawn['train.learning_rate']:.1e}")
    if "train.batch_size" in drawn:
        parts.append(f"b{drawn['train.batch_size']}")
    if "embedding" in drawn:
        parts.append(str(drawn["embedding"]).replace("spacy:", "spacy-"))
    return " ".join(parts) or "trial"


TRIAL_DIR = "trial_{}"  # a trial's folder in the sweep's storage, by trial id


def trial_dirname(trial: Any) -> str:
    return TRIAL_DIR.format(trial.trial_id)


def trial_storage(base: dict[str, Any], trial_id: str) -> str:
    """Where Ray Tune keeps trial `trial_id`'s checkpoints: a path or URI on the storage."""
    return f"{base['sweep']['storage_path']}/{base['name']}/{TRIAL_DIR.format(trial_id)}"


def train_trial(drawn: dict[str, Any], base: dict[str, Any]) -> None:
    """The Ray Tune trainable: one trial = `train_captioner` on the base experiment + `drawn`.

    Reports once per epoch with the trial's model directory as checkpoint. When Ray starts the
    trial again (after a failure, or on --resume), it continues from the newest whole
    checkpoint the trial has on storage, which can be newer than the one in the sweep's saved
    state (a driver killed before saving it), and first reports again the epochs Ray does not
    know of, so that no finished epoch is trained twice and every epoch reaches MLflow once.
    """
    from captioning.checkpoints import epochs_in, newest_whole, storage
    from captioning.gpu import enable_memory_growth, release
    from captioning.prepare import prepare
    from captioning.train import train_captioner

    # Worker processes start with logging unset: show our INFO lines (extraction, resume).
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    enable_memory_growth()
    context = tune.get_context()
    config = spaces.apply(base, drawn, source=f"trial {context.get_trial_id()}")
    model_dir = Path(context.get_trial_dir()) / "model"
    restored = tune.get_checkpoint()  # what the sweep's saved state points at, or None
    known = epochs_in(restored.filesystem, restored.path) if restored else 0
    filesystem, trial_dir = storage(trial_storage(base, context.get_trial_id()))
    newer = newest_whole(filesystem, trial_dir, after=known)
    source = tune.Checkpoint(newer.path, filesystem) if newer else restored
    history: list[dict[str, float]] = []
    if source is not None:
        shutil.rmtree(model_dir, ignore_errors=True)
        source.to_directory(str(model_dir))
        history = json.loads((model_dir / "history.json").read_text(encoding="utf-8"))
        if newer:
            log.info("resuming from %s (epoch %d); the sweep's state knew epoch %d", newer.path,
                     newer.epoch, known)

    prepared = prepare(config, progress=False)
    # 1 in the first report of the trial that ran the encoder, else 0: summed over a sweep,
    # it counts feature extractions (the goal: one per encoder).
    extracted = [int(prepared.features.extracted)]

    def report(epoch: int, metrics: dict[str, float], path: Path | None) -> None:
        flag = extracted.pop() if extracted else 0
        tune.report({**metrics, "features_extracted": flag},
                    checkpoint=tune.Checkpoint.from_directory(str(path)) if path else None)

    for metrics in history[known:]:  # trained and on storage, but not in the sweep's state
        epoch = int(metrics["epoch"])
        report(epoch, metrics, model_dir if epoch == len(history) else None)
    try:
        train_captioner(config, model_dir=model_dir, on_epoch=report, prepared=prepared,
                        resume=bool(history), verbose=0)
    finally:
        release()


def finished(last_result: dict[str, Any] | None, failed: bool) -> bool:
    """Whether a trial is over: it failed, or its last result says done (it returned, or ASHA
    stopped it); a trial ended by Ctrl-C is neither."""
    return failed or bool((last_result or {}).get("done"))


class MlflowTrials(tune.Callback):
    """Mirrors Ray's trial lifecycle into MLflow runs nested under the sweep's parent run.

    Every change bound for MLflow (a trial started, an epoch's metrics, a trial finished or
    failed) is queued and sent in order. When the tracking server cannot be reached, the
    queue is kept (in memory, and in the sweep's saved state) and sent again with exponential
    backoff between Ray Tune's steps, so trials keep training and lose nothing; at the end of
    the sweep it waits up to `RETRY_FOR_S` for the server to come back. The queue is part of
    the state Ray Tune saves with the sweep (get_state), so a --resume sends what was left.
    """

    RETRY_FOR_S = 600.0
    MAX_BACKOFF_S = 30.0
    TIMEOUT_S = 30  # a server that accepts but does not answer holds the driver this long

    def __init__(self, uri: str, experiment: str, parent_run_id: str, base: dict[str, Any],
                 dataset: Any = None):
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self.base, self.dataset = base, dataset  # dataset: the MLflow input every trial logs
        self.max_epochs = int(base["train"]["epochs"])
        self.pending: list[tuple[str, str, Any]] = []  # (kind, trial id, payload), in order
        self.names: dict[str, tuple[str, dict[str, Any]]] = {}  # trial id -> run name, params
        self._tracker: SweepTracker | None = None
        self.runs: dict[str, str] = {}
        self.steps: dict[str, int] = {}  # trial id -> the last epoch its run has in MLflow
        self._reset_backoff()

    def _reset_backoff(self) -> None:
        self._down_since: float | None = None
        self._retry_at, self._delay = 0.0, 1.0

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the sweep's tuner.pkl at its start; the MLflow client is re-made, and
        # each trial's run found again, on restore.
        return {**self.__dict__, "_tracker": None, "runs": {}, "steps": {}}

    def get_state(self) -> dict[str, Any]:
        """Saved by Ray Tune with every snapshot of the sweep's state."""
        return {"pending": list(self.pending), "names": dict(self.names)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.pending, self.names = list(state["pending"]), dict(state["names"])

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.uri, self.experiment, self.parent_run_id)
        return self._tracker

    def _run_id(self, trial_id: str) -> str:
        if trial_id not in self.runs:
            name, params = self.names[trial_id]
            self.runs[trial_id] = self.tracker.trial_run(trial_id, name, params,
                                                         getattr(self, "dataset", None))
        return self.runs[trial_id]

    def _send(self, kind: str, trial_id: str, payload: Any) -> None:
        run_id = self._run_id(trial_id)
        if kind == "epoch":
            step = int(payload["metrics"]["epoch"])
            if trial_id not in self.steps:
                self.steps[trial_id] = self.tracker.last_step(run_id)
            if step <= self.steps[trial_id]:
                return  # in MLflow already: a resumed trial reporting again what it had trained
            self.tracker.log_epoch(run_id, payload["metrics"], payload["timestamp_ms"])
            self.steps[trial_id] = step
        elif kind == "finish":
            checkpoint = payload["checkpoint"]  # Ray keeps a finished trial's last checkpoint
            if checkpoint is None:
                self.tracker.finish_trial(run_id, None, epochs_run=payload["epochs"],
                                          max_epochs=self.max_epochs)
                return
            with checkpoint.as_directory() as folder:
                self.tracker.finish_trial(run_id, Path(folder), epochs_run=payload["epochs"],
                                          max_epochs=self.max_epochs)
        elif kind == "fail":
            self.tracker.fail_trial(run_id, payload)

    def flush(self, wait_s: float = 0.0) -> None:
        """Send what is queued, in order; on an unreachable server, keep it for later (up to
        `wait_s` seconds from now, retrying with backoff, before giving up for this time)."""
        deadline = time.monotonic() + wait_s
        while self.pending:
            now = time.monotonic()
            if now < self._retry_at:
                if self._retry_at > deadline:
                    return
                time.sleep(self._retry_at - now)
            kind, trial_id, payload = self.pending[0]
            try:
                with fail_fast(timeout_s=self.TIMEOUT_S):
                    self._send(kind, trial_id, payload)
            except Exception as error:  # noqa: BLE001 - MLflow raises many types
                if not is_unreachable(error):
                    # Refused for good: say so, and let the rest through.
                    log.warning("MLflow refused the %s of trial %s: %s", kind, trial_id,
                                first_line(error))
                    self.pending.pop(0)
                    continue
                if self._down_since is None:
                    self._down_since = time.time()
                    log.warning(
                        "MLflow tracking server %s cannot be reached (%s); trials keep "
                        "training, their results are kept and sent again with backoff",
                        self.uri, type(error).__name__)
                self._retry_at = time.monotonic() + self._delay
                self._delay = min(2 * self._delay, self.MAX_BACKOFF_S)
                continue
            self.pending.pop(0)
            if self._down_since is not None:
                log.warning("MLflow tracking server %s is back after %.0f s: sending the %d "
                            "kept result(s)", self.uri, time.time() - self._down_since,
                            len(self.pending))
            self._reset_backoff()

    def _queue(self, kind: str, trial: Any, payload: Any = None) -> None:
        if trial.trial_id not in self.names:
            config = spaces.apply(self.base, trial.config).to_dict()
            self.names[trial.trial_id] = (trial_name(trial.config), flatten(config))
        self.pending.append((kind, trial.trial_id, payload))
        self.flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.pending:
            self.flush()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not all(finished(trial.last_result, trial.status == "ERROR") for trial in trials):
            # Stopped by Ctrl-C: one try, no wait; --resume sends what is left.
            self.flush()
            return
        self.flush(wait_s=self.RETRY_FOR_S)
        if self.pending:
            log.error("MLflow tracking server %s was unreachable for %.0f s: %d result(s) of "
                      "this sweep were not sent to it", self.uri, self.RETRY_FOR_S,
                      len(self.pending))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._queue("start", trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        metrics = {k: result[k] for k in ("epoch", *EPOCH_METRICS) if k in result}
        self._queue("epoch", trial, {"metrics": metrics,
                                     "timestamp_ms": int(result.get("timestamp", time.time())
                                                         * 1000)})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._queue("finish", trial, {"checkpoint": trial.checkpoint, "epochs": epochs})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = ""
        if trial.error_file and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
        self._queue("fail", trial, error or "trial failed")


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


def check_gpus(share: float, *, cluster: bool) -> None:
    """Refuse a GPU share no node has (on a cluster: warn, its autoscaler may add one)."""
    if share > 1 and not float(share).is_integer():
        raise ConfigError(f"sweep.resources.gpu: {share:g} is neither a share of one GPU (at "
                          "most 1) nor a whole number of GPUs")
    if share <= 0:
        return
    most = max((node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]),
               default=0.0)
    if share <= most:
        return
    if cluster:
        log.warning("sweep.resources.gpu: each trial asks for %g GPU(s) and no node of the "
                    "Ray cluster has that many now; trials wait until one joins", share)
        return
    raise ConfigError(f"sweep.resources.gpu: each trial asks for {share:g} GPU(s) but this "
                      f"machine has {most:g}; set sweep.resources.gpu=0 to train on the CPU"
                      + (", or a share such as 0.5 to put several trials on one GPU"
                         if most else ""))


def check_encoder_files(encoders: list[Any]) -> None:
    """Build each encoder that reads a weights file or is a model file, here, before Ray:
    a file that does not fit is one ConfigError now, not a failure in every trial."""
    from captioning.encoders import build_encoder
    from captioning.gpu import release

    for encoder in encoders:
        if encoder.model is not None or encoder.weights not in ("imagenet", "none"):
            build_encoder(encoder)
    release()


def _smoke(config: ExperimentConfig) -> ExperimentConfig:
    data = config.to_dict()
    for section, values in SMOKE_OVERRIDES.items():
        data[section].update(values)
    return ExperimentConfig.model_validate(data)


def _storage(config: ExperimentConfig, storage: str | None) -> str:
    path = storage or config.sweep.storage_path or "ray_results"
    return path if "://" in path else str(Path(path).resolve())


def _best(results: Any, metric: str, mode: str, runs: dict[str, str]) -> dict[str, Any] | None:
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
    except RuntimeError:  # no trial reported the metric
        return None
    frame = best.metrics_dataframe
    if frame is None or metric not in frame or frame[metric].isna().all():
        return None
    row = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
    metrics = {k: float(row[k]) for k in row.index
               if k.startswith(("val_", "loss", "accuracy")) and row[k] == row[k]}
    trial_id = best.metrics["trial_id"]
    return {"trial_id": trial_id, "run_id": runs.get(trial_id, ""), "config": best.config,
            "epoch": int(row["epoch"]), "metrics": metrics,
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
    if smoke_test:
        config = _smoke(config)
    if num_samples is not None:
        config = config.model_copy(update={"sweep": config.sweep.model_copy(
            update={"num_samples": num_samples})})
    space_path = Path(search_space or config.sweep.search_space)
    space = spaces.load_search_space(space_path, config)
    uri = resolve_tracking_uri(config.sweep.tracking_uri)
    check_reachable(uri)
    check_encoder_files(space.encoders(config))
    if any(decoder_named(name).grid for name in space.values("model.decoder",
                                                             config.model.decoder)):
        # Some trials read feature maps: every trial caches them, so that each encoder is
        # extracted once for the whole sweep, whichever decoder its first trial drew.
        config = config.model_copy(update={"encoder": config.encoder.model_copy(
            update={"keep_grid": True})})
    if not ray.is_initialized():
        # Without --address, a Ray of this sweep's own: never one another program left running.
        # Its workers (the trials) get the Keras backend that trains (captioning/backend.py).
        backend = training_backend(config.train.backend, config.train.epochs,
                                   config.sweep.resources.gpu)
        ray.init(address=address or "local", log_to_driver=False, include_dashboard=False,
                 runtime_env={"env_vars": {"KERAS_BACKEND": backend}})
        say(f"trials train on Keras' {backend} backend (train.backend: "
            f"{config.train.backend})")
    check_gpus(config.sweep.resources.gpu, cluster=address is not None)

    storage_path = _storage(config, storage)
    sweep_dir = f"{storage_path}/{config.name}"
    # Each trial keeps its best epoch by the metric the sweep ranks trials by.
    config = config.model_copy(update={"train": config.train.model_copy(
        update={"monitor": config.sweep.metric})})
    if config.encoder.cache_dir is None and "://" not in storage_path:
        # One feature cache per sweep storage: shared by every trial, on every node.
        config = config.model_copy(update={"encoder": config.encoder.model_copy(
            update={"cache_dir": Path(storage_path) / "feature_cache"})})
    ensure_data(config, say)
    # Trials run in their own working folders (and on other nodes): paths must not be relative.
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"root": Path(config.data.root).resolve()})})
    # Trials find their own checkpoints on the storage (trial_storage).
    config = config.model_copy(update={"sweep": config.sweep.model_copy(
        update={"storage_path": storage_path})})
    base = config.to_dict()

    dataset = load_dataset(config.data.root, config.data.format,
                           split_seed=config.data.split_seed,
                           keep_one_letter_words=config.data.keep_one_letter_words)
    tracker = SweepTracker(uri, config.name)
    if resume and not tune.Tuner.can_restore(sweep_dir):
        if tracker.find_parent(sweep_dir) is None:
            raise ConfigError(f"--resume: no sweep to resume in {sweep_dir}")
        # Stopped before Ray Tune saved anything: no trial had started.
        say(f"the sweep in {sweep_dir} stopped before it saved its state: starting it again "
            f"(MLflow parent run {tracker.parent_run_id})")
        resume = False
    if resume:
        # The sweep's own state is Ray's, in its storage (any file system or bucket); the
        # MLflow parent run is found again by the storage path it was tagged with.
        if tracker.find_parent(sweep_dir) is None:
            raise ConfigError(f"--resume: {uri} has no parent run for the sweep in {sweep_dir}")
        repaired = repair_state(sweep_dir)
        if repaired:
            log.warning("%s", repaired)
        say(f"resuming sweep {sweep_dir} (MLflow parent run {tracker.parent_run_id})")
    elif tracker.parent_run_id is None:
        params = {
            "experiment_file": str(experiment_path or ""), "search_space_file": str(space_path),
            "search_space": space.to_dict(), "num_samples": config.sweep.num_samples,
            "max_concurrent_trials": config.sweep.max_concurrent_trials,
            "sampler": f"optuna TPESampler(seed={config.train.seed})",
            "scheduler": (f"ASHA(max_t={config.train.epochs}, grace_period="
                          f"{config.sweep.grace_period}, reduction_factor="
                          f"{config.sweep.reduction_factor})"),
            "metric": config.sweep.metric, "mode": config.sweep.mode,
            "resources": config.sweep.resources.model_dump(), "storage": sweep_dir,
            **{f"dataset.{k}": v for k, v in dataset.summary().items()},
            **{f"base.{k}": v for k, v in flatten(base).items()},
        }
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
        from optuna.samplers import TPESampler

        searcher = OptunaSearch(space=space.define_by_run, metric=config.sweep.metric,
                                mode=config.sweep.mode,
                                sampler=TPESampler(seed=config.train.seed))
        scheduler = ASHAScheduler(max_t=config.train.epochs,
                                  grace_period=config.sweep.grace_period,
                                  reduction_factor=config.sweep.reduction_factor,
                                  time_attr="training_iteration")
        tuner = tune.Tuner(
            function,
            tune_config=tune.TuneConfig(
                metric=config.sweep.metric, mode=config.sweep.mode, search_alg=searcher,
                scheduler=scheduler, num_samples=config.sweep.num_samples,
                max_concurrent_trials=config.sweep.max_concurrent_trials,
                trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=config.name, storage_path=storage_path,
                callbacks=[MlflowTrials(uri, config.name, tracker.parent_run_id, base,
                                        dataset_input(dataset)),
                           CheckpointKeeper(sweep_dir), *(callbacks or [])],
                failure_config=tune.FailureConfig(max_failures=config.sweep.max_failures),
                # Ray deletes no checkpoint: CheckpointKeeper does, once it is safe.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    sigint = signal.getsignal(signal.SIGINT)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Ray Tune took over
        tracker.interrupted()
        raise
    finally:
        # Ray Tune's own Ctrl-C handler outlives fit() until a first Ctrl-C: put ours back.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
    # Ray Tune stops on Ctrl-C (SIGINT), ends the running trials and saves the sweep's state
    # for --resume: a trial is done only if it said so (finished or stopped by ASHA) or failed.
    unfinished = config.sweep.num_samples - sum(
        finished(result.metrics, result.error is not None) for result in results)
    if unfinished > 0:
        tracker.interrupted()
        return SweepResult(sweep_dir, uri, tracker.parent_run_id, None, len(results),
                           results.num_errors, [], interrupted=unfinished,
                           experiment_id=tracker.experiment_id)
    keep_only_latest(results)

    ended = f"the sweep ended (its results are in {sweep_dir})"
    with tracking_failure(uri, ended):
        runs = {run.data.tags.get("captioning.trial_id"): run.info.run_id
                for run in tracker.child_runs()}
    best = _best(results, config.sweep.metric, config.sweep.mode, runs)
    rows, timeline = [], []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and len(frame):
            last = frame.iloc[-1]
            extracted = frame.get("features_extracted")
            timeline.append({"trial_id": last["trial_id"], "config": dict(result.config),
                             "epochs": int(last["training_iteration"]),
                             "features_extracted": int(extracted.sum())
                             if extracted is not None else 0,
                             "start": float(last["timestamp"] - last["time_total_s"]),
                             "end": float(last["timestamp"])})
        if frame is not None and config.sweep.metric in frame:
            value = (frame[config.sweep.metric].max() if config.sweep.mode == "max"
                     else frame[config.sweep.metric].min())
            rows.append({"params": dict(result.config), "value": float(value)})
    plot = search_plot(rows, config.sweep.metric, temp_dir() / "search.png")
    with tracking_failure(uri, ended):
        tracker.finish_parent(best, plot)
    return SweepResult(sweep_dir, uri, tracker.parent_run_id, best, len(results),
                       results.num_errors, timeline, experiment_id=tracker.experiment_id)
