"""Models written by captioning 0.1.0, before the package was grouped into folders, still
caption and serve: a model directory, and an MLflow model whose stored code imports
`captioning.mlflow_model` (tests/fixtures/v0.1.0/README.md says how they were made)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from captioning.inference.captioner import Captioner
from conftest import REPO, free_port, start_service, stop_service

pytestmark = pytest.mark.slow
FIXTURES = REPO / "tests" / "fixtures" / "v0.1.0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
IMAGE = FIXTURES / "image.jpg"


def test_the_stored_model_code_imports_the_old_module_path():
    code = (FIXTURES / "mlflow_model" / "model_code.py").read_text(encoding="utf-8")
    assert "from captioning.mlflow_model import CaptionerModel" in code


def test_a_model_directory_written_by_0_1_0_captions_as_it_did():
    [(path, caption)] = Captioner.load(FIXTURES / "model").caption_files([IMAGE])
    assert (path, caption) == (IMAGE, EXPECTED["caption"])


def test_an_mlflow_model_logged_by_0_1_0_loads_and_captions_as_it_did(tmp_path):
    # A copy: MLflow may write beside a model it loads, and the fixture must stay as it is.
    model = shutil.copytree(FIXTURES / "mlflow_model", tmp_path / "model")
    loaded = mlflow.pyfunc.load_model(str(model))
    answer = loaded.predict(pd.DataFrame({"image": [IMAGE.read_bytes(), b"not an image"]}))
    assert answer.to_dict("records") == [
        {"caption": EXPECTED["pyfunc_caption"], "error": None},
        {"caption": None, "error": "row 1: not an image file PIL can read"}]


def test_mlflow_models_serve_serves_a_model_logged_by_0_1_0(tmp_path):
    model = shutil.copytree(FIXTURES / "mlflow_model", tmp_path / "model")
    port = free_port()
    bin_dir = Path(sys.executable).parent
    url = f"http://127.0.0.1:{port}"
    server = start_service(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        f"{url}/ping", tmp_path / "serve.log", timeout=240,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    try:
        body = {"dataframe_records": [{"image": base64.b64encode(IMAGE.read_bytes()).decode()}]}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer == {"predictions": [{"caption": EXPECTED["pyfunc_caption"],
                                           "error": None}]}
    finally:
        stop_service(server)
