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
from captioning.models.tuned import TailStepper, optimizer, parts


@keras.saving.register_keras_serializable(package="captioning")
def masked_loss(y_true: Any, y_pred: Any) -> Any:
    """Mean sparse cross-entropy over the real (non-padding, id != 0) target tokens (what
    models saved before MaskedLoss were compiled with; their last.keras still resumes)."""
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package="captioning")
class MaskedLoss(keras.losses.Loss):
    """Mean cross-entropy over the real target tokens, optionally label-smoothed: the target
    word gets 1 - smoothing of the mass and every word of the vocabulary smoothing / V."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "masked_loss", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "int32")
        mask = ops.cast(ops.not_equal(y_true, 0), "float32")
        logits = ops.cast(y_pred, "float32")
        log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
        target = ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1)[..., 0]
        loss = -target
        if self.label_smoothing:
            loss = ((1.0 - self.label_smoothing) * loss
                    - self.label_smoothing * ops.mean(log_probs, axis=-1))
        return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="captioning")
class PolicyGradientLoss(keras.losses.Loss):
    """SCST's loss, -(r - b) log p(w), summed over sampled tokens: each token's
    cross-entropy, weighted by the sample weight the trainer gives it (its caption's
    advantage r - b over the number of real tokens in the batch; 0 after endseq)."""

    def __init__(self, name: str = "policy_gradient_loss", **kwargs: Any):
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return keras.losses.sparse_categorical_crossentropy(
            ops.cast(y_true, "int32"), ops.cast(y_pred, "float32"), from_logits=True)


@keras.saving.register_keras_serializable(package="captioning")
class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """From 0 up to `peak` over `warmup_steps`, then down a line to 0 at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = (
            float(peak), int(warmup_steps), int(total_steps))

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        up = step / max(self.warmup_steps, 1)
        down = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * ops.clip(ops.minimum(up, down), 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def learning_rate(config: TrainConfig, total_steps: int) -> Any:
    """train.learning_rate as train.schedule has it over `total_steps` optimizer steps."""
    if config.schedule == "constant":
        return config.learning_rate
    warmup = config.warmup_steps(total_steps)
    if config.schedule == "warmup_linear":
        return WarmupLinear(config.learning_rate, warmup, total_steps)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(total_steps - warmup, 1), warmup_target=config.learning_rate,
        warmup_steps=warmup)


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


def compile_model(model: keras.Model, config: TrainConfig, total_steps: int = 1,
                  tail_scale: float | None = None) -> keras.Model:
    """Adam on the masked cross-entropy, with train.schedule over `total_steps` steps (times
    `tail_scale` for an encoder tail's layers, models/tuned.py)."""
    adam = optimizer(model, learning_rate(config, total_steps), config.clip_norm, tail_scale)
    model.compile(optimizer=adam, loss=MaskedLoss(config.label_smoothing),
                  metrics=[MaskedAccuracy()], steps_per_execution=config.steps_per_execution)
    return model


def compile_scst(model: keras.Model, config: TrainConfig, tail_scale: float | None = None
                 ) -> keras.Model:
    """Adam at train.scst.learning_rate (constant) on the policy-gradient loss."""
    adam = optimizer(model, config.scst.learning_rate, config.clip_norm, tail_scale)
    model.compile(optimizer=adam, loss=PolicyGradientLoss())
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
    """The stepper of a model any decoder built: one model call per word for a batch (after
    one call of the encoder tail in front of it, if it has one)."""
    decoder = decoder_of(model)
    if decoder is None:
        raise ValueError(f"model {model.name!r} was built by no known decoder")
    front, core = parts(model)
    stepper = decoder.stepper(core)
    return stepper if front is None else TailStepper(front, stepper)


def load_keras_model(path: Path) -> keras.Model:
    """Load a saved `.keras` captioner in safe mode: no code from the file is executed."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def captioner_problem(model: keras.Model, decoder: str = "merge") -> str | None:
    """Why `model` is not a captioner built by `decoder` (as its config.json says), or None."""
    problem = decoder_named(decoder).problem(parts(model)[1])
    if problem is None and decoder_of(model) is not decoder_named(decoder):
        problem = f"it is a {model.name!r} model, but its config names the {decoder} decoder"
    return problem
