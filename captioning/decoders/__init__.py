"""The caption decoders, one file each, behind one small protocol.

A decoder module registers a `Decoder`: how to build its teacher-forced Keras model from the
typed config (image features and tokens (batch, time) -> next-word logits (batch, time, V),
with every layer a Keras layer and every operation a `keras.ops` one), and how to step that
model one word at a time (`Stepper`). The trainer, beam search, model loading and serving
speak only this protocol, so a new decoder is a new file in this folder (found by
`_register_all`) and a section of `ModelConfig`, nothing else.

    merge        the seed's merge model: pooled image vector + LSTM over the caption prefix
    attention    Show, Attend and Tell's soft attention over the feature map (Xu et al. 2015)
    transformer  causal self-attention + cross-attention to the projected feature map
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Arrays = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class FeatureStats:
    """Per-channel mean and variance of the training images' features: the pooled vectors
    for a pooled decoder, every position of the feature maps for a grid one."""

    mean: np.ndarray  # (channels,)
    var: np.ndarray  # (channels,)


class Stepper(Protocol):
    """A trained model, one word at a time, for a whole batch of images (and beams) at once.

    `start` turns image features into what stays fixed while decoding (context) and the state
    before the first word; `step` feeds one token per row and returns the next-word logits
    (rows, V) and the new state. Every array of context and state has the rows first, so beam
    search reorders them with one index.
    """

    def start(self, features: np.ndarray) -> tuple[Arrays, Arrays]: ...

    def step(self, context: Arrays, tokens: np.ndarray, state: Arrays
             ) -> tuple[np.ndarray, Arrays]: ...

    # Where the last `step` looked, (rows, positions), for decoders that attend; else None.
    attention: np.ndarray | None


class Decoder(Protocol):
    name: str
    grid: bool  # reads the feature map (batch, positions, channels), not the pooled vector
    attends: bool  # its stepper's `attention` says where it looked for each word

    def build(self, config: Any, vocab_size: int, stats: FeatureStats,
              embedding_matrix: np.ndarray | None, *, positions: int | None,
              max_length: int) -> Any: ...

    def stepper(self, model: Any) -> Stepper: ...

    def problem(self, model: Any) -> str | None: ...


DECODERS: dict[str, Decoder] = {}


def register(decoder: Decoder) -> Decoder:
    DECODERS[decoder.name] = decoder
    return decoder


@functools.cache
def _register_all() -> None:
    """Import every module of this package once; each registers its decoder."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def decoders() -> dict[str, Decoder]:
    _register_all()  # also when one module was imported (and registered) on its own first
    return DECODERS


def decoder_named(name: str) -> Decoder:
    return decoders()[name]


def model_name(decoder: str) -> str:
    """The name a decoder gives its Keras model, by which a loaded model is recognised."""
    return f"{decoder}_captioner"


def decoder_of(model: Any) -> Decoder | None:
    """The decoder that built a loaded Keras model, or None if none did."""
    for name, decoder in decoders().items():
        if model.name == model_name(name):
            return decoder
    return None


def missing_layers(model: Any, names: tuple[str, ...]) -> str | None:
    """Why `model` lacks the layers a decoder needs, or None."""
    have = [layer.name for layer in model.layers]
    missing = [name for name in names if name not in have]
    if not missing:
        return None
    found = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
    return f"it has no {', '.join(missing)} layer (its layers: {found or 'none'})"
