"""GPU settings for a trial process: share a card between trials, free it after each."""

from __future__ import annotations

import logging

import keras

log = logging.getLogger(__name__)


def enable_memory_growth() -> int:
    """Let TensorFlow take GPU memory as it needs it instead of all of it at start.

    Without this, the first trial on a card grabs nearly all of its memory and a second
    trial sharing the card (a fractional GPU such as 0.5) fails. Must run before TensorFlow
    touches a GPU; returns the number of GPUs it configured (0 on a CPU machine or on another
    backend: JAX is told the same through XLA_PYTHON_CLIENT_PREALLOCATE=false).
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:  # already initialised in this process: keep going
            log.warning("memory growth not set on %s: %s", gpu.name, error)
    return len(gpus)


def release() -> None:
    """Drop this process's Keras graph state so the next trial starts clean."""
    keras.backend.clear_session()
