"""The model and decoding use Keras layers and keras.ops only, so they run on JAX too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_model_equivalence_and_decoding_tests_pass_on_the_jax_backend():
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    backend = subprocess.run([sys.executable, "-c", "import keras; print(keras.backend.backend())"],
                             env=env, capture_output=True, text=True, check=True)
    assert backend.stdout.strip() == "jax"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_model.py", "tests/test_decode.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
