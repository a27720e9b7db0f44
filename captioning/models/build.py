"""Captioning models: what every decoder shares (the masked loss and accuracy, compiling,
safe loading), and the one entry to build or step any of them (models/registry.py; importing
it registers every decoder's layers for safe deserialisation).

Every model maps image features and tokens (batch, time) to next-word logits (batch, time,
vocabulary), is built only from the typed config, and uses Keras layers and `keras.ops` only,
so it also runs on the JAX and PyTorch backends.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from captioning.config.schema import ModelConfig, TrainConfig
from captioning.models.protocol import FeatureStats, Stepper
from captioning.models.registry import decoder_named, decoder_of


@keras.saving.register_keras_serializable(package="captioning")
def masked_loss(y_true: Any, y_pred: Any) -> Any:
    """Mean sparse cross-entropy over the real (non-padding, id != 0) target tokens."""
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package="captioning")
class MaskedAccuracy(keras.metrics.Metric):
    """Share of real target tokens predicted exactly (argmax), summed over the whole epoch."""

    def __init__(self, name: str = "accuracy", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.cast(y_true, "int32")
        mask = ops.not_equal(y_true, 0)
        hits = ops.logical_and(mask, ops.equal(y_true, ops.cast(ops.argmax(y_pred, -1), "int32")))
        self.correct.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(mask, "float32")))

    def result(self) -> Any:
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self) -> None:
        self.correct.assign(0.0)
        self.total.assign(0.0)


def build_model(config: ModelConfig, vocab_size: int, feature_mean: np.ndarray,
                feature_var: np.ndarray, embedding_matrix: np.ndarray | None = None,
                *, positions: int | None = None, max_length: int = 40, **options: Any
                ) -> keras.Model:
    """The teacher-forced model of `config.decoder`; `feature_mean`/`feature_var` are the
    training split's per-channel feature statistics, `positions` the feature map's (grid
    decoders). `options` go to that decoder's build (merge: teacher_forcing, prefix_length)."""
    return decoder_named(config.decoder).build(
        config, vocab_size, FeatureStats(np.asarray(feature_mean), np.asarray(feature_var)),
        embedding_matrix, positions=positions, max_length=max_length, **options)


def compile_model(model: keras.Model, config: TrainConfig) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=masked_loss,
                  metrics=[MaskedAccuracy()], steps_per_execution=config.steps_per_execution)
    return model


@contextmanager
def precision(policy: str):
    """Build (and train) models under Keras' dtype `policy`, then the one there was before.
    Every decoder keeps its standardisation and logits layers in float32."""
    before = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(before)


def step_decoder(model: keras.Model) -> Stepper:
    """The stepper of a model any decoder built: one model call per word for a batch."""
    decoder = decoder_of(model)
    if decoder is None:
        raise ValueError(f"model {model.name!r} was built by no known decoder")
    return decoder.stepper(model)


def load_keras_model(path: Path) -> keras.Model:
    """Load a saved `.keras` captioner in safe mode: no code from the file is executed."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def captioner_problem(model: keras.Model, decoder: str = "merge") -> str | None:
    """Why `model` is not a captioner built by `decoder` (as its config.json says), or None."""
    problem = decoder_named(decoder).problem(model)
    if problem is None and decoder_of(model) is not decoder_named(decoder):
        problem = f"it is a {model.name!r} model, but its config names the {decoder} decoder"
    return problem
