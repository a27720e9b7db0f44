"""MLflow tracking: the sweep's parent run and one nested child run per trial.

MLflow moves between versions (stages became aliases, the file store is deprecated, models
became entities of their own); its calls live here, in mlflow_model.py (the logged model) and
in registry.py (promotion, loading by URI), so an upgrade touches those three files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelStatus,
    Metric,
    Param,
    RunStatus,
)
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from captioning.errors import TrackingError, first_line

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRIAL_TAG = "captioning.trial_id"
MODEL_TAG = "captioning.model_id"  # on a trial's run: the id of its logged MLflow model
SWEEP_TAG = "captioning.sweep"
SWEEP_DIR_TAG = "captioning.sweep_dir"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_bleu1", "val_bleu2",
                 "val_bleu3", "val_bleu4", "val_cider", "val_rouge_l")


def resolve_tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextmanager
def fail_fast(timeout_s: int = 5):
    """MLflow retries an HTTP call for minutes by default, blocking its caller; within this,
    a call to a dead server fails at once (and one to a hung server after `timeout_s`)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def using(uri: str):
    """MLflow's fluent API (log_model, register_model) on `uri`, tracking and model registry
    both, for the duration; then exactly the settings there were before.

    mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_*_URI to the environment, and
    MLflow's getters answer a default when nothing is set, so restoring through them would
    leave that default behind for every subprocess; the saved values are put back instead.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    saved = (tracking._tracking_uri, registry._registry_uri,
             {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry._registry_uri = saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_reachable(uri: str) -> None:
    """Raise TrackingError now, before any trial runs, if `uri` cannot be used."""
    try:
        with fail_fast():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises several types for a dead server
        reason = first_line(error)
        raise TrackingError(
            f"MLflow tracking server {uri} cannot be reached ({type(error).__name__}: "
            f"{reason}); start it (mlflow server --host 127.0.0.1 --port 5000) or set "
            f"sweep.tracking_uri / MLFLOW_TRACKING_URI") from None


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` says the tracking server could not be reached or was not ready (worth
    retrying later), rather than that it refused the request."""
    import requests

    seen: BaseException | None = error
    while seen is not None:
        # RetryError: the server answered 429 or 5xx (busy, starting, behind a proxy), which
        # MLflow would retry by itself with its retries on.
        if isinstance(seen, requests.ConnectionError | requests.Timeout
                      | requests.exceptions.RetryError | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def tracking_failure(uri: str, done: str):
    """Turn an MLflow failure into a TrackingError that says what was `done` already."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        reason = first_line(error)
        raise TrackingError(f"{done}, but MLflow at {uri} failed: {reason}") from None


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment `name`, created if need be, marked as model training: MLflow 3's UI then
    opens it on its training runs, not on the GenAI overview (traces, token usage)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def dataset_input(dataset: Any, context: str = "training") -> DatasetInput:
    """A `datasets.Dataset` as an MLflow dataset input: its folder's name, digest, where it is,
    and images and captions per split (the runs table's Dataset column shows name and
    digest; the run page shows the profile)."""
    entity = Dataset(name=Path(dataset.root).name, digest=dataset.digest(), source_type="local",
                     source=json.dumps({"uri": str(Path(dataset.root).resolve()),
                                        "layout": dataset.layout}),
                     profile=json.dumps(dataset.profile()))
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit on a parameter value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"lstm_units": 8}} -> {"model.lstm_units": 8}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class SweepTracker:
    """The MLflow side of one sweep: a parent run, and a child run per Ray trial under it."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None):
        self.uri = uri
        self.client = MlflowClient(uri)
        self.experiment_id = _experiment_id(self.client, experiment)
        self.parent_run_id = parent_run_id

    def start_parent(self, name: str, sweep_dir: str, params: Mapping[str, Any],
                     files: Mapping[str, Path], dataset: DatasetInput | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={SWEEP_TAG: name, SWEEP_DIR_TAG: sweep_dir})
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        if dataset is not None:
            self.client.log_inputs(self.parent_run_id, datasets=[dataset])
        for folder, path in files.items():
            self.client.log_artifact(self.parent_run_id, str(path), artifact_path=folder)
        return self.parent_run_id

    def find_parent(self, sweep_dir: str) -> str | None:
        """The parent run of the sweep stored at `sweep_dir` (the newest, if several)."""
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{SWEEP_DIR_TAG}` = '{sweep_dir}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            return None
        self.parent_run_id = found[0].info.run_id
        self.client.update_run(self.parent_run_id, status="RUNNING")
        return self.parent_run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log `params` (again: the same value twice is allowed), 100 per request."""
        items = [Param(key, _param_value(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def trial_run(self, trial_id: str, name: str, params: Mapping[str, Any],
                  dataset: DatasetInput | None = None) -> str:
        """The child run of a trial: found again on resume or retry, so every trial shows
        once."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                           f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"),
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id}
            ).info.run_id
        self.log_params(run_id, params)  # again if found: a retry may have been cut short
        if dataset is not None and not found:
            self.client.log_inputs(run_id, datasets=[dataset])
        return run_id

    def log_epoch(self, run_id: str, metrics: Mapping[str, Any],
                  timestamp_ms: int | None = None) -> None:
        """One epoch's metrics in one request, stamped with when the trial reported them."""
        step = int(metrics["epoch"])
        stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[
            Metric(name, float(metrics[name]), stamp, step)
            for name in EPOCH_METRICS if name in metrics])

    def last_step(self, run_id: str) -> int:
        """The last epoch run `run_id` has logged (0 if none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, "loss")), default=0)

    def finish_trial(self, run_id: str, checkpoint_dir: Path | None, *, epochs_run: int,
                     max_epochs: int) -> None:
        """Log the best checkpoint and sample captions, mark early stops, end the run."""
        early = epochs_run < max_epochs
        self.client.set_tag(run_id, "early_stopped", str(early).lower())
        self.client.set_tag(run_id, "epochs_run", str(epochs_run))
        if checkpoint_dir is not None:
            self._log_model(run_id, checkpoint_dir)
            samples = checkpoint_dir / "samples.json"
            if samples.is_file():
                rows = json.loads(samples.read_text(encoding="utf-8"))
                self.client.log_table(run_id, data={
                    "image": [r["image"] for r in rows],
                    "prediction": [r["prediction"] for r in rows],
                    "references": [" | ".join(r["references"]) for r in rows],
                }, artifact_file="val_samples.json")
                self._log_sample_grid(run_id, rows)
            attention = checkpoint_dir / "attention.png"
            if attention.is_file():  # where the attention decoder looked, word by word
                self.client.log_artifact(run_id, str(attention))
        self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))

    def _log_sample_grid(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """A picture of validation images with the predicted caption under each."""
        from captioning.figures import sample_grid

        folder = temp_dir()
        grid = sample_grid(rows, folder / "val_samples.png")
        if grid is not None:
            self.client.log_artifact(run_id, str(grid))
        else:
            log.info("run %s: no validation image is readable here; no sample picture", run_id)

    def _log_model(self, run_id: str, checkpoint_dir: Path) -> None:
        """The trial's best epoch as an MLflow model, once; a failure is tagged, not raised,
        so one bad trial cannot stop the sweep (an unreachable server is raised: retry)."""
        from captioning.mlflow_model import log_captioner

        if MODEL_TAG in self.client.get_run(run_id).data.tags:
            return  # logged before an interruption
        logged = [m for m in self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}'")
            if m.status == LoggedModelStatus.READY]
        if logged:  # uploaded, but the server went away before the tag was set
            self.client.set_tag(run_id, MODEL_TAG, logged[0].model_id)
            return
        try:
            metrics = json.loads((checkpoint_dir / "metrics.json").read_text(encoding="utf-8"))
            model_id = log_captioner(self.uri, run_id, checkpoint_dir,
                                     step=int(metrics["epoch"]))
        except Exception as error:  # noqa: BLE001 - reported on the run, the sweep goes on
            if is_unreachable(error):
                raise
            log.warning("run %s: could not log its model: %s", run_id, error)
            self.client.set_tag(run_id, "model_error", f"{type(error).__name__}: {error}"[:5000])
            return
        self.client.set_tag(run_id, MODEL_TAG, model_id)

    def fail_trial(self, run_id: str, error: str) -> None:
        self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))

    def finish_parent(self, best: Mapping[str, Any] | None, plot: Path | None,
                      status: str = "FINISHED") -> None:
        if best is not None:
            self.client.set_tag(self.parent_run_id, "best_trial_id", best["trial_id"])
            self.client.set_tag(self.parent_run_id, "best_run_id", best.get("run_id", ""))
            self.client.log_text(self.parent_run_id, json.dumps(best, indent=2, default=str),
                                 "best_trial.json")
            for name, value in best["metrics"].items():
                self.client.log_metric(self.parent_run_id, f"best_{name}", float(value))
        if plot is not None:
            self.client.log_artifact(self.parent_run_id, str(plot), "search")
        self.client.set_terminated(self.parent_run_id, status=status)

    def interrupted(self) -> None:
        """Mark the sweep and its unfinished trials KILLED (a resume marks them RUNNING)."""
        if self.parent_run_id is None:
            return
        try:
            with fail_fast():
                for run in self.child_runs():
                    if run.info.status == "RUNNING":
                        self.client.set_terminated(run.info.run_id, status="KILLED")
                self.client.set_terminated(self.parent_run_id, status="KILLED")
        except Exception as error:  # noqa: BLE001 - the sweep is stopping anyway
            log.warning("could not mark the sweep KILLED in MLflow: %s", error)

    def child_runs(self) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=10000)


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="captioning-sweep-"))
