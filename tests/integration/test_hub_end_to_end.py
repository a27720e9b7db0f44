"""A KerasHub backbone from a local preset directory, end to end: a SigLIP tower trained with
the merge decoder on its own pooled vector, captioned by the command, served from a package
that carries the preset (the original moved away), and searched against a keras.applications
CNN in a sweep tracked by a real MLflow server, whose logged hub model captions through a
runs:/ URI and whose best is promoted."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import ray
from unit.features.test_hub import tiny_preset
from unit.tracking.test_pyfunc import save_pyfunc

from captioning.cli import main
from captioning.config.schema import parse_config
from captioning.inference.captioner import Captioner
from captioning.training.train import train_captioner
from conftest import REPO, start_local_ray, trial_runs

pytestmark = pytest.mark.slow


def hub_experiment(sample_root: Path, preset: Path, decoder: str = "attention",
                   **train) -> dict:
    return {"data": {"root": str(sample_root)},
            "encoder": {"name": f"hub:{preset}", "weights": "imagenet"},
            "model": {"decoder": decoder, "lstm_units": 32, "embedding_dim": 16,
                      "attention": {"units": 16}},
            "train": {"epochs": 1, "batch_size": 64, "learning_rate": 0.003,
                      "score_images": 10, **train}}


def test_a_hub_encoder_trains_captions_and_is_served_from_a_package_carrying_its_preset(
        sample_root, tmp_path, capsys):
    preset = tiny_preset(tmp_path / "presets" / "tiny-siglip", "siglip")
    config = parse_config(hub_experiment(sample_root, preset, "merge"))
    result = train_captioner(config, model_dir=tmp_path / "model", verbose=0)
    assert result.model_dir.is_dir()
    images = sorted((sample_root / "Images").glob("*.jpg"))[:3]
    assert main(["caption", *map(str, images), "--model", str(tmp_path / "model")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = [caption for _, caption in Captioner.load(tmp_path / "model").caption_files(images)]
    assert [line.split("\t") for line in lines] == [[str(p), c] for p, c in zip(images, expected,
                                                                                strict=True)]
    assert all(expected)

    saved = save_pyfunc(tmp_path / "model", tmp_path / "served" / "model")
    shutil.move(preset, tmp_path / "moved-away")  # the package must carry its own copy
    served = mlflow.pyfunc.load_model(str(saved))
    out = served.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    assert list(out["caption"]) == expected


def test_a_sweep_searches_a_cnn_against_a_hub_backbone_and_logs_a_model_of_each(
        sample_root, tmp_path, mlflow_server, capsys):
    preset = tiny_preset(tmp_path / "tiny-vit")
    space = tmp_path / "space.yaml"
    space.write_text(f"encoder.name:\n  choice: [inception_v3, 'hub:{preset}']\n"
                     "model.decoder:\n  choice: [attention]\n")
    from captioning.config.loading import load_experiment
    from captioning.tune.launcher import run_sweep

    config = load_experiment(REPO / "experiments" / "quickstart.yaml", [
        "name=hub", f"data.root={sample_root}", f"sweep.tracking_uri={mlflow_server}",
        f"sweep.storage_path={tmp_path / 'ray_results'}", f"sweep.search_space={space}",
        "encoder.image_size=75",  # the CNN's; the preset reads its own 32 px
        "train.epochs=1", "train.score_images=10", "sweep.startup_trials=3"])
    start_local_ray()
    try:
        result = run_sweep(config, num_samples=3, say=lambda _: None)
    finally:
        ray.shutdown()
    capsys.readouterr()
    assert result.trials == 3 and result.errors == 0
    runs = trial_runs(mlflow_server, "hub", result.parent_run_id)
    by_encoder = {run.data.params["encoder.name"]: run for run in runs}
    assert set(by_encoder) == {"inception_v3", f"hub:{preset}"}  # the sweep's seed draws both
    hub_run = by_encoder[f"hub:{preset}"]
    assert "hub-tiny-vit" in hub_run.info.run_name
    assert float(hub_run.data.metrics["val_cider"]) >= 0
    # What the trial logged (and promote registers) carries the preset: moved away, the
    # logged model still captions, and so does the promoted champion.
    shutil.move(preset, tmp_path / "moved-away")
    image = sorted((sample_root / "Images").glob("*.jpg"))[0]
    assert main(["caption", str(image), "--model", f"runs:/{hub_run.info.run_id}/model",
                 "--tracking-uri", mlflow_server]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{image}\t")
    assert main(["promote", "--sweep-run", result.parent_run_id, "--model-name", "hub-captioner",
                 "--tracking-uri", mlflow_server]) == 0
    assert main(["caption", str(image), "--model", "models:/hub-captioner@champion",
                 "--tracking-uri", mlflow_server]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{image}\t")
