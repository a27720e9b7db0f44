"""Captioner.load: a model directory is read in safe mode, or refused with one line naming the
file at fault. Small untrained models; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from captioning.cli import main
from captioning.config.loading import save_config
from captioning.config.schema import ModelConfig, parse_config
from captioning.data.vocabulary import Vocabulary
from captioning.errors import ModelDirError
from captioning.inference.captioner import Captioner
from captioning.models.build import build_model

DIM = 8


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A loadable (untrained) captioning model directory, written as training writes it."""
    path = tmp_path / "model"
    path.mkdir()
    vocab = Vocabulary.build(["startseq red circle endseq", "startseq blue star endseq"], 1)
    vocab.save(path / "vocab.json")
    save_config(
        parse_config({"encoder": {"weights": "none", "image_size": 75}}), path / "config.json"
    )
    model = build_model(
        ModelConfig(lstm_units=8, embedding_dim=4),
        len(vocab),
        np.zeros(DIM, "float32"),
        np.ones(DIM, "float32"),
    )
    model.save(path / "model.keras")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ModelDirError) as caught:
        Captioner.load(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_complete_model_directory_loads(model_dir):
    captioner = Captioner.load(model_dir)
    assert len(captioner.caption_features(np.zeros((2, DIM), "float32"))) == 2


def test_a_model_directory_without_its_vocabulary_names_the_missing_file(model_dir):
    (model_dir / "vocab.json").unlink()
    assert load_error(model_dir) == (
        f"{model_dir}: not a captioning model directory (missing vocab.json)"
    )


def test_a_keras_model_from_another_project_in_place_of_ours_is_refused(model_dir):
    vocab_size = len(Vocabulary.load(model_dir / "vocab.json"))
    # Same output width as our vocabulary, so only its layers can tell it apart.
    other = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(vocab_size, name="dense")])
    other.save(model_dir / "model.keras")
    assert load_error(model_dir) == (
        f"{model_dir / 'model.keras'}: not a captioning model: it has no image_norm, "
        "image_dense, embedding, lstm, merge, decoder_dense, logits layer (its layers: dense)"
    )


def test_a_keras_file_carrying_python_code_is_refused_by_safe_mode(model_dir):
    # Keras stores a lambda's bytecode in the file; only an unsafe load would rebuild it.
    other = keras.Sequential([keras.Input((DIM,)), keras.layers.Lambda(lambda x: x * 2)])
    other.save(model_dir / "model.keras")
    assert load_error(model_dir).startswith(
        f"{model_dir / 'model.keras'}: cannot load it as a captioning model (ValueError: "
        "Requested the deserialization of a `Lambda` layer whose `function` is a Python lambda. "
        "This carries a potential risk of arbitrary code execution"
    )


def test_a_keras_file_given_as_the_model_says_to_give_the_folder(model_dir, tmp_path, capsys):
    keras_file = model_dir / "model.keras"
    assert load_error(keras_file) == (
        f"{keras_file}: a file, not a model directory; give the folder that holds "
        "model.keras, vocab.json, config.json"
    )
    assert main(["caption", str(tmp_path / "any.jpg"), "--model", str(keras_file)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {keras_file}: a file, not a model directory; give the folder that holds "
        "model.keras, vocab.json, config.json"
    )
