"""The protocol every caption decoder speaks, and what decoders share.

A decoder (models/merge.py, attention.py, transformer.py) says how to build its teacher-forced
Keras model from the typed config (image features and tokens (batch, time) -> next-word logits
(batch, time, V), with every layer a Keras layer and every operation a `keras.ops` one), and
how to step that model one word at a time (`Stepper`). The trainer, beam search, model loading
and serving speak only this protocol; models/registry.py names every decoder.
"""

from __future__ import annotations

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


def model_name(decoder: str) -> str:
    """The name a decoder gives its Keras model, by which a loaded model is recognised."""
    return f"{decoder}_captioner"


def missing_layers(model: Any, names: tuple[str, ...]) -> str | None:
    """Why `model` lacks the layers a decoder needs, or None."""
    have = [layer.name for layer in model.layers]
    missing = [name for name in names if name not in have]
    if not missing:
        return None
    found = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
    return f"it has no {', '.join(missing)} layer (its layers: {found or 'none'})"
