"""The seed's merge model in Keras 3, trained with teacher forcing over whole captions.

    image (batch, dim) -> standardise -> dropout -> dense(units, relu) ----------------+
    tokens (batch, time) -> embedding (masked) -> dropout -> LSTM (batch, time, units) -> add
    add -> dense(units, relu) -> dense(vocabulary) logits (batch, time, vocabulary)

Built only from the typed config. Everything is Keras layers and `keras.ops`, so the model also
runs on the JAX and PyTorch backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from captioning.config import ModelConfig, TrainConfig


@keras.saving.register_keras_serializable(package="captioning")
class AddImageContext(layers.Layer):
    """Adds the image context (batch, units) to every step of the text (batch, [time,] units).

    The text mask stops here on purpose: padding is handled by the loss and metric, which look
    at the targets, so Keras must not weight the loss by a mask a second time.
    """

    def call(self, inputs: list[Any]) -> Any:
        image, text = inputs
        if len(text.shape) == 3:
            image = ops.expand_dims(image, 1)  # (batch, 1, units) broadcasts over time
        return text + image

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return input_shape[1]

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None


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
                *, teacher_forcing: bool = True, prefix_length: int | None = None
                ) -> keras.Model:
    """The merge model; `feature_mean`/`feature_var` are training-split feature statistics.

    teacher_forcing=True: tokens (batch, time) -> logits for every next word (batch, time, V).
    teacher_forcing=False: the seed's prefix model, tokens (batch, prefix_length) -> logits of
    the one next word (batch, V). Both have the same layers and weights, in the same order.
    """
    dim = int(feature_mean.shape[-1])
    units = config.lstm_units
    image = keras.Input((dim,), name="image")
    tokens = keras.Input((None if teacher_forcing else prefix_length,), dtype="int32",
                         name="tokens")

    x = layers.Normalization(mean=feature_mean, variance=feature_var, name="image_norm")(image)
    x = layers.Dropout(config.dropout, name="image_dropout")(x)
    context = layers.Dense(units, activation="relu", name="image_dense")(x)  # (batch, units)

    width = embedding_matrix.shape[1] if embedding_matrix is not None else config.embedding_dim
    trainable = config.train_embedding or embedding_matrix is None
    embedding = layers.Embedding(vocab_size, width, mask_zero=True, trainable=trainable,
                                 name="embedding")
    e = layers.Dropout(config.dropout, name="text_dropout")(embedding(tokens))
    text = layers.LSTM(units, return_sequences=teacher_forcing, name="lstm")(e)
    merged = AddImageContext(name="merge")([context, text])
    hidden = layers.Dense(units, activation="relu", name="decoder_dense")(merged)
    logits = layers.Dense(vocab_size, name="logits")(hidden)
    model = keras.Model([image, tokens], logits, name="merge_captioner")
    if embedding_matrix is not None:
        embedding.set_weights([embedding_matrix.astype("float32")])
    return model


def compile_model(model: keras.Model, config: TrainConfig) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=masked_loss,
                  metrics=[MaskedAccuracy()])
    return model


class _DropMask(layers.Layer):
    """Decoded tokens are never padding: the embedding's mask means nothing to one LSTM step."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        return ops.copy(inputs)  # a new tensor: the input's mask stays behind

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None


class StepDecoder:
    """One LSTM step for a whole batch: the trained model's own layers, used step by step.

    `context(features)` computes the image branch once per image; `step(context, tokens, h, c)`
    feeds one token per row and returns (logits (batch, V), h, c). Sharing the layers means
    there are no weights to copy, and decoding costs one model call per word for all images.
    """

    def __init__(self, model: keras.Model):
        units = model.get_layer("image_dense").units
        dim = model.input_shape[0][-1]
        image = keras.Input((dim,))
        context = model.get_layer("image_dense")(model.get_layer("image_norm")(image))
        self.context_model = keras.Model(image, context)

        ctx = keras.Input((units,))
        token = keras.Input((), dtype="int32")
        h_in, c_in = keras.Input((units,)), keras.Input((units,))
        embedded = _DropMask()(model.get_layer("embedding")(token))  # (batch, width)
        out, (h_out, c_out) = model.get_layer("lstm").cell(embedded, [h_in, c_in])
        merged = model.get_layer("merge")([ctx, out])
        logits = model.get_layer("logits")(model.get_layer("decoder_dense")(merged))
        self.step_model = keras.Model([ctx, token, h_in, c_in], [logits, h_out, c_out])
        self.units = units

    def context(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.context_model.predict_on_batch(features.astype("float32")))

    def step(self, context: np.ndarray, tokens: np.ndarray, h: np.ndarray, c: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, h, c = self.step_model.predict_on_batch(
            [context, tokens.astype("int32"), h, c])
        return np.asarray(logits), np.asarray(h), np.asarray(c)


# The layers StepDecoder reuses, by the names build_model gives them.
DECODER_LAYERS = ("image_norm", "image_dense", "embedding", "lstm", "merge", "decoder_dense",
                  "logits")


def load_keras_model(path: Path) -> keras.Model:
    """Load a saved `.keras` captioner in safe mode: no code from the file is executed."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def captioner_problem(model: keras.Model) -> str | None:
    """Why `model` is not a merge captioner built by `build_model`, or None if it is one."""
    names = [layer.name for layer in model.layers]
    missing = [name for name in DECODER_LAYERS if name not in names]
    if missing:
        found = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"it has no {', '.join(missing)} layer (its layers: {found or 'none'})"
    if len(model.inputs) != 2:
        return f"it takes {len(model.inputs)} inputs, not (image features, tokens)"
    return None
