"""The models and decoding use Keras layers and keras.ops only, so they run on both backends
the project uses: the model and decoding tests run again on the one this process does not use
(TensorFlow by default; JAX trains long runs on a CPU: captioning/training/backend.py).
Keras fixes its backend when it is first imported, so the other backend needs a process of
its own: those files (and SCST's, whose policy-gradient step is the same Keras model) run
again there, in a nested pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
OTHER = "tensorflow" if keras.backend.backend() == "jax" else "jax"


def test_model_equivalence_and_decoding_tests_pass_on_the_other_backend():
    env = {**os.environ, "KERAS_BACKEND": OTHER, "PYTHONPATH": str(REPO)}
    backend = subprocess.run([sys.executable, "-c", "import captioning, keras; "
                              "print(keras.backend.backend())"],
                             env=env, capture_output=True, text=True, check=True)
    assert backend.stdout.strip() == OTHER
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/models/test_build.py", "tests/unit/models/test_decoding.py",
         "tests/unit/training/test_scst.py", "tests/unit/training/test_recipe.py",
         "--deselect", "tests/unit/models/test_build.py::"
         "test_every_decoder_file_is_in_the_registry_and_the_config_takes_its_name"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.parametrize(("choice", "epochs", "gpus", "gpu_here", "wanted"), [
    ("auto", 10, 0, False, "jax"),  # many CPU epochs: compiling each shape once pays
    ("auto", 9, 0, False, "tensorflow"),  # a short run: compiling would not pay
    ("auto", 50, 0.5, False, "tensorflow"),  # trials on GPUs: cuDNN
    ("auto", 50, 0, True, "tensorflow"),  # a GPU on this machine
    ("tensorflow", 50, 0, False, "tensorflow"),
    ("jax", 3, 0, False, "jax"),
])
def test_train_backend_auto_picks_jax_only_where_it_pays(monkeypatch, choice, epochs, gpus,
                                                        gpu_here, wanted):
    from captioning.training import backend

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(backend, "has_nvidia_gpu", lambda: gpu_here)
    assert backend.training_backend(choice, epochs, gpus) == wanted
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the user's own choice always wins
    assert backend.training_backend(choice, epochs, gpus) == "torch"


def test_captioning_train_chooses_jax_before_keras_is_imported_and_trains_there(sample_root,
                                                                              tmp_path):
    from conftest import small_overrides

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-m", "captioning.cli", "train", "--output", str(tmp_path / "m"),
         *[f"--set={o}" for o in small_overrides(sample_root)], "--set=train.epochs=10",
         "--set=train.score_images=5", "--set=model.lstm_units=32",
         "--set=model.embedding_dim=16", "--set=train.batch_size=64",
         "--set=encoder.name=mobilenet", "--set=encoder.alpha=0.25",
         "--set=encoder.image_size=64", "--set=train.scst.epochs=1"],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training on Keras' jax backend (train.backend: auto)" in result.stdout
    assert f"model saved to {tmp_path / 'm'}" in result.stdout
    assert (tmp_path / "m" / "model.keras").is_file()
    # Then one SCST epoch, on JAX too, continuing the same history.
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [epoch["scst"] for epoch in history] == [0.0] * (len(history) - 1) + [1.0]
    assert f"Epoch {len(history)}/11 (SCST)" in result.stdout
