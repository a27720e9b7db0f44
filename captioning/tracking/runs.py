"""MLflow runs of a sweep: the parent run, and one nested child run per trial.

What a trial's run holds: its parameters, the dataset as an MLflow input, every epoch's
metrics, its kept model (tracking/pyfunc.py), sample captions and pictures.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
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
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from captioning.config.metrics import EPOCH_METRICS
from captioning.evaluation.figures import sample_grid
from captioning.tracking.client import fail_fast, is_unreachable
from captioning.tracking.pyfunc import log_captioner
from captioning.training import model_files

log = logging.getLogger(__name__)

TRIAL_TAG = "captioning.trial_id"
MODEL_TAG = "captioning.model_id"  # on a trial's run: the id of its logged MLflow model
SWEEP_TAG = "captioning.sweep"
SWEEP_DIR_TAG = "captioning.sweep_dir"
# MLflow 3's UI reads this experiment tag, but mlflow.utils.mlflow_tags does not name it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# Population Based Training: a trial's run logs, every epoch, the value of each key PBT may
# change as the metric pbt/<key>, and each clone of another trial in its pbt.clones tag.
PBT_PREFIX = "pbt/"
CLONES_TAG = "pbt.clones"
MAX_TAG_CHARS = 8000  # what an MLflow tag value holds
# A finished trial's run: the kept epoch's scores (best_val_cider, ..., best_epoch).
KEPT_PREFIX = "best_"
# On a confirmation run (tune/confirm.py): the search trial whose configuration it trains
# again, that configuration (JSON), and its own train.seed.
CONFIRMS_TAG = "captioning.confirms"
CONFIRM_DRAW_TAG = "captioning.confirm_draw"
CONFIRM_SEED_TAG = "captioning.confirm_seed"
SEARCH_SPACE_PARAM = "search_space"  # on a sweep's parent run: its space, as JSON


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


def param_text(value: Any) -> str:
    """A value as every run here records it as an MLflow param: a string as it is, anything
    else as JSON (None -> "null", True -> "true")."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit on a parameter value


def recorded_search_space(sweep: Any) -> dict[str, dict[str, Any]]:
    """The search space a sweep's parent run recorded (SweepTracker.start_parent writes it):
    each key's distribution as the space file gives it; empty where the run has none."""
    text = sweep.data.params.get(SEARCH_SPACE_PARAM)
    if text is None:
        return {}
    try:
        space = json.loads(text)
    except json.JSONDecodeError:
        log.warning("run %s: its %s param is not JSON; read as no search space",
                    sweep.info.run_id, SEARCH_SPACE_PARAM)
        return {}
    return space if isinstance(space, dict) else {}


def _children(parent_run_id: str) -> str:
    """The search_runs filter of the runs nested under run `parent_run_id`."""
    return f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"


def finished_trials(client: MlflowClient, sweep: Any) -> list[Any]:
    """The trial runs of a sweep (its parent run `sweep`) that finished."""
    return client.search_runs(
        [sweep.info.experiment_id],
        filter_string=f"{_children(sweep.info.run_id)} and attributes.status = 'FINISHED'",
        max_results=10000)


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
        """The sweep's parent run, recording `params` (its space under SEARCH_SPACE_PARAM,
        read back by recorded_search_space), `dataset` and `files` (folder -> file)."""
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
        items = [Param(key, param_text(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def trial_run(self, trial_id: str, name: str, params: Mapping[str, Any],
                  dataset: DatasetInput | None = None, tags: Mapping[str, str] | None = None
                  ) -> str:
        """The child run of a trial (with `tags`): found again on resume or retry, so every
        trial shows once."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                           f"{_children(self.parent_run_id)}"),
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, TRIAL_TAG: trial_id,
                      **(tags or {})}
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
            Metric(name, float(value), stamp, step) for name, value in metrics.items()
            if name in EPOCH_METRICS or name.startswith(PBT_PREFIX)])

    def record_clone(self, run_id: str, clone: Mapping[str, Any], name: str) -> None:
        """Add a PBT clone (the trial and epoch continued from, the whole draw taken) to the
        run's `pbt.clones` tag, a JSON list, oldest first (as many of the latest as an MLflow
        tag holds), and name the run after the draw it now trains (its params stay its
        first draw: MLflow params cannot change)."""
        tags = self.client.get_run(run_id).data.tags
        try:
            clones = json.loads(tags.get(CLONES_TAG, "[]"))
        except ValueError:
            clones = []
        clones = [*clones, dict(clone)]
        while len(clones) > 1 and len(json.dumps(clones)) > MAX_TAG_CHARS:
            clones.pop(0)
        self.client.set_tag(run_id, CLONES_TAG, json.dumps(clones)[:MAX_TAG_CHARS])
        self.client.set_tag(run_id, MLFLOW_RUN_NAME, name)

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
            self._log_kept(run_id, checkpoint_dir)
            samples = checkpoint_dir / model_files.SAMPLES
            if samples.is_file():
                rows = json.loads(samples.read_text(encoding="utf-8"))
                self.client.log_table(run_id, data={
                    "image": [r["image"] for r in rows],
                    "prediction": [r["prediction"] for r in rows],
                    "references": [" | ".join(r["references"]) for r in rows],
                }, artifact_file="val_samples.json")
                self._log_sample_grid(run_id, rows)
            attention = checkpoint_dir / model_files.ATTENTION
            if attention.is_file():  # where the attention decoder looked, word by word
                self.client.log_artifact(run_id, str(attention))
        self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))

    def _log_kept(self, run_id: str, checkpoint_dir: Path) -> None:
        """The kept epoch's validation scores as `best_<metric>` (and `best_epoch`): the runs
        table's columns that equal what promote ranks by. Its `<metric>` columns are MLflow's
        latest value, the last epoch's, which early stopping has already passed by."""
        kept = model_files.read_metrics(checkpoint_dir)
        step, stamp = int(kept["epoch"]), int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[
            Metric(f"{KEPT_PREFIX}{name}", float(value), stamp, step)
            for name, value in kept.items()
            if name == "epoch" or name in EPOCH_METRICS and name.startswith("val_")])

    def _log_sample_grid(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """A picture of validation images with the predicted caption under each."""
        with tempfile.TemporaryDirectory(prefix="captioning-samples-") as folder:
            grid = sample_grid(rows, Path(folder) / "val_samples.png")
            if grid is not None:
                self.client.log_artifact(run_id, str(grid))
                return
        log.info("run %s: no validation image is readable here; no sample picture", run_id)

    def _log_model(self, run_id: str, checkpoint_dir: Path) -> None:
        """The trial's best epoch as an MLflow model, once; a failure is tagged, not raised,
        so one bad trial cannot stop the sweep (an unreachable server is raised: retry)."""
        if MODEL_TAG in self.client.get_run(run_id).data.tags:
            return  # logged before an interruption
        logged = [m for m in self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}'")
            if m.status == LoggedModelStatus.READY]
        if logged:  # uploaded, but the server went away before the tag was set
            self.client.set_tag(run_id, MODEL_TAG, logged[0].model_id)
            return
        try:
            metrics = model_files.read_metrics(checkpoint_dir)
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
                      status: str = "FINISHED", pareto: Mapping[str, Path] | None = None
                      ) -> None:
        """Mark the sweep's run finished, with its best trial, the search plot and, for a
        multi-objective sweep, the Pareto files (name -> file) under pareto/."""
        for path in (pareto or {}).values():
            self.client.log_artifact(self.parent_run_id, str(path), "pareto")
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
            [self.experiment_id], filter_string=_children(self.parent_run_id),
            max_results=10000)
