"""The model of a trial that fine-tunes the encoder's tail (encoder.fine_tune): the tail rebuilt
with the encoder's weights (features/cut.py), then the decoder (models/tuned.py).

The decoder standardises what it reads with the training images' statistics, as it does a
frozen encoder's features; here they are those of the tail's output before training, over a
sample of the training images (the tail then moves slowly, at its scaled learning rate).
"""

from __future__ import annotations

import keras
import numpy as np

from captioning.config.schema import ExperimentConfig
from captioning.features.cut import build_tail
from captioning.models.build import build_model
from captioning.models.tuned import tail_features, with_tail

# Training images whose tail output gives the decoder's feature statistics.
STATS_IMAGES = 512


def build_tuned(config: ExperimentConfig, maps: np.ndarray, train_rows: np.ndarray,
                vocab_size: int, embedding_matrix: np.ndarray | None, max_length: int
                ) -> keras.Model:
    """The trained model of `config`: reads cut `maps` (images, h*w, c), memory-mapped."""
    tail = build_tail(config.encoder)
    rng = np.random.default_rng(config.train.seed)
    sample = np.sort(rng.choice(train_rows, min(STATS_IMAGES, len(train_rows)), replace=False))
    grid = config.model.grid
    outputs = tail_features(tail, maps[sample], grid)
    flat = outputs.reshape(-1, outputs.shape[-1]).astype("float64")
    decoder = build_model(config.model, vocab_size, flat.mean(0).astype("float32"),
                          flat.var(0).astype("float32"), embedding_matrix,
                          positions=outputs.shape[1] if grid else None, max_length=max_length)
    return with_tail(decoder, tail, grid)


def tail_scale(config: ExperimentConfig) -> float | None:
    """The tail's learning rate over the decoder's, or None when nothing is fine-tuned."""
    fine_tune = config.encoder.fine_tune
    return None if fine_tune is None else fine_tune.learning_rate_scale
