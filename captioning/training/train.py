"""`train_captioner`: the one training function, for the CLI and for every sweep trial.

Each epoch: train loss and masked accuracy, validation loss and accuracy, and validation
BLEU-1..4, CIDEr-D and ROUGE-L of greedy captions for a bounded sample of validation images,
then its files written whole (training/epoch_end.py). The best epoch (by train.monitor) is
kept as a model directory (training/model_files.py names its files); training stops once
train.patience epochs bring no better one (training/early_stopping.py).

With `train.scst.epochs`, self-critical sequence training (training/scst.py) follows the
cross-entropy epochs: it starts from the best of them with an optimizer of its own and goes
on in the same history, so early stopping, the kept epoch, MLflow, ASHA and resume treat its
epochs as further epochs (`scst` is 1 in theirs).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from captioning.atomic import write_whole
from captioning.config.loading import save_config
from captioning.config.schema import ExperimentConfig
from captioning.data.batches import CaptionBatches, encode_captions
from captioning.errors import DatasetError
from captioning.evaluation.reward import CiderReward
from captioning.features.cache import FeatureSet
from captioning.models.build import (
    MaskedLoss,
    build_model,
    compile_model,
    compile_scst,
    precision,
    step_decoder,
)
from captioning.models.embeddings import load_vectors, spacy_embedding_matrix
from captioning.training import model_files
from captioning.training.epoch_end import EpochCallback, EpochEnd
from captioning.training.finetune import build_tuned, tail_scale
from captioning.training.perturb import changes, continue_with
from captioning.training.prepare import Prepared, prepare
from captioning.training.scst import ScstStep, StepTimes, validation_metrics

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    model_dir: Path
    best: dict[str, float]  # metrics of the best epoch ("epoch" included)
    history: list[dict[str, float]]
    stopped_early: bool


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
    resuming = resume and all((model_dir / name).is_file()
                              for name in (model_files.LAST, model_files.HISTORY))
    # What the model to resume was trained with, before this config takes its place.
    before = (model_files.read_config(model_dir)
              if resuming and (model_dir / model_files.CONFIG).is_file() else None)
    write_whole({model_dir / model_files.CONFIG: lambda path: save_config(config, path),
                 model_dir / model_files.VOCAB: prepared.vocab.save},
                "checkpoint", f"{model_dir} is as it was")
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    # The dtype policy covers the model, not the features: they are cached whatever it is.
    with precision(config.train.precision):
        keras.utils.set_random_seed(config.train.seed)
        inputs = _Inputs.of(config, prepared)
        history = model_files.read_history(model_dir) if resuming else []
        if resuming:
            log.info("resuming %s after epoch %d", model_dir, len(history))
        model = (_resumed_model(config, model_dir, before, inputs) if resuming
                 else _new_model(config, prepared, inputs, vectors))
        epoch_end = EpochEnd(config, prepared, model_dir, on_epoch, history)
        stopping = epoch_end.stopping  # knows the resumed epochs' best and patience

        scst_done = sum(1 for epoch in history if epoch.get("scst"))
        if (not scst_done and not stopping.patience_ran_out
                and len(history) < config.train.epochs):
            stopping.restart()  # a resumed run's patience starts afresh
            _cross_entropy(config, model, inputs, epoch_end, len(history), verbose)
        stopped_early = not scst_done and stopping.patience_ran_out

        if scst_done < config.train.scst.epochs:
            if not scst_done:  # from the best cross-entropy epoch, with an optimizer of its own
                best = keras.saving.load_model(model_dir / model_files.MODEL, compile=False,
                                               safe_mode=True)
                model = compile_scst(best, config.train, tail_scale(config))
            stopping.restart()  # and the SCST epochs' patience too; the best stays
            stopped_early = _self_critical(config, prepared, model, inputs, epoch_end,
                                           scst_done, verbose) or stopped_early
    assert epoch_end.best is not None
    return TrainResult(model_dir, epoch_end.best, epoch_end.history, stopped_early)


def default_model_dir(config: ExperimentConfig) -> Path:
    return Path(config.output_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class _Inputs:
    """What the model reads, and the batches of the train and validation captions."""

    features: np.ndarray  # a row per image: pooled (images, channels) or maps (images, ...)
    mean: np.ndarray  # the training images' per-channel mean and variance
    var: np.ndarray
    train_images: np.ndarray  # their feature rows
    train: CaptionBatches
    val: CaptionBatches | None

    @classmethod
    def of(cls, config: ExperimentConfig, prepared: Prepared) -> _Inputs:
        length = config.train.max_caption_length
        train_rows, train_seqs = caption_split(prepared, "train", length)
        if not train_seqs:
            raise DatasetError(f"{config.data.root}: the train split has no caption of a "
                               f"readable image ({len(prepared.dataset.skipped)} image(s) "
                               "skipped; `captioning prepare` lists them)")
        val_rows, val_seqs = caption_split(prepared, "val", length)
        images = np.unique(train_rows)
        features, mean, var = model_inputs(prepared.features, images, config.reads_grid)
        batch = config.train.batch_size
        return cls(features, mean, var, images,
                   CaptionBatches(features, train_rows, train_seqs, batch, shuffle=True,
                                  seed=config.train.seed),
                   CaptionBatches(features, val_rows, val_seqs, batch, shuffle=False)
                   if val_seqs else None)


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


def _resumed_model(config: ExperimentConfig, model_dir: Path, before: dict | None,
                   inputs: _Inputs) -> keras.Model:
    """last.keras, with the optimizer state it had, made to train on with `config`."""
    model = keras.saving.load_model(model_dir / model_files.LAST, safe_mode=True)
    # Other hyperparameters than it trained with (a PBT clone): training/perturb.py.
    continue_with(model, config, changes(before, config),
                  config.train.epochs * len(inputs.train), tail_scale(config))
    return model


def _new_model(config: ExperimentConfig, prepared: Prepared, inputs: _Inputs,
               vectors: object) -> keras.Model:
    """The model `config` describes, compiled for the cross-entropy epochs."""
    matrix = None
    if vectors is not None:
        log.info("embedding %s", config.embedding)
        matrix = spacy_embedding_matrix(vectors, prepared.vocab, seed=config.train.seed).matrix
    longest = max(config.train.max_caption_length, config.decode.max_length)
    if config.encoder.fine_tune is not None:
        model = build_tuned(config, inputs.features, inputs.train_images, len(prepared.vocab),
                            matrix, longest)
    else:
        model = build_model(config.model, len(prepared.vocab), inputs.mean, inputs.var, matrix,
                            positions=prepared.features.positions if config.reads_grid else None,
                            max_length=longest)
    compile_model(model, config.train, config.train.epochs * len(inputs.train),
                  tail_scale(config))
    return model


def _cross_entropy(config: ExperimentConfig, model: keras.Model, inputs: _Inputs,
                   epoch_end: EpochEnd, done: int, verbose: int) -> None:
    """The teacher-forced epochs after `done` of them, until patience runs out."""
    train, val = inputs.train, inputs.val
    if keras.backend.backend() == "tensorflow":  # batches made in the graph, ahead
        train = inputs.train.tf_dataset()
        val = inputs.val.tf_dataset() if inputs.val is not None else None
    model.fit(train, validation_data=val, epochs=config.train.epochs, initial_epoch=done,
              callbacks=[epoch_end], verbose=verbose, shuffle=False)


def _self_critical(config: ExperimentConfig, prepared: Prepared, model: keras.Model,
                   inputs: _Inputs, epoch_end: EpochEnd, done: int, verbose: int) -> bool:
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
            loss = step(np.asarray(inputs.features[rows], "float32"), chosen, rng)
            bar.add(1, [("loss", loss), ("reward", step.times.rewards[-1])])
        times = step.times
        log.info("SCST epoch %d: sampling %.1f s, reward %.1f s, update %.1f s (%d steps)",
                 epoch + 1, times.sampling, times.reward, times.update, times.steps)
        epoch_end.on_epoch_end(epoch, {
            "loss": float(np.mean(times.losses)), "reward": float(np.mean(times.rewards)),
            "scst": 1.0, "sampling_seconds": times.sampling, "reward_seconds": times.reward,
            "update_seconds": times.update,
            **validation_metrics(model, inputs.val, val_loss)})
        if epoch_end.stopping.patience_ran_out:
            return True
    return False
