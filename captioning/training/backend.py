"""Which Keras backend trains (`train.backend`), and how a process gets it.

`auto` trains on JAX where that pays: on a machine that shows no NVIDIA GPU, with trials that
ask for none, and for at least AUTO_JAX_EPOCHS epochs. JAX compiles the whole train step with
XLA, once per batch shape; then it trains the seed's merge model 2.0 times as fast as
TensorFlow's graph on two CPU cores (docs/benchmarks.md), but the compiling only pays over
many epochs. Everything else (with a GPU: cuDNN's LSTM; feature extraction, whose oneDNN
convolutions are 2 to 4 times as fast as XLA's on a CPU; captioning, evaluation, serving,
which see few batches of each shape) runs on TensorFlow.

Keras fixes its backend when it is first imported, so a process is given its backend before
that: `captioning train` sets KERAS_BACKEND once it has read the config, which imports no
Keras (cli.py); a sweep sets it for its Ray workers. KERAS_BACKEND set by the user always
wins.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

AUTO_JAX_EPOCHS = 10


def has_nvidia_gpu() -> bool:
    """Whether the NVIDIA driver shows a GPU this process may use (no CUDA import)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def training_backend(choice: str, epochs: int, gpus: float = 0.0) -> str:
    """The Keras backend to train on for `train.backend` = `choice`."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if choice != "auto":
        return choice
    if gpus == 0 and not has_nvidia_gpu() and epochs >= AUTO_JAX_EPOCHS \
            and importlib.util.find_spec("jax") is not None:
        return "jax"
    return "tensorflow"
