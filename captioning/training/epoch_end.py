"""What ends every epoch, cross-entropy or SCST: greedy captions scored, the model directory's
files written whole (training/model_files.py), early stopping told (training/early_stopping.py),
then the epoch handed to the caller's `on_epoch`.

An epoch's files are written under temp names first and renamed into place only once all are
written, so the directory never mixes two epochs: if the disk fills, WriteError names the file
and the previous epoch's checkpoint is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from captioning.atomic import Writer, write_whole
from captioning.config.schema import ExperimentConfig
from captioning.errors import TrainingError
from captioning.evaluation.figures import attention_figure
from captioning.evaluation.scores import caption_scores, strip_markers
from captioning.features.cache import image_inputs
from captioning.models.build import step_decoder
from captioning.models.decoding import generate
from captioning.models.protocol import Stepper
from captioning.models.registry import decoder_named
from captioning.training import model_files
from captioning.training.checkpoints import manifest_writer
from captioning.training.early_stopping import BestEpoch
from captioning.training.prepare import Prepared

EpochCallback = Callable[[int, dict[str, float], Path], None]


class EpochEnd(keras.callbacks.Callback):
    """Scores greedy captions, keeps the best checkpoint, then hands the epoch to `on_epoch`.

    `history` holds the epochs a resumed run has done: they tell `stopping` its best epoch.
    In a cross-entropy `fit`, the epoch whose patience runs out stops training.
    """

    def __init__(self, config: ExperimentConfig, prepared: Prepared, model_dir: Path,
                 on_epoch: EpochCallback | None, history: list[dict[str, float]]):
        super().__init__()
        self.config, self.prepared, self.model_dir, self.on_epoch = (
            config, prepared, model_dir, on_epoch)
        val = sorted(prepared.dataset.splits["val"])
        rng = np.random.default_rng(config.train.seed)
        count = min(config.train.score_images, len(val))
        self.score_images = sorted(rng.choice(val, size=count, replace=False).tolist())
        self.history = list(history)
        self.stopping = BestEpoch(config.train.monitor, config.train.patience, history)
        self.decoder: Stepper | None = None  # shares the model's layers: built once
        self.started = time.perf_counter()

    @property
    def best(self) -> dict[str, float] | None:
        """The metrics of the epoch kept as model.keras ("epoch" included)."""
        return self.stopping.best

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        self._refuse_non_finite(epoch + 1, logs)
        # What the epoch cost, beside what it scored (a sweep may trade one for the other):
        # training and validation loss, not the caption scoring below.
        logs["epoch_seconds"] = time.perf_counter() - self.started
        logs["param_count"] = float(self.model.count_params())
        logs.setdefault("scst", 0.0)
        logs.setdefault("learning_rate", learning_rate(self.model))
        if self.score_images:
            inputs = image_inputs(self.prepared.features, self.score_images,
                                  self.config.reads_grid)
            if self.decoder is None:  # built, and traced for this batch once, untimed
                self.decoder = step_decoder(self.model)
                generate(self.decoder, self.prepared.vocab, inputs,
                         max_length=self.config.decode.max_length)
            started = time.perf_counter()
            captions = generate(self.decoder, self.prepared.vocab, inputs,
                                max_length=self.config.decode.max_length)
            # Greedy, the validation images scored, one batch, on this trial's device.
            logs["decode_ms_per_caption"] = (
                (time.perf_counter() - started) * 1000 / len(self.score_images))
            references = {n: self.prepared.dataset.captions[n] for n in self.score_images}
            scores = caption_scores(references, dict(zip(self.score_images, captions,
                                                         strict=True)))
            logs.update({f"val_{name}": value for name, value in scores.items()})
        metrics = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        history = [*self.history, metrics]
        improved = self.stopping.is_better(metrics)
        files: dict[str, Writer] = {}
        if improved:
            files[model_files.MODEL] = self.model.save
            if self.score_images:
                files[model_files.SAMPLES] = model_files.json_writer([
                    {"image": name, "path": str(self.prepared.dataset.image_path(name)),
                     "prediction": caption,
                     "references": [strip_markers(r) for r in references[name]]}
                    for name, caption in zip(self.score_images, captions, strict=True)][:50])
            files[model_files.METRICS] = model_files.json_writer(metrics)
            if decoder_named(self.config.model.decoder).attends and self.score_images:
                files[model_files.ATTENTION] = self._attention_figure()
        files[model_files.LAST] = self.model.save
        # resume reads how far training got here
        files[model_files.HISTORY] = model_files.json_writer(history)
        files[model_files.MANIFEST] = manifest_writer(self.model_dir, epoch + 1, list(files))
        write_whole({self.model_dir / name: write for name, write in files.items()},
                    "checkpoint", self._kept())
        self.history = history
        self.stopping.update(metrics)  # once its files are on disk
        if self.stopping.patience_ran_out:
            self.model.stop_training = True  # ends a cross-entropy fit; SCST asks `stopping`
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, metrics, self.model_dir)

    def _refuse_non_finite(self, epoch: int, logs: dict) -> None:
        """Stop at an epoch whose loss is infinite or NaN, before it replaces a checkpoint: a
        diverged model only captions nonsense, and a sweep must fail it, not rank it."""
        loss = float(logs.get("loss", 0.0))
        if math.isfinite(loss):
            return
        kept = (f"the model of epoch {int(self.best['epoch'])} is kept in {self.model_dir}"
                if self.best is not None else "no epoch was kept")
        stage, rate = ("SCST ", "train.scst.learning_rate") if logs.get("scst") else (
            "", "train.learning_rate")
        raise TrainingError(f"the {stage}training loss became {loss} in epoch {epoch}, so "
                            f"training stopped and {kept}; lower {rate} "
                            f"({learning_rate(self.model):g} at the end of the epoch) or set "
                            "train.clip_norm")

    def _attention_figure(self, count: int = 4) -> Writer:
        """Where the decoder looks for each word, on a few validation images."""
        from PIL import Image

        names = self.score_images[:count]
        maps: list[np.ndarray] = []
        captions = generate(self.decoder, self.prepared.vocab,
                            image_inputs(self.prepared.features, names, True),
                            max_length=self.config.decode.max_length, attention=maps)
        items = []
        for name, caption, looked in zip(names, captions, maps, strict=True):
            with Image.open(self.prepared.dataset.image_path(name)) as image:
                items.append((image.copy(), caption.split(), looked))
        return lambda path: attention_figure(items, path)

    def _kept(self) -> str:
        """What a failed write leaves in the model directory, for the error message."""
        if not self.history:
            return "no earlier epoch was saved"
        last = int(self.history[-1]["epoch"])
        best = int(self.best["epoch"]) if self.best is not None else last
        if best == last:
            return f"the previous checkpoint (epoch {best}) is intact"
        return f"the previous checkpoint (best epoch {best}, last epoch {last}) is intact"


def learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule's, at the steps taken)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
