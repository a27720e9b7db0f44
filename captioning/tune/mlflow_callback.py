"""A Ray Tune callback that mirrors the sweep's trials into MLflow: one run per trial, nested
under the sweep's parent run, with every epoch's metrics, the kept model and sample captions.

Why not Ray's own `ray.air.integrations.mlflow.MLflowLoggerCallback`: it makes one flat run
per trial (no parent run to group a sweep, so `promote` could not find a sweep's trials), it
logs through the fluent API (one tracking URI per process), and it loses what it could not
send while the tracking server is down. This one queues every change, keeps the queue in the
sweep's saved state, sends it again with backoff, and finds each trial's run again on resume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from captioning.config.metrics import EPOCH_METRICS
from captioning.config.schema import ExperimentConfig
from captioning.errors import first_line
from captioning.tracking.client import fail_fast, is_unreachable
from captioning.tracking.runs import (
    CONFIRM_DRAW_TAG,
    CONFIRM_SEED_TAG,
    CONFIRMS_TAG,
    MAX_TAG_CHARS,
    PBT_PREFIX,
    SweepTracker,
    flatten,
)
from captioning.tune import search_space as spaces
from captioning.tune.trainable import CLONED_EPOCH, CLONED_FROM, trial_name

log = logging.getLogger(__name__)


def finished(last_result: dict[str, Any] | None, failed: bool, max_epochs: int) -> bool:
    """Whether a trial is over: it failed, its last result says done (it returned, or ASHA
    stopped it), or it reported its last epoch (Ctrl-C may come before it returns, and a
    resumed trial with nothing left to train reports nothing new); a trial Ctrl-C ended
    mid-way is none of these."""
    result = last_result or {}
    return failed or bool(result.get("done")) or int(result.get("epoch", 0)) >= max_epochs


def trial_epochs(base: dict[str, Any], drawn: dict[str, Any] | None) -> int:
    """The most epochs a trial reports: cross-entropy and SCST, as its draw has them."""
    return spaces.apply(base, drawn or {}).train.total_epochs


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
                 dataset: Any = None, perturbed: tuple[str, ...] = ()):
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self.base, self.dataset = base, dataset  # dataset: the MLflow input every trial logs
        self.perturbed = tuple(perturbed)  # the keys PBT changes in running trials
        self.max_epochs = int(base["train"]["epochs"])  # of sweeps saved before SCST
        # trial id -> its resolved config, made once from the base and its first draw (what
        # its MLflow params record; PBT perturbs no key that changes its epochs).
        self.configs: dict[str, ExperimentConfig] = {}
        self.pending: list[tuple[str, str, Any]] = []  # (kind, trial id, payload), in order
        self.names: dict[str, tuple[str, dict[str, Any]]] = {}  # trial id -> run name, params
        self._tracker: SweepTracker | None = None
        self.runs: dict[str, str] = {}
        self.tags: dict[str, dict[str, str]] = {}  # trial id -> its run's own tags
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
        return {"pending": list(self.pending), "names": dict(self.names),
                "tags": dict(self.__dict__.get("tags", {}))}

    def set_state(self, state: dict[str, Any]) -> None:
        self.pending, self.names = list(state["pending"]), dict(state["names"])
        self.tags = dict(state.get("tags", {}))  # a sweep saved before confirmation runs

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.uri, self.experiment, self.parent_run_id)
        return self._tracker

    def _run_id(self, trial_id: str) -> str:
        if trial_id not in self.runs:
            name, params = self.names[trial_id]
            tags = self.__dict__.get("tags", {}).get(trial_id)
            self.runs[trial_id] = self.tracker.trial_run(trial_id, name, params,
                                                         getattr(self, "dataset", None), tags)
        return self.runs[trial_id]

    def _send(self, kind: str, trial_id: str, payload: Any) -> None:
        run_id = self._run_id(trial_id)
        if kind == "epoch":
            step = int(payload["metrics"]["epoch"])
            if trial_id not in self.steps:
                self.steps[trial_id] = self.tracker.last_step(run_id)
            clone = payload.get("clone")
            if clone is not None:  # PBT: its epochs after the one it continued from, anew
                self.tracker.record_clone(run_id, clone, payload["name"])
                self.steps[trial_id] = min(self.steps[trial_id], int(clone["epoch"]))
            if step <= self.steps[trial_id]:
                return  # in MLflow already: a resumed trial reporting again what it had trained
            self.tracker.log_epoch(run_id, payload["metrics"], payload["timestamp_ms"])
            self.steps[trial_id] = step
        elif kind == "finish":
            checkpoint = payload["checkpoint"]  # Ray keeps a finished trial's last checkpoint
            if checkpoint is None:
                self.tracker.finish_trial(run_id, None, epochs_run=payload["epochs"],
                                          max_epochs=payload.get("max_epochs",
                                                                 self.max_epochs))
                return
            with checkpoint.as_directory() as folder:
                self.tracker.finish_trial(run_id, Path(folder), epochs_run=payload["epochs"],
                                          max_epochs=payload.get("max_epochs",
                                                                 self.max_epochs))
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

    def config_of(self, trial: Any) -> ExperimentConfig:
        configs = self.__dict__.setdefault("configs", {})  # not in a sweep saved before it
        if trial.trial_id not in configs:
            configs[trial.trial_id] = spaces.apply(self.base, trial.config)
        return configs[trial.trial_id]

    def _queue(self, kind: str, trial: Any, payload: Any = None) -> None:
        if trial.trial_id not in self.names:
            params = flatten(self.config_of(trial).to_dict())
            self.names[trial.trial_id] = (trial_name(trial.config), params)
            confirm = trial.config.get(spaces.CONFIRM)
            if isinstance(confirm, dict):  # a confirmation run: tagged with what it confirms
                self.__dict__.setdefault("tags", {})[trial.trial_id] = {
                    CONFIRMS_TAG: str(confirm[spaces.CONFIRMS]),
                    CONFIRM_SEED_TAG: str(confirm["train.seed"]),
                    CONFIRM_DRAW_TAG: json.dumps(spaces.drawn_values(
                        {k: v for k, v in confirm.items()
                         if k not in ("train.seed", spaces.CONFIRMS)}),
                        sort_keys=True, default=str)[:MAX_TAG_CHARS]}
        self.pending.append((kind, trial.trial_id, payload))
        self.flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.pending:
            self.flush()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not all(finished(trial.last_result, trial.status == "ERROR",
                            self.config_of(trial).train.total_epochs) for trial in trials):
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
        # The values the epoch trained with: the trial's own config, as its worker reported
        # it (PBT may already have changed trial.config for the epochs to come).
        config = result.get("config") or trial.config
        perturbed = {key: config[key] for key in getattr(self, "perturbed", ()) if key in config}
        metrics.update({PBT_PREFIX + key: value for key, value in perturbed.items()})
        payload = {"metrics": metrics,
                   "timestamp_ms": int(result.get("timestamp", time.time()) * 1000)}
        if result.get(CLONED_FROM):  # the trial's whole draw is the clone's now
            payload["clone"] = {"from_trial": result[CLONED_FROM],
                                "epoch": int(result.get(CLONED_EPOCH, 0)),
                                "draw": spaces.drawn_values(config)}
            payload["name"] = trial_name(config)
        self._queue("epoch", trial, payload)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._queue("finish", trial, {"checkpoint": trial.checkpoint, "epochs": epochs,
                                      "max_epochs": self.config_of(trial).train.total_epochs})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = ""
        if trial.error_file and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
        self._queue("fail", trial, error or "trial failed")
