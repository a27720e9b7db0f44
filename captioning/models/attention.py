"""Show, Attend and Tell's soft attention (Xu et al. 2015), over the encoder's feature map.

    grid (batch, positions, channels) -> standardise -> a_i
    h0, c0 = tanh(dense(mean_i a_i))                               initial state from the grid
    per step t, from the previous hidden state h_{t-1}:
        alpha_t = softmax_i(w . tanh(W a_i + U h_{t-1}))           additive attention
        z_t = sigmoid(dense(h_{t-1})) * sum_i alpha_ti a_i         context, gated by beta
        h_t, c_t = LSTM([E y_{t-1}; z_t], h_{t-1}, c_t-1)
        logits_t = L_o(E y_{t-1} + L_h dropout(h_t) + L_z z_t)     the deep output layer
    loss += lambda * sum_i (1 - sum_t alpha_ti)^2 / words           doubly stochastic attention

The penalty is divided by the caption's words because the loss here is a mean per word, where
the paper's is a caption's summed log-likelihood: the two terms keep the paper's proportions.

Teacher forcing runs the recurrence over whole captions with `keras.ops.scan`; the step model
runs the same layers once per word, and also returns alpha (where it looked).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from captioning.config.schema import READS_GRID
from captioning.models.protocol import Arrays, FeatureStats, missing_layers, model_name


@keras.saving.register_keras_serializable(package="captioning")
class SoftAttentionLSTM(layers.Layer):
    """The recurrence of Show, Attend and Tell: (grid, embedded words, tokens) -> the hidden
    states and gated contexts of every step, (batch, time, units) and (batch, time, channels).
    Adds the doubly stochastic penalty over the real (non-padding) steps as a layer loss."""

    def __init__(self, units: int, attention_units: int, doubly_stochastic: float = 1.0,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.units, self.attention_units = units, attention_units
        self.doubly_stochastic = doubly_stochastic
        self.init_h = layers.Dense(units, activation="tanh", name="init_h")
        self.init_c = layers.Dense(units, activation="tanh", name="init_c")
        self.attend_grid = layers.Dense(attention_units, name="attend_grid")
        self.attend_hidden = layers.Dense(attention_units, name="attend_hidden")
        self.attend_score = layers.Dense(1, name="attend_score")
        self.gate = layers.Dense(1, activation="sigmoid", name="gate")
        self.cell = layers.LSTMCell(units, name="cell")

    def build(self, grid_shape: tuple, embedded_shape: tuple, tokens_shape: tuple) -> None:
        channels, width = grid_shape[-1], embedded_shape[-1]
        self.init_h.build((None, channels))
        self.init_c.build((None, channels))
        self.attend_grid.build((None, None, channels))
        self.attend_hidden.build((None, self.units))
        self.attend_score.build((None, None, self.attention_units))
        self.gate.build((None, self.units))
        self.cell.build((None, width + channels))

    def start(self, grid: Any) -> tuple[Any, Any, Any]:
        """(the grid's attention projection (batch, positions, attention_units), h0, c0)."""
        mean = ops.mean(grid, axis=1)
        return self.attend_grid(grid), self.init_h(mean), self.init_c(mean)

    def step(self, grid: Any, projected: Any, embedded: Any, h: Any, c: Any
             ) -> tuple[Any, Any, Any, Any]:
        """One word: (h, c, the gated context z (batch, channels), alpha (batch, positions))."""
        hidden = ops.expand_dims(self.attend_hidden(h), 1)  # (batch, 1, attention_units)
        scores = ops.squeeze(self.attend_score(ops.tanh(projected + hidden)), -1)
        alpha = ops.softmax(scores, axis=-1)  # (batch, positions)
        context = ops.sum(grid * ops.expand_dims(alpha, -1), axis=1)  # (batch, channels)
        z = self.gate(h) * context
        _, (h, c) = self.cell(ops.concatenate([embedded, z], axis=-1), [h, c])
        return h, c, z, alpha

    def call(self, grid: Any, embedded: Any, tokens: Any) -> tuple[Any, Any]:
        projected, h, c = self.start(grid)
        real = ops.cast(ops.not_equal(tokens, 0), grid.dtype)  # (batch, time)
        z = ops.zeros_like(grid[:, 0, :])
        attended = ops.zeros_like(projected[..., 0])  # sum over steps of alpha, (batch, pos)

        def body(carry: tuple, inputs: Any) -> tuple[tuple, tuple]:
            h, c, _, attended = carry
            word, is_real = inputs[:, :-1], inputs[:, -1:]
            h, c, z, alpha = self.step(grid, projected, word, h, c)
            carry = (h, c, z, attended + alpha * is_real)
            return carry, carry  # TensorFlow's scan wants outputs shaped as the carry

        # One sequence to scan over, (time, batch, width + 1): TensorFlow's scan checks the
        # lengths of several against each other, which fails while the length is unknown.
        steps = ops.transpose(ops.concatenate([embedded, ops.expand_dims(real, -1)], -1),
                              (1, 0, 2))
        (_, _, _, attended), (hs, _, zs, _) = ops.scan(body, (h, c, z, attended), steps)
        if self.doubly_stochastic:
            # Per word of each caption, as the masked loss is: the paper adds it to a caption's
            # summed log-likelihood, so their ratio is the paper's.
            # In float32, as the loss it is added to (mixed precision computes it in 16 bits).
            attended = ops.cast(attended, "float32")
            words = ops.maximum(ops.sum(ops.cast(real, "float32"), axis=-1), 1.0)
            self.add_loss(self.doubly_stochastic * ops.mean(
                ops.sum(ops.square(1.0 - attended), axis=-1) / words))
        return ops.transpose(hs, (1, 0, 2)), ops.transpose(zs, (1, 0, 2))

    def compute_output_shape(self, grid_shape: tuple, embedded_shape: tuple,
                             tokens_shape: tuple) -> tuple[tuple, tuple]:
        batch, time = embedded_shape[0], embedded_shape[1]
        return (batch, time, self.units), (batch, time, grid_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units,
                "attention_units": self.attention_units,
                "doubly_stochastic": self.doubly_stochastic}


LAYERS = ("grid_norm", "embedding", "attend", "out_hidden", "out_context", "out_add", "logits")


class AttentionStepper:
    """Context: the standardised grid and its attention projection, per image. State: h, c.
    `attention` holds the last step's alpha (rows, positions)."""

    def __init__(self, model: keras.Model):
        attend = model.get_layer("attend")
        positions, channels = model.input_shape[0][1:]
        grid = keras.Input((positions, channels))
        normalised = model.get_layer("grid_norm")(grid)
        projected, h0, c0 = attend.start(normalised)
        self.start_model = keras.Model(grid, [normalised, projected, h0, c0])

        grid_in = keras.Input((positions, channels))
        projected_in = keras.Input((positions, attend.attention_units))
        token = keras.Input((), dtype="int32")
        h_in, c_in = keras.Input((attend.units,)), keras.Input((attend.units,))
        word = model.get_layer("embedding")(token)  # (rows, width)
        h, c, z, alpha = attend.step(grid_in, projected_in, word, h_in, c_in)
        deep = model.get_layer("out_add")([word, model.get_layer("out_hidden")(h),
                                           model.get_layer("out_context")(z)])
        logits = model.get_layer("logits")(deep)
        self.step_model = keras.Model([grid_in, projected_in, token, h_in, c_in],
                                      [logits, h, c, alpha])
        self.attention: np.ndarray | None = None

    def start(self, features: np.ndarray) -> tuple[Arrays, Arrays]:
        normalised, projected, h, c = (np.asarray(a) for a in self.start_model.predict_on_batch(
            features.astype("float32")))
        return (normalised, projected), (h, c)

    def step(self, context: Arrays, tokens: np.ndarray, state: Arrays
             ) -> tuple[np.ndarray, Arrays]:
        logits, h, c, alpha = self.step_model.predict_on_batch(
            [*context, tokens.astype("int32"), *state])
        self.attention = np.asarray(alpha)
        return np.asarray(logits), (np.asarray(h), np.asarray(c))


class Attention:
    name = "attention"
    attends = True  # its stepper says where it looked for each word
    grid = READS_GRID["attention"]

    @staticmethod
    def build(config: Any, vocab_size: int, stats: FeatureStats,
              embedding_matrix: np.ndarray | None = None, *, positions: int | None,
              max_length: int = 40) -> keras.Model:
        channels = int(stats.mean.shape[-1])
        grid = keras.Input((positions, channels), name="image")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        normalised = layers.Normalization(mean=stats.mean, variance=stats.var,
                                          dtype="float32", name="grid_norm")(grid)

        width = embedding_matrix.shape[1] if embedding_matrix is not None \
            else config.embedding_dim
        trainable = config.train_embedding or embedding_matrix is None
        embedding = layers.Embedding(vocab_size, width, trainable=trainable, name="embedding")
        words = layers.Dropout(config.dropout, name="text_dropout")(embedding(tokens))
        hidden, context = SoftAttentionLSTM(
            config.lstm_units, config.attention.units, config.attention.doubly_stochastic,
            name="attend")(normalised, words, tokens)
        hidden = layers.Dropout(config.dropout, name="hidden_dropout")(hidden)
        deep = layers.Add(name="out_add")([
            words, layers.Dense(width, name="out_hidden")(hidden),
            layers.Dense(width, name="out_context")(context)])
        logits = layers.Dense(vocab_size, dtype="float32", name="logits")(deep)  # (b, t, V)
        model = keras.Model([grid, tokens], logits, name=model_name("attention"))
        if embedding_matrix is not None:
            embedding.set_weights([embedding_matrix.astype("float32")])
        return model

    @staticmethod
    def stepper(model: keras.Model) -> AttentionStepper:
        return AttentionStepper(model)

    @staticmethod
    def problem(model: keras.Model) -> str | None:
        return missing_layers(model, LAYERS)
