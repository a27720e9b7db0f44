"""A model directory's files: the one place their names are spelled, its JSON read and written.

`train_captioner` keeps the best epoch (by train.monitor) of a run as a model directory:

    model.keras      the Keras model (loaded in safe mode)
    last.keras       the latest epoch with its optimizer state, to resume from
    samples.json     greedy captions of validation images beside their references (best epoch)
    attention.png    where the attention decoder looked for each word, on a few of them
    vocab.json       the vocabulary
    config.json      the resolved experiment config
    metrics.json     the best epoch's metrics; history.json every epoch's
    checkpoint.json  the epoch and every file's SHA-256, so a copy can be checked whole

Captioning needs REQUIRED; an MLflow model carries PACKAGED (tracking/pyfunc.py). Models saved
by 0.1.0 have the same names. A file of the directory that is not JSON (or too large, or
nested too deeply) is a ModelDirError naming it (captioning.jsonfile).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captioning.atomic import Writer
from captioning.errors import ModelDirError
from captioning.jsonfile import read_json

MODEL = "model.keras"
LAST = "last.keras"
SAMPLES = "samples.json"
ATTENTION = "attention.png"
VOCAB = "vocab.json"
CONFIG = "config.json"
METRICS = "metrics.json"
HISTORY = "history.json"
MANIFEST = "checkpoint.json"

REQUIRED = (MODEL, VOCAB, CONFIG)
PACKAGED = (*REQUIRED, METRICS)


def missing_files(model_dir: Path) -> list[str]:
    """The files of REQUIRED that `model_dir` lacks, in that order."""
    return [name for name in REQUIRED if not (model_dir / name).is_file()]


def json_writer(data: object) -> Writer:
    """A writer of `data` as indented JSON, for `atomic.write_whole`."""
    return lambda path: path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_json(path: Path, data: object) -> None:
    json_writer(data)(path)


def read_config(model_dir: Path) -> Any:
    """config.json as JSON, unparsed (inference.captioner parses and checks it)."""
    return read_json(model_dir / CONFIG, ModelDirError)


def read_history(model_dir: Path) -> list[dict[str, float]]:
    """Every epoch's metrics so far (history.json), first epoch first."""
    history = read_json(model_dir / HISTORY, ModelDirError)
    if not isinstance(history, list) or not all(isinstance(m, dict) for m in history):
        raise ModelDirError(f"{model_dir / HISTORY}: expected a list of each epoch's metrics")
    return history


def read_metrics(model_dir: Path) -> dict[str, float]:
    """The kept epoch's metrics (metrics.json)."""
    return read_json(model_dir / METRICS, ModelDirError)
