"""A decoder with the encoder's tail in front of it: the model a fine-tuned trial trains.

    cut map (batch, h*w, c), as cached -> reshape (h, w, c) -> encoder_tail (features/cut.py)
        -> image_features: the map (batch, positions, channels) for a grid decoder, or its
           mean over positions (batch, channels) for the merge decoder
        -> the decoder's own model (nested, by its usual name), with the tokens -> logits

The outer model has the decoder's model name, so it loads, steps and serves as every model
does: `parts` finds the decoder inside it, and its stepper runs the tail once per image
before decoding. The tail's variables learn at train.learning_rate times
encoder.fine_tune.learning_rate_scale (`ScaledAdam`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from captioning.models.protocol import Arrays, Stepper

TAIL = "encoder_tail"
FEATURES = "image_features"


def with_tail(decoder: keras.Model, tail: keras.Model, grid: bool) -> keras.Model:
    """`decoder` (image features, tokens) -> logits, reading the output of `tail` instead."""
    height, width, channels = tail.input_shape[1:]
    image = keras.Input((height * width, channels), name="image")
    tokens = keras.Input(tuple(decoder.inputs[1].shape[1:]), dtype="int32", name="tokens")
    x = tail(layers.Reshape((height, width, channels), name="cut_map")(image))
    out_h, out_w, out_c = tail.output_shape[1:]
    if grid:
        x = layers.Reshape((out_h * out_w, out_c), name=FEATURES)(x)
    else:
        x = layers.GlobalAveragePooling2D(name=FEATURES)(x)
    return keras.Model([image, tokens], decoder([x, tokens]), name=decoder.name)


def parts(model: keras.Model) -> tuple[keras.Model | None, keras.Model]:
    """(the model from cut maps to the decoder's image features, or None; the decoder's own
    model) of a trained model, with or without an encoder tail."""
    names = [layer.name for layer in model.layers]
    if TAIL not in names or model.name not in names:
        return None, model
    front = keras.Model(model.inputs[0], model.get_layer(FEATURES).output)
    return front, model.get_layer(model.name)


def tail_features(tail: keras.Model, maps: np.ndarray, grid: bool, batch: int = 64
                  ) -> np.ndarray:
    """What the decoder reads of cut `maps` (images, h*w, c) through `tail`, as it is now."""
    height, width, channels = tail.input_shape[1:]
    outputs = []
    for start in range(0, len(maps), batch):
        chunk = np.asarray(maps[start:start + batch], "float32")
        out = np.asarray(tail.predict_on_batch(chunk.reshape(-1, height, width, channels)))
        outputs.append(out.reshape(len(out), -1, out.shape[-1]) if grid else out.mean((1, 2)))
    return np.concatenate(outputs)


class TailStepper:
    """A decoder's stepper behind the encoder tail: the tail runs once per image in `start`."""

    def __init__(self, front: keras.Model, inner: Stepper):
        self.front, self.inner = front, inner

    @property
    def attention(self) -> np.ndarray | None:
        return self.inner.attention

    def start(self, features: np.ndarray) -> tuple[Arrays, Arrays]:
        return self.inner.start(np.asarray(self.front.predict_on_batch(
            features.astype("float32"))))

    def step(self, context: Arrays, tokens: np.ndarray, state: Arrays
             ) -> tuple[np.ndarray, Arrays]:
        return self.inner.step(context, tokens, state)


@keras.saving.register_keras_serializable(package="captioning")
class ScaledAdam(keras.optimizers.Adam):
    """Adam whose updates of the variables at the paths `scaled` (the encoder tail's) use the
    learning rate times `scale`. Adam ignores a gradient's scale, so the rate itself is."""

    def __init__(self, *args: Any, scaled: tuple[str, ...] | list[str] = (),
                 scale: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.scaled, self.scale = tuple(scaled), float(scale)
        self._scaled_indices: set[int] = set()

    def build(self, var_list: list[Any]) -> None:
        super().build(var_list)
        paths = set(self.scaled)
        self._scaled_indices = {self._get_variable_index(v) for v in var_list
                                if v.path in paths}

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self._get_variable_index(variable) in self._scaled_indices:
            learning_rate = learning_rate * self.scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scaled": list(self.scaled), "scale": self.scale}


def optimizer(model: keras.Model, learning_rate: Any, clip_norm: float | None,
              scale: float | None) -> keras.optimizers.Optimizer:
    """Adam for `model`; with an encoder tail and `scale`, its layers learn `scale` times
    slower (or faster)."""
    front, _ = parts(model)
    if front is None or scale is None:
        return keras.optimizers.Adam(learning_rate, global_clipnorm=clip_norm)
    scaled = [v.path for v in model.get_layer(TAIL).trainable_variables]
    return ScaledAdam(learning_rate, global_clipnorm=clip_norm, scaled=scaled, scale=scale)
