"""A Transformer decoder over the projected feature map, teacher-forced in one pass.

    grid (batch, positions, channels) -> standardise -> dense(units) + learned positions
        -> encoder_layers x [self-attention, feed-forward]                    the memory
    tokens (batch, time) -> embedding [-> dense(units)] + learned positions
        -> layers x [causal self-attention, cross-attention to the memory, feed-forward]
        -> layer norm -> dense(vocabulary) logits, or (tie_embeddings) [dense(embedding
           width) ->] h @ embedding^T + bias: (batch, time, vocabulary)

Every block is pre-norm (x + f(norm(x))), dropout on each residual branch. Attention uses
`keras.ops` so decoding keeps each layer's keys and values of the words so far (cache=True):
one call per word over a fixed-size cache (`max_length` slots, later ones masked); cache=False
recomputes the prefix under the causal mask. benchmarks/decode_throughput.py times both.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from captioning.config.schema import READS_GRID
from captioning.models.protocol import Arrays, FeatureStats, missing_layers, model_name

_NEG = -1e9  # added to the scores of positions a query must not see


def _time(x: Any, axis: int) -> Any:
    # Static where known (in the step models, built from ops), else the tensor's own.
    return x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]


def _heads(x: Any, heads: int) -> Any:
    """(batch, time, units) -> (batch, heads, time, units / heads)."""
    return ops.transpose(ops.reshape(x, (-1, _time(x, 1), heads, x.shape[-1] // heads)),
                         (0, 2, 1, 3))


def _merge(x: Any) -> Any:
    """(batch, heads, time, size) -> (batch, time, heads * size)."""
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)),
                       (-1, _time(x, 2), x.shape[1] * x.shape[3]))


def _attend(q: Any, k: Any, v: Any, bias: Any = None) -> Any:
    """Scaled dot-product attention over (batch, heads, time, size) queries, keys, values;
    `bias` is added to the scores (0 where allowed, _NEG where not)."""
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    return ops.matmul(ops.softmax(scores, axis=-1), v)


@keras.saving.register_keras_serializable(package="captioning")
class MultiHeadAttention(layers.Layer):
    """Query, key, value and output projections, with the keys and values also computable
    apart (`keys_values`), so decoding can cache them."""

    def __init__(self, units: int, heads: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.units, self.heads = units, heads
        # Named after this layer: a step model calls them apart, and names must be unique.
        self.query = layers.Dense(units, name=f"{self.name}_query")
        self.key = layers.Dense(units, name=f"{self.name}_key")
        self.value = layers.Dense(units, name=f"{self.name}_value")
        self.output_dense = layers.Dense(units, name=f"{self.name}_output")

    def build(self, query_shape: tuple, source_shape: tuple | None = None) -> None:
        for dense in (self.query, self.key, self.value, self.output_dense):
            dense.build((None, None, self.units if dense is self.output_dense
                         else query_shape[-1]))

    def keys_values(self, source: Any) -> tuple[Any, Any]:
        return _heads(self.key(source), self.heads), _heads(self.value(source), self.heads)

    def attend(self, query: Any, keys: Any, values: Any, bias: Any = None) -> Any:
        out = _attend(_heads(self.query(query), self.heads), keys, values, bias)
        return self.output_dense(_merge(out))

    def call(self, query: Any, source: Any, bias: Any = None) -> Any:
        return self.attend(query, *self.keys_values(source), bias)

    def compute_output_shape(self, query_shape: tuple, source_shape: tuple,
                             bias_shape: tuple | None = None) -> tuple:
        return (*query_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "heads": self.heads}


@keras.saving.register_keras_serializable(package="captioning")
class Block(layers.Layer):
    """One pre-norm layer: self-attention (causal with `causal`), cross-attention to a memory
    (with `cross`), feed-forward; each a residual branch with dropout."""

    def __init__(self, units: int, heads: int, ff_units: int, dropout: float,
                 causal: bool, cross: bool, **kwargs: Any):
        super().__init__(**kwargs)
        self.units, self.heads, self.ff_units, self.dropout = units, heads, ff_units, dropout
        self.causal, self.cross = causal, cross
        name = self.name  # sublayers named after this block: unique in a step model too
        self.norm_self = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm_self")
        self.self_attention = MultiHeadAttention(units, heads, name=f"{name}_self_attention")
        if cross:
            self.norm_cross = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm_cross")
            self.cross_attention = MultiHeadAttention(units, heads,
                                                      name=f"{name}_cross_attention")
        self.norm_ff = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm_ff")
        self.ff_in = layers.Dense(ff_units, activation="relu", name=f"{name}_ff_in")
        self.ff_out = layers.Dense(units, name=f"{name}_ff_out")
        self.drop = layers.Dropout(dropout, name=f"{name}_dropout")

    def build(self, x_shape: tuple, memory_shape: tuple | None = None) -> None:
        shape = (None, None, self.units)
        for norm in (self.norm_self, self.norm_ff, *([self.norm_cross] if self.cross else [])):
            norm.build(shape)
        self.self_attention.build(shape)
        if self.cross:
            self.cross_attention.build(shape)
        self.ff_in.build(shape)
        self.ff_out.build((None, None, self.ff_units))

    def _feed_forward(self, x: Any, training: Any = None) -> Any:
        return x + self.drop(self.ff_out(self.ff_in(self.norm_ff(x))), training=training)

    def call(self, x: Any, memory: Any = None, training: Any = None) -> Any:
        bias = None
        if self.causal:
            time = ops.shape(x)[1]
            allowed = ops.tril(ops.ones((time, time), dtype=x.dtype))
            bias = (1.0 - allowed) * _NEG  # (time, time), broadcast over batch and heads
        normed = self.norm_self(x)
        x = x + self.drop(self.self_attention(normed, normed, bias), training=training)
        if self.cross:
            x = x + self.drop(self.cross_attention(self.norm_cross(x), memory),
                              training=training)
        return self._feed_forward(x, training)

    def step(self, x: Any, slot: Any, cache_k: Any, cache_v: Any, memory_k: Any,
             memory_v: Any) -> tuple[Any, Any, Any]:
        """One word x (batch, 1, units) at position `slot` (batch, slots) one-hot: its keys and
        values are written into the caches (batch, heads, slots, size), and it attends to the
        slots up to its own."""
        normed = self.norm_self(x)
        k, v = self.self_attention.keys_values(normed)  # (batch, heads, 1, size)
        write = ops.expand_dims(ops.expand_dims(slot, 1), -1)  # (batch, 1, slots, 1)
        cache_k = cache_k * (1.0 - write) + k * write
        cache_v = cache_v * (1.0 - write) + v * write
        seen = ops.flip(ops.cumsum(ops.flip(slot, axis=-1), axis=-1), axis=-1)  # 1 up to it
        bias = ops.expand_dims(ops.expand_dims((1.0 - seen) * _NEG, 1), 1)
        x = x + self.self_attention.attend(normed, cache_k, cache_v, bias)
        if self.cross:
            x = x + self.cross_attention.attend(self.norm_cross(x), memory_k, memory_v)
        return self._feed_forward(x), cache_k, cache_v

    def compute_output_shape(self, x_shape: tuple, memory_shape: tuple | None = None) -> tuple:
        return x_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "heads": self.heads,
                "ff_units": self.ff_units, "dropout": self.dropout, "causal": self.causal,
                "cross": self.cross}


@keras.saving.register_keras_serializable(package="captioning")
class Positions(layers.Layer):
    """Adds a learned embedding of each position (batch, time, units); `offset` starts the
    positions further on (decoding one word at a time)."""

    def __init__(self, length: int, units: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.length, self.units = length, units

    def build(self, x_shape: tuple) -> None:
        self.table = self.add_weight(shape=(self.length, self.units), name="table",
                                     initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x: Any) -> Any:
        return x + ops.expand_dims(self.table[: ops.shape(x)[1]], 0)

    def compute_output_shape(self, x_shape: tuple) -> tuple:
        return x_shape

    def at(self, slot: Any) -> Any:
        """The embedding of the one-hot positions `slot` (batch, length): (batch, 1, units)."""
        return ops.expand_dims(ops.matmul(slot, self.table), 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "length": self.length, "units": self.units}


@keras.saving.register_keras_serializable(package="captioning")
class TiedEmbedding(layers.Layer):
    """Word embeddings (vocabulary, width), also the output layer: `call(h, reverse=True)` is
    h @ embeddings^T + bias in float32 under any precision (as the untied logits layer)."""

    def __init__(self, input_dim: int, output_dim: int, train_embeddings: bool = True,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = input_dim, output_dim
        self.train_embeddings = train_embeddings
        self.autocast = False  # the variables stay float32 (as in keras' Embedding)

    def build(self, input_shape: tuple | None = None) -> None:  # keras' Embedding's initializer
        self.embeddings = self.add_weight(shape=(self.input_dim, self.output_dim),
                                          initializer="uniform", name="embeddings",
                                          trainable=self.train_embeddings)
        self.bias = self.add_weight(shape=(self.input_dim,), initializer="zeros", name="bias")

    def call(self, inputs: Any, reverse: bool = False) -> Any:
        if reverse:
            return ops.matmul(ops.cast(inputs, "float32"), ops.transpose(self.embeddings)) + \
                self.bias
        return ops.cast(ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0),
                        self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim, "train_embeddings": self.train_embeddings}


def _optional(model: keras.Model, name: str, x: Any) -> Any:
    """x through the model's layer `name` where it has one, else x."""
    return model.get_layer(name)(x) if name in [layer.name for layer in model.layers] else x


def _logits(model: keras.Model, h: Any) -> Any:
    """The next-word logits of final hidden states `h` (after final_norm): the `logits` layer,
    or, tied, the embedding reversed (after `output_project` where its width is not units)."""
    if not isinstance(model.get_layer("embedding"), TiedEmbedding):
        return model.get_layer("logits")(h)
    return model.get_layer("embedding")(_optional(model, "output_project", h), reverse=True)


def _blocks(model: keras.Model, kind: str = "decoder") -> list[Block]:
    return sorted((layer for layer in model.layers if layer.name.startswith(f"{kind}_block_")),
                  key=lambda layer: int(layer.name.rsplit("_", 1)[1]))


LAYERS = ("grid_norm", "grid_project", "grid_positions", "embedding", "token_positions",
          "final_norm")


class TransformerStepper:
    """Context: the memory's keys and values for each decoder layer. State: the keys and values
    of the words so far, `max_length` slots per layer (cache=True), or the words so far
    (cache=False, the prefix recomputed each step)."""

    attention = None

    def __init__(self, model: keras.Model, cache: bool = True):
        self.model, self.cache = model, cache
        positions, channels = model.input_shape[0][1:]
        blocks = _blocks(model)
        self.length = model.get_layer("token_positions").length
        self.heads, units = blocks[0].heads, blocks[0].units
        self.size = units // self.heads
        grid = keras.Input((positions, channels))
        memory = _memory(model, grid)
        kvs = [kv for block in blocks for kv in block.cross_attention.keys_values(memory)]
        self.start_model = keras.Model(grid, kvs)

        token = keras.Input((), dtype="int32")
        slot = keras.Input((self.length,))  # one-hot position of this word
        pairs = range(2 * len(blocks))  # the keys and the values of each block
        memory_kv = [keras.Input((self.heads, positions, self.size)) for _ in pairs]
        caches = [keras.Input((self.heads, self.length, self.size)) for _ in pairs]
        x = _embed(model, ops.expand_dims(token, 1)) + model.get_layer("token_positions").at(
            slot)
        new_caches = []
        for i, block in enumerate(blocks):
            x, k, v = block.step(x, slot, caches[2 * i], caches[2 * i + 1], memory_kv[2 * i],
                                 memory_kv[2 * i + 1])
            new_caches += [k, v]
        logits = _logits(model, model.get_layer("final_norm")(x))[:, 0]
        self.step_model = keras.Model([token, slot, *memory_kv, *caches],
                                      [logits, *new_caches])

    def start(self, features: np.ndarray) -> tuple[Arrays, Arrays]:
        features = features.astype("float32")
        rows = len(features)
        self.steps = 0
        if not self.cache:
            return (features,), (np.zeros((rows, 0), "int32"),)
        memory = tuple(np.asarray(a) for a in self.start_model.predict_on_batch(features))
        empty = np.zeros((rows, self.heads, self.length, self.size), "float32")
        return memory, tuple(empty for _ in memory)

    def step(self, context: Arrays, tokens: np.ndarray, state: Arrays
             ) -> tuple[np.ndarray, Arrays]:
        tokens = tokens.astype("int32")
        if not self.cache:
            prefix = np.concatenate([state[0], tokens[:, None]], axis=1)
            logits = np.asarray(self.model.predict_on_batch([context[0], prefix]))[:, -1]
            return logits, (prefix,)
        slot = np.zeros((len(tokens), self.length), "float32")
        slot[:, min(self.steps, self.length - 1)] = 1.0
        self.steps += 1
        out = self.step_model.predict_on_batch([tokens, slot, *context, *state])
        return np.asarray(out[0]), tuple(np.asarray(a) for a in out[1:])


def _embed(model: keras.Model, tokens: Any) -> Any:
    return _optional(model, "token_project", model.get_layer("embedding")(tokens))


def _memory(model: keras.Model, grid: Any) -> Any:
    x = model.get_layer("grid_positions")(model.get_layer("grid_project")(
        model.get_layer("grid_norm")(grid)))
    for block in _blocks(model, "encoder"):
        x = block(x)
    return _optional(model, "memory_norm", x)  # (there with encoder blocks)


class Transformer:
    name = "transformer"
    attends = False  # its cross-attention has heads and layers: no one map per word
    grid = READS_GRID["transformer"]

    @staticmethod
    def build(config: Any, vocab_size: int, stats: FeatureStats,
              embedding_matrix: np.ndarray | None = None, *, positions: int | None,
              max_length: int = 40) -> keras.Model:
        settings = config.transformer
        units, channels = settings.units, int(stats.mean.shape[-1])
        rate = config.dropout if settings.dropout is None else settings.dropout
        grid = keras.Input((positions, channels), name="image")
        tokens = keras.Input((None,), dtype="int32", name="tokens")

        x = layers.Normalization(mean=stats.mean, variance=stats.var, dtype="float32",
                                 name="grid_norm")(grid)
        x = layers.Dense(units, name="grid_project")(x)
        memory = Positions(positions, units, name="grid_positions")(x)
        for i in range(settings.encoder_layers):
            memory = Block(units, settings.heads, settings.ff_units, rate,
                           causal=False, cross=False, name=f"encoder_block_{i}")(memory)
        if settings.encoder_layers:
            memory = layers.LayerNormalization(epsilon=1e-5, name="memory_norm")(memory)

        width = embedding_matrix.shape[1] if embedding_matrix is not None \
            else config.embedding_dim
        # Tied, the matrix is the output layer too: it trains even with train_embedding: false
        # (frozen, the logits learnt next to nothing on real photos: docs/quality.md).
        trainable = config.train_embedding or embedding_matrix is None or settings.tie_embeddings
        embedding = (TiedEmbedding(vocab_size, width, trainable, name="embedding")
                     if settings.tie_embeddings else
                     layers.Embedding(vocab_size, width, trainable=trainable, name="embedding"))
        y = embedding(tokens)
        if width != units:
            y = layers.Dense(units, name="token_project")(y)
        y = Positions(max_length, units, name="token_positions")(y)
        y = layers.Dropout(rate, name="token_dropout")(y)
        for i in range(settings.layers):
            y = Block(units, settings.heads, settings.ff_units, rate, causal=True,
                      cross=True, name=f"decoder_block_{i}")(y, memory)
        y = layers.LayerNormalization(epsilon=1e-5, name="final_norm")(y)
        if settings.tie_embeddings and width != units:
            y = layers.Dense(width, name="output_project")(y)
        logits = embedding(y, reverse=True) if settings.tie_embeddings else layers.Dense(
            vocab_size, dtype="float32", name="logits")(y)
        model = keras.Model([grid, tokens], logits, name=model_name("transformer"))
        if embedding_matrix is not None:
            embedding.embeddings.assign(embedding_matrix.astype("float32"))
        return model

    @staticmethod
    def stepper(model: keras.Model, cache: bool = True) -> TransformerStepper:
        return TransformerStepper(model, cache)

    @staticmethod
    def problem(model: keras.Model) -> str | None:
        # A tied model's logits come from its embedding (a TiedEmbedding), not a logits layer.
        tied = any(isinstance(layer, TiedEmbedding) for layer in model.layers)
        missing = missing_layers(model, LAYERS + (() if tied else ("logits",)))
        return missing or (None if _blocks(model) else "it has no decoder_block_0 layer")
