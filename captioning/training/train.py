"""`train_captioner`: the one training function, for the CLI and for every sweep trial.

Each epoch: train loss and masked accuracy, validation loss and accuracy, and validation
BLEU-1..4, CIDEr-D and ROUGE-L of greedy captions for a bounded sample of validation images.
The best epoch (by train.monitor) is kept as a model directory:

    model.keras   the Keras model (loaded in safe mode)
    last.keras    the latest epoch with its optimizer state, to resume from
    samples.json  greedy captions of validation images beside their references (best epoch)
    attention.png where the attention decoder looked for each word, on a few of them
    vocab.json    the vocabulary
    config.json   the resolved experiment config
    metrics.json  the best epoch's metrics; history.json every epoch's
    checkpoint.json  the epoch and every file's SHA-256, so a copy can be checked whole

With `train.scst.epochs`, self-critical sequence training (training/scst.py) follows the
cross-entropy epochs: it starts from the best of them with an optimizer of its own and goes
on in the same history, so early stopping, the kept epoch, MLflow, ASHA and resume treat its
epochs as further epochs (`scst` is 1 in theirs).

An epoch's files are written under temp names first and renamed into place only once all are
written, so the directory never mixes two epochs: if the disk fills, WriteError names the file
and the previous epoch's checkpoint is left as it was.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from captioning.atomic import Writer, write_whole
from captioning.config.loading import save_config
from captioning.config.schema import ExperimentConfig
from captioning.data.batches import CaptionBatches, encode_captions
from captioning.errors import DatasetError, ModelDirError, TrainingError
from captioning.evaluation.figures import attention_figure
from captioning.evaluation.reward import CiderReward
from captioning.evaluation.scores import caption_scores, strip_markers
from captioning.features.cache import FeatureSet, image_inputs
from captioning.jsonfile import read_json
from captioning.models.build import (
    MaskedLoss,
    build_model,
    compile_model,
    compile_scst,
    precision,
    step_decoder,
)
from captioning.models.decoding import generate
from captioning.models.embeddings import load_vectors, spacy_embedding_matrix
from captioning.models.protocol import Stepper
from captioning.models.registry import decoder_named
from captioning.training.checkpoints import MANIFEST, manifest_writer
from captioning.training.finetune import build_tuned, tail_scale
from captioning.training.perturb import changes, continue_with
from captioning.training.prepare import Prepared, prepare
from captioning.training.scst import ScstStep, StepTimes, validation_metrics

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float], Path], None]


@dataclass
class TrainResult:
    model_dir: Path
    best: dict[str, float]  # metrics of the best epoch ("epoch" included)
    history: list[dict[str, float]]
    stopped_early: bool


def model_inputs(features: FeatureSet, train_rows: np.ndarray, grid: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(what the model reads per image, the training images' per-channel mean and variance).

    Pooled vectors (images, channels) as float32 in memory; or the feature maps (images,
    positions, channels) as they are cached, memory-mapped: batches read only their rows. A
    map's variance over the training images' positions comes from each image's mean of
    squares, so no map is read whole.
    """
    mean = features.array[train_rows].astype("float64").mean(axis=0)
    if not grid:
        vectors = features.array.astype("float32")
        return vectors, mean.astype("float32"), vectors[train_rows].var(axis=0)
    squares = features.grid_sq[train_rows].astype("float64").mean(axis=0)
    var = np.maximum(squares - mean**2, 0.0)
    return features.grid, mean.astype("float32"), var.astype("float32")


def caption_split(prepared: Prepared, split: str, max_length: int
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(feature row per caption, token ids per caption) for every caption of a split."""
    rows, captions = [], []
    for name in prepared.dataset.splits[split]:
        for caption in prepared.dataset.captions[name]:
            rows.append(prepared.features.index[name])
            captions.append(caption)
    return np.asarray(rows, "int64"), encode_captions(captions, prepared.vocab, max_length)


class _EpochEnd(keras.callbacks.Callback):
    """Scores greedy captions, keeps the best checkpoint, then hands the epoch to `on_epoch`."""

    def __init__(self, config: ExperimentConfig, prepared: Prepared, model_dir: Path,
                 on_epoch: EpochCallback | None):
        super().__init__()
        self.config, self.prepared, self.model_dir, self.on_epoch = (
            config, prepared, model_dir, on_epoch)
        val = sorted(prepared.dataset.splits["val"])
        rng = np.random.default_rng(config.train.seed)
        count = min(config.train.score_images, len(val))
        self.score_images = sorted(rng.choice(val, size=count, replace=False).tolist())
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.decoder: Stepper | None = None  # shares the model's layers: built once
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def _improved(self, metrics: dict[str, float]) -> bool:
        if self.best is None:
            return True
        key, mode = self.config.train.monitor, self.config.train.monitor_mode
        return metrics[key] < self.best[key] if mode == "min" else metrics[key] > self.best[key]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        self._refuse_non_finite(epoch + 1, logs)
        # What the epoch cost, beside what it scored (a sweep may trade one for the other):
        # training and validation loss, not the caption scoring below.
        logs["epoch_seconds"] = time.perf_counter() - self.started
        logs["param_count"] = float(self.model.count_params())
        logs.setdefault("scst", 0.0)
        logs.setdefault("learning_rate", _learning_rate(self.model))
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
        improved = self._improved(metrics)
        files: dict[str, Writer] = {}
        if improved:
            files["model.keras"] = self.model.save
            if self.score_images:
                files["samples.json"] = _json([
                    {"image": name, "path": str(self.prepared.dataset.image_path(name)),
                     "prediction": caption,
                     "references": [strip_markers(r) for r in references[name]]}
                    for name, caption in zip(self.score_images, captions, strict=True)][:50])
            files["metrics.json"] = _json(metrics)
            if decoder_named(self.config.model.decoder).attends and self.score_images:
                files["attention.png"] = self._attention_figure()
        files["last.keras"] = self.model.save
        files["history.json"] = _json(history)  # resume reads how far training got here
        files[MANIFEST] = manifest_writer(self.model_dir, epoch + 1, list(files))
        write_whole({self.model_dir / name: write for name, write in files.items()},
                    "checkpoint", self._kept())
        self.history = history
        if improved:
            self.best = metrics
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
                            f"({_learning_rate(self.model):g} at the end of the epoch) or set "
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


def _patience_ran_out(config: ExperimentConfig, done: list[dict[str, float]]) -> bool:
    """Whether early stopping had ended the cross-entropy epochs in `done` (a resume then
    goes on to SCST rather than training them further)."""
    scores = [epoch.get(config.train.monitor) for epoch in done]
    if not scores or None in scores:
        return False
    best = (np.argmin if config.train.monitor_mode == "min" else np.argmax)(scores)
    return len(done) - (int(best) + 1) >= config.train.patience


def _learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule's, at the steps taken)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _json(data: object) -> Writer:
    return lambda path: path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def default_model_dir(config: ExperimentConfig) -> Path:
    return Path(config.output_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_captioner(config: ExperimentConfig, *, model_dir: Path | None = None,
                    on_epoch: EpochCallback | None = None, prepared: Prepared | None = None,
                    verbose: int | None = None, resume: bool = False) -> TrainResult:
    """Train the captioner `config` describes (any decoder); keep its best epoch in `model_dir`.

    `on_epoch(epoch, metrics, model_dir)` is called after every epoch, once that epoch's
    files are on disk. `prepared` lets a caller reuse data and features. With `resume`, a
    `model_dir` holding last.keras and history.json continues after its last epoch, with the
    optimizer state it had (early stopping's patience starts afresh).
    """
    # A spaCy model that cannot load must stop the run before features are extracted.
    vectors = (load_vectors(config.embedding.removeprefix("spacy:"))
               if config.embedding.startswith("spacy:") else None)
    prepared = prepared or prepare(config)
    model_dir = Path(model_dir or default_model_dir(config))
    model_dir.mkdir(parents=True, exist_ok=True)
    saved = model_dir / "config.json"  # what a model to resume was trained with
    before = read_json(saved, ModelDirError) if resume and saved.is_file() else None
    write_whole({model_dir / "config.json": lambda path: save_config(config, path),
                 model_dir / "vocab.json": prepared.vocab.save},
                "checkpoint", f"{model_dir} is as it was")

    # The dtype policy covers the model, not the features: they are cached whatever it is.
    with precision(config.train.precision):
        return _fit(config, prepared, model_dir, on_epoch, vectors, verbose, resume, before)


def _fit(config: ExperimentConfig, prepared: Prepared, model_dir: Path,
         on_epoch: EpochCallback | None, vectors: object, verbose: int | None,
         resume: bool, before: dict | None = None) -> TrainResult:
    keras.utils.set_random_seed(config.train.seed)
    length = config.train.max_caption_length
    train_rows, train_seqs = caption_split(prepared, "train", length)
    if not train_seqs:
        raise DatasetError(f"{config.data.root}: the train split has no caption of a readable "
                           f"image ({len(prepared.dataset.skipped)} image(s) skipped; "
                           "`captioning prepare` lists them)")
    val_rows, val_seqs = caption_split(prepared, "val", length)
    grid = config.reads_grid
    features, mean, var = model_inputs(prepared.features, np.unique(train_rows), grid)

    done: list[dict[str, float]] = []
    batch = config.train.batch_size
    train_batches = CaptionBatches(features, train_rows, train_seqs, batch, shuffle=True,
                                   seed=config.train.seed)
    if resume and (model_dir / "last.keras").is_file() and (model_dir / "history.json").is_file():
        model = keras.saving.load_model(model_dir / "last.keras", safe_mode=True)
        done = json.loads((model_dir / "history.json").read_text(encoding="utf-8"))
        log.info("resuming %s after epoch %d", model_dir, len(done))
        # Other hyperparameters than it trained with (a PBT clone): training/perturb.py.
        continue_with(model, config, changes(before, config),
                      config.train.epochs * len(train_batches), tail_scale(config))
    else:
        matrix = None
        if vectors is not None:
            log.info("embedding %s", config.embedding)
            matrix = spacy_embedding_matrix(vectors, prepared.vocab,
                                            seed=config.train.seed).matrix
        longest = max(length, config.decode.max_length)
        if config.encoder.fine_tune is not None:
            model = build_tuned(config, features, np.unique(train_rows), len(prepared.vocab),
                                matrix, longest)
        else:
            model = build_model(config.model, len(prepared.vocab), mean, var, matrix,
                                positions=prepared.features.positions if grid else None,
                                max_length=longest)
        compile_model(model, config.train, config.train.epochs * len(train_batches),
                      tail_scale(config))

    val_batches = (CaptionBatches(features, val_rows, val_seqs, batch, shuffle=False)
                   if val_seqs else None)
    epoch_end = _EpochEnd(config, prepared, model_dir, on_epoch)
    if done:
        epoch_end.history = list(done)
        best_file = model_dir / "metrics.json"
        epoch_end.best = json.loads(best_file.read_text()) if best_file.is_file() else None
    stopper = keras.callbacks.EarlyStopping(monitor=config.train.monitor,
                                            mode=config.train.monitor_mode,
                                            patience=config.train.patience)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    scst_done = sum(1 for epoch in done if epoch.get("scst"))
    if not scst_done and not _patience_ran_out(config, done) and len(done) < config.train.epochs:
        fit_batches, fit_val = train_batches, val_batches
        if keras.backend.backend() == "tensorflow":  # batches made in the graph, ahead
            fit_batches = train_batches.tf_dataset()
            fit_val = val_batches.tf_dataset() if val_batches is not None else None
        model.fit(fit_batches, validation_data=fit_val, epochs=config.train.epochs,
                  initial_epoch=len(done), callbacks=[epoch_end, stopper], verbose=verbose,
                  shuffle=False)
    stopped_early = stopper.stopped_epoch > 0
    if scst_done < config.train.scst.epochs:
        if not scst_done:  # from the best cross-entropy epoch, with an optimizer of its own
            model = compile_scst(keras.saving.load_model(model_dir / "model.keras",
                                                         compile=False, safe_mode=True),
                                 config.train, tail_scale(config))
        stopped_early = _scst_stage(config, prepared, model, features, val_batches,
                                    epoch_end, scst_done, verbose) or stopped_early
    assert epoch_end.best is not None
    return TrainResult(model_dir, epoch_end.best, epoch_end.history, stopped_early)


def _scst_stage(config: ExperimentConfig, prepared: Prepared, model: keras.Model,
                features: np.ndarray, val_batches: CaptionBatches | None,
                epoch_end: _EpochEnd, done: int, verbose: int) -> bool:
    """The SCST epochs after `done` of them (training/scst.py), each scored and kept as a
    cross-entropy epoch is; True if early stopping ended them."""
    settings = config.train.scst
    names = sorted(prepared.dataset.splits["train"])
    reward = CiderReward({name: prepared.dataset.captions[name] for name in names})
    step = ScstStep(model, step_decoder(model), prepared.vocab, reward, settings)
    epoch_end.set_model(model)
    epoch_end.decoder = None  # the stepper of this model, not of the cross-entropy one
    val_loss = MaskedLoss(config.train.label_smoothing)
    batch, first = config.train.batch_size, len(epoch_end.history)
    best_at = first  # early stopping's patience starts afresh, as on resume
    for epoch in range(first, first + settings.epochs - done):
        rng = np.random.default_rng([config.train.seed, epoch])
        order = rng.permutation(len(names))
        step.times = StepTimes()
        epoch_end.on_epoch_begin(epoch)
        bar = keras.utils.Progbar(-(-len(names) // batch), verbose=verbose,
                                  stateful_metrics=["reward"])
        if verbose:
            print(f"Epoch {epoch + 1}/{config.train.total_epochs} (SCST)")
        for start in range(0, len(names), batch):
            chosen = [names[i] for i in sorted(order[start:start + batch])]
            rows = [prepared.features.index[name] for name in chosen]
            loss = step(np.asarray(features[rows], "float32"), chosen, rng)
            bar.add(1, [("loss", loss), ("reward", step.times.rewards[-1])])
        times = step.times
        log.info("SCST epoch %d: sampling %.1f s, reward %.1f s, update %.1f s (%d steps)",
                 epoch + 1, times.sampling, times.reward, times.update, times.steps)
        before = epoch_end.best
        epoch_end.on_epoch_end(epoch, {
            "loss": float(np.mean(times.losses)), "reward": float(np.mean(times.rewards)),
            "scst": 1.0, "sampling_seconds": times.sampling, "reward_seconds": times.reward,
            "update_seconds": times.update, **validation_metrics(model, val_batches, val_loss)})
        if epoch_end.best is not before:
            best_at = epoch + 1
        if epoch + 1 - best_at >= config.train.patience:
            return True
    return False
