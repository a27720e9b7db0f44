"""The seed's merge model, trained with teacher forcing over whole captions.

    image (batch, dim) -> standardise -> dropout -> dense(units, relu) ----------------+
    tokens (batch, time) -> embedding (masked) -> dropout -> LSTM (batch, time, units) -> add
    add -> dense(units, relu) -> dense(vocabulary) logits (batch, time, vocabulary)
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from captioning.config.schema import READS_GRID
from captioning.models.protocol import Arrays, FeatureStats, missing_layers, model_name


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


class _DropMask(layers.Layer):
    """Decoded tokens are never padding: the embedding's mask means nothing to one LSTM step."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        return ops.copy(inputs)  # a new tensor: the input's mask stays behind

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None


# The layers the step model reuses, by the names `build` gives them.
LAYERS = ("image_norm", "image_dense", "embedding", "lstm", "merge", "decoder_dense", "logits")


class MergeStepper:
    """One LSTM step for a whole batch: the trained model's own layers, used step by step.

    Context: the image branch (rows, units), computed once per image. State: the LSTM's h and
    c. Sharing the layers means there are no weights to copy, and decoding costs one model call
    per word for all images.
    """

    attention = None

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

    def start(self, features: np.ndarray) -> tuple[Arrays, Arrays]:
        context = np.asarray(self.context_model.predict_on_batch(features.astype("float32")))
        h = np.zeros((len(features), self.units), "float32")
        return (context,), (h, np.zeros_like(h))

    def step(self, context: Arrays, tokens: np.ndarray, state: Arrays
             ) -> tuple[np.ndarray, Arrays]:
        logits, h, c = self.step_model.predict_on_batch(
            [context[0], tokens.astype("int32"), *state])
        return np.asarray(logits), (np.asarray(h), np.asarray(c))


class Merge:
    name = "merge"
    attends = False  # one image vector: there is nowhere to look
    grid = READS_GRID["merge"]

    @staticmethod
    def build(config: Any, vocab_size: int, stats: FeatureStats,
              embedding_matrix: np.ndarray | None = None, *, positions: int | None = None,
              max_length: int = 40, teacher_forcing: bool = True,
              prefix_length: int | None = None) -> keras.Model:
        """teacher_forcing=True: tokens (batch, time) -> logits for every next word (batch,
        time, V). teacher_forcing=False: the seed's prefix model, tokens (batch, prefix_length)
        -> logits of the one next word (batch, V). Both have the same layers and weights, in
        the same order."""
        dim = int(stats.mean.shape[-1])
        units = config.lstm_units
        image = keras.Input((dim,), name="image")
        tokens = keras.Input((None if teacher_forcing else prefix_length,), dtype="int32",
                             name="tokens")

        x = layers.Normalization(mean=stats.mean, variance=stats.var, dtype="float32",
                                 name="image_norm")(image)
        x = layers.Dropout(config.dropout, name="image_dropout")(x)
        context = layers.Dense(units, activation="relu", name="image_dense")(x)  # (batch, units)

        width = embedding_matrix.shape[1] if embedding_matrix is not None \
            else config.embedding_dim
        trainable = config.train_embedding or embedding_matrix is None
        embedding = layers.Embedding(vocab_size, width, mask_zero=True, trainable=trainable,
                                     name="embedding")
        e = layers.Dropout(config.dropout, name="text_dropout")(embedding(tokens))
        text = layers.LSTM(units, return_sequences=teacher_forcing, name="lstm")(e)
        merged = AddImageContext(name="merge")([context, text])
        hidden = layers.Dense(units, activation="relu", name="decoder_dense")(merged)
        logits = layers.Dense(vocab_size, dtype="float32", name="logits")(hidden)
        model = keras.Model([image, tokens], logits, name=model_name("merge"))
        if embedding_matrix is not None:
            embedding.set_weights([embedding_matrix.astype("float32")])
        return model

    @staticmethod
    def stepper(model: keras.Model) -> MergeStepper:
        return MergeStepper(model)

    @staticmethod
    def problem(model: keras.Model) -> str | None:
        missing = missing_layers(model, LAYERS)
        if missing:
            return missing
        if len(model.inputs) != 2:
            return f"it takes {len(model.inputs)} inputs, not (image features, tokens)"
        return None
