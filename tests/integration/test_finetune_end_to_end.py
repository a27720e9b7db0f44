"""Fine-tuning the encoder's last layers from a cached cut, end to end through the command:
the tail trains inside model.keras, `caption`, `evaluate` and the MLflow model run the frozen
head and then that tail, and a sweep that searches the cut against a frozen encoder logs it
per trial on a real MLflow server and promotes a model that captions.

The encoder is a small CNN of one's own with random weights (a random-weight keras.applications
network's deep maps all but vanish, so its tail would not visibly learn); tests/unit/features/
test_cut.py cuts MobileNet itself."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
from unit.tracking.test_pyfunc import save_pyfunc

from captioning.cli import main
from captioning.config.loading import load_experiment
from captioning.features.cut import build_tail
from captioning.inference.captioner import Captioner
from captioning.models.build import load_keras_model
from captioning.models.tuned import TAIL
from captioning.tune.launcher import run_sweep
from conftest import REPO, start_local_ray, trial_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    """Three convolutions at 48 px, saved as a .keras model of one's own."""
    keras.utils.set_random_seed(0)
    image = keras.Input((48, 48, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(image)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="conv_b")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv_c")(x)
    path = tmp_path_factory.mktemp("encoder") / "small_cnn.keras"
    keras.Model(image, x).save(path)
    return path


def overrides(root: Path, cnn: Path, *more: str) -> list[str]:
    keys = [f"data.root={root}", "encoder.name=small_cnn", f"encoder.model={cnn}",
            "encoder.preprocess=none", "encoder.image_size=48", "model.lstm_units=32",
            "model.embedding_dim=16", "model.attention.units=16", "train.epochs=2",
            "train.batch_size=64", "train.score_images=10", *more]
    return [arg for key in keys for arg in ("--set", key)]


def test_a_fine_tuned_cut_trains_and_captions_evaluates_and_serves_through_its_tail(
        sample_root, small_cnn, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["train", *overrides(sample_root, small_cnn, "model.decoder=attention",
                                     "encoder.fine_tune.from_layer=conv_b",
                                     "encoder.fine_tune.learning_rate_scale=0.5"),
                 "--output", str(model_dir)]) == 0
    captioner = Captioner.load(model_dir)
    # The cut map (conv_b's input) is what was cached and what the head gives.
    assert captioner.encoder.output_shape[1:] == (23, 23, 16)
    tail = load_keras_model(model_dir / "model.keras").get_layer(TAIL)
    assert [layer.name for layer in tail.layers[1:]] == ["conv_b", "conv_c"]
    start = build_tail(captioner.config.encoder)  # the encoder's own weights, as training began
    assert not np.allclose(tail.get_layer("conv_c").kernel.numpy(),
                           start.get_layer("conv_c").kernel.numpy())  # it learned

    images = sorted((sample_root / "Images").glob("*.jpg"))[:3]
    capsys.readouterr()
    assert main(["caption", *map(str, images), "--model", str(model_dir)]) == 0
    printed = [line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()]
    expected = [caption for _, caption in captioner.caption_files(images)]
    assert printed == expected and all(expected)

    assert main(["evaluate", "--model", str(model_dir), "--output",
                 str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["images_scored"] > 0 and 0 <= scores["scores"]["cider"]

    served = mlflow.pyfunc.load_model(str(save_pyfunc(model_dir, tmp_path / "served" / "m")))
    out = served.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    assert list(out["caption"]) == expected


def test_a_sweep_searches_the_cut_logs_it_per_trial_and_promotes_a_model_that_captions(
        sample_root, small_cnn, tmp_path, mlflow_server, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("encoder.fine_tune.from_layer:\n  choice: [null, conv_c]\n"
                     "model.decoder:\n  choice: [merge]\n")
    sets = overrides(sample_root, small_cnn, "name=cut", f"sweep.tracking_uri={mlflow_server}",
                     f"sweep.storage_path={tmp_path / 'ray_results'}",
                     f"sweep.search_space={space}", "train.epochs=1", "sweep.startup_trials=3")
    config = load_experiment(REPO / "experiments" / "quickstart.yaml", sets[1::2])
    start_local_ray()
    try:
        result = run_sweep(config, num_samples=3, say=lambda _: None)
    finally:
        ray.shutdown()
    assert result.trials == 3 and result.errors == 0
    runs = trial_runs(mlflow_server, "cut", result.parent_run_id)
    cuts = {run.data.params.get("encoder.fine_tune.from_layer") for run in runs}
    assert cuts == {None, "conv_c"}  # the seed's three draws give both
    tuned = next(r for r in runs if r.data.params.get("encoder.fine_tune.from_layer"))
    assert float(tuned.data.params["encoder.fine_tune.learning_rate_scale"]) == 0.1
    assert main(["promote", "--sweep-run", result.parent_run_id, "--model-name", "cut-captioner",
                 "--tracking-uri", mlflow_server]) == 0
    image = sorted((sample_root / "Images").glob("*.jpg"))[0]
    capsys.readouterr()
    assert main(["caption", str(image), "--model", f"runs:/{tuned.info.run_id}/model",
                 "--tracking-uri", mlflow_server]) == 0
    assert main(["caption", str(image), "--model", "models:/cut-captioner@champion",
                 "--tracking-uri", mlflow_server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"{image}\t")
