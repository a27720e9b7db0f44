"""The Ray Tune trainable: one trial is `train_captioner` on the base experiment plus what the
searcher drew, reporting once per epoch with the model directory as its checkpoint.

A plain function (`train_trial`), as Ray Tune's own examples write one; tune/launcher.py
wraps it with the base config and the trial's resources.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
from pathlib import Path
from typing import Any

from ray import tune

from captioning.features import hub
from captioning.log import show_info_logs
from captioning.training.checkpoints import epochs_in, newest_whole, storage
from captioning.training.devices import enable_memory_growth, release
from captioning.training.model_files import read_history
from captioning.training.prepare import prepare
from captioning.training.train import train_captioner
from captioning.tune import search_space as spaces

log = logging.getLogger(__name__)


def trial_name(drawn: dict[str, Any]) -> str:
    """A name a person can tell trials apart by in the MLflow UI."""
    confirming = isinstance(drawn.get(spaces.CONFIRM), dict)
    drawn = spaces.drawn_values(drawn)
    parts = []
    if "model.decoder" in drawn:
        parts.append(str(drawn["model.decoder"]))
    if "encoder.name" in drawn:
        parts.append(hub.label(str(drawn["encoder.name"])))
    if "model.lstm_units" in drawn:
        parts.append(f"w{drawn['model.lstm_units']}")
    if "train.learning_rate" in drawn:
        parts.append(f"lr{drawn['train.learning_rate']:.1e}")
    if "train.batch_size" in drawn:
        parts.append(f"b{drawn['train.batch_size']}")
    if "embedding" in drawn:
        parts.append(str(drawn["embedding"]).replace("spacy:", "spacy-"))
    if confirming:  # a confirmation run of sweep.confirm (tune/confirm.py): its new seed
        parts.append(f"seed {drawn['train.seed']}")
    return " ".join(parts) or "trial"


TRIAL_DIR = "trial_{}"  # a trial's folder in the sweep's storage, by trial id

# What a trial reports besides its epoch's metrics, for the MLflow callback and the launcher:
# 1 in the first report of the trial that ran the encoder, else 0; and in the first report
# after Population Based Training cloned another trial, that trial's id and the epoch after
# which this one continues from its checkpoint.
FEATURES_EXTRACTED = "features_extracted"
CLONED_FROM = "pbt_cloned_from"
CLONED_EPOCH = "pbt_cloned_epoch"


def kept_row(frame: Any, metric: str, mode: str) -> Any:
    """A trial's report of its kept epoch (the best by `metric`) from its results' frame
    (Ray's metrics_dataframe), or None when no epoch reported the metric."""
    if frame is None or metric not in frame or frame[metric].isna().all():
        return None
    return frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]


def trial_dirname(trial: Any) -> str:
    return TRIAL_DIR.format(trial.trial_id)


def trial_storage(base: dict[str, Any], trial_id: str, experiment: str | None = None) -> str:
    """Where Ray Tune keeps trial `trial_id`'s checkpoints: a path or URI on the storage, in
    the folder of Ray experiment `experiment` (the sweep's name, or its confirmation's)."""
    return (f"{base['sweep']['storage_path']}/{experiment or base['name']}/"
            f"{TRIAL_DIR.format(trial_id)}")


def cloned_from(restored: Any, trial_id: str) -> str | None:
    """The id of the trial whose checkpoint `restored` is, when it is not trial `trial_id`'s
    own (Population Based Training exploiting another trial), else None."""
    if restored is None:
        return None
    folder = posixpath.basename(posixpath.dirname(restored.path.rstrip("/")))
    if folder == TRIAL_DIR.format(trial_id):
        return None
    prefix = TRIAL_DIR.format("")
    return folder[len(prefix):] if folder.startswith(prefix) else folder


def train_trial(drawn: dict[str, Any], base: dict[str, Any]) -> None:
    """The Ray Tune trainable: one trial = `train_captioner` on the base experiment + `drawn`.

    Reports once per epoch with the trial's model directory as checkpoint. When Ray starts the
    trial again (after a failure, or on --resume), it continues from the newest whole
    checkpoint the trial has on storage, which can be newer than the one in the sweep's saved
    state (a driver killed before saving it), and first reports again the epochs Ray does not
    know of, so that no finished epoch is trained twice and every epoch reaches MLflow once.
    """
    # Worker processes start with logging unset: show our INFO lines (extraction, resume).
    show_info_logs()
    enable_memory_growth()
    context = tune.get_context()
    config = spaces.apply(base, drawn, source=f"trial {context.get_trial_id()}")
    model_dir = Path(context.get_trial_dir()) / "model"
    restored = tune.get_checkpoint()  # what the sweep's saved state points at, or None
    known = epochs_in(restored.filesystem, restored.path) if restored else 0
    filesystem, trial_dir = storage(trial_storage(base, context.get_trial_id(),
                                                       context.get_experiment_name()))
    # Population Based Training restarts a trial from another trial's checkpoint, with that
    # trial's hyperparameters perturbed: continue from it, not from one of this trial's own.
    cloned = cloned_from(restored, context.get_trial_id())
    newer = None if cloned else newest_whole(filesystem, trial_dir, after=known)
    source = tune.Checkpoint(newer.path, filesystem) if newer else restored
    history: list[dict[str, float]] = []
    if source is not None:
        shutil.rmtree(model_dir, ignore_errors=True)
        source.to_directory(str(model_dir))
        history = read_history(model_dir)
        if newer:
            log.info("resuming from %s (epoch %d); the sweep's state knew epoch %d", newer.path,
                     newer.epoch, known)

    prepared = prepare(config, progress=False)
    # 1 in the first report of the trial that ran the encoder, else 0: summed over a sweep,
    # it counts feature extractions (the goal: one per encoder).
    extracted = [int(prepared.features.extracted)]

    if cloned:
        log.info("PBT: continuing from trial %s after epoch %d, with %s", cloned, known,
                 ", ".join(f"{key}={value}" for key, value in
                           spaces.drawn_values(drawn).items()))
    # The first report after a clone says so (the MLflow run records it, tune/mlflow_callback).
    clone = [{CLONED_FROM: cloned, CLONED_EPOCH: known}] if cloned else []

    def report(epoch: int, metrics: dict[str, float], path: Path | None) -> None:
        flag = extracted.pop() if extracted else 0
        tune.report({**metrics, FEATURES_EXTRACTED: flag, **(clone.pop() if clone else {})},
                    checkpoint=tune.Checkpoint.from_directory(str(path)) if path else None)

    for metrics in history[known:]:  # trained and on storage, but not in the sweep's state
        epoch = int(metrics["epoch"])
        report(epoch, metrics, model_dir if epoch == len(history) else None)
    try:
        train_captioner(config, model_dir=model_dir, on_epoch=report, prepared=prepared,
                        resume=bool(history), verbose=0)
    finally:
        release()
