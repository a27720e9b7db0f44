"""Each decoder end to end on sample data: it trains on the encoder's cached feature maps,
loads in safe mode, captions image files and image bytes (as the MLflow model does), is
scored by evaluate, and, for the attention decoder, draws where it looked for each word."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from captioning.config.schema import parse_config
from captioning.features.cache import load_or_extract
from captioning.inference.captioner import Captioner
from captioning.inference.evaluate import evaluate_model
from captioning.tracking.pyfunc import ARTIFACT, CODE, input_example, package, signature
from captioning.training.train import train_captioner
from conftest import run_cli, start_up_noise

pytestmark = pytest.mark.slow
GRID_DECODERS = ["attention", "transformer"]


def grid_config(root: Path, decoder: str, **model):
    """MobileNet (alpha 0.25, random weights) at 96 px: 3x3 feature maps of 256 channels."""
    return parse_config({
        "data": {"root": str(root)},
        "encoder": {"name": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 96},
        "model": {"decoder": decoder, "lstm_units": 32, "embedding_dim": 16, "dropout": 0.1,
                  "attention": {"units": 16},
                  "transformer": {"layers": 1, "units": 32, "heads": 4, "ff_units": 64},
                  **model},
        "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003, "score_images": 8},
    })


@pytest.fixture(scope="module", params=GRID_DECODERS)
def trained(request, sample_root, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp(request.param) / "model"
    train_captioner(grid_config(sample_root, request.param), model_dir=path, verbose=0)
    return request.param, path


def test_a_grid_decoder_trains_on_the_cached_feature_maps(trained, sample_root):
    decoder, model_dir = trained
    captioner = Captioner.load(model_dir)
    assert captioner.config.model.decoder == decoder
    features = load_or_extract(captioner.config.encoder, sample_root / "Images",
                               sorted(p.name for p in (sample_root / "Images").glob("*.jpg")),
                               progress=False, grid=True)
    assert not features.extracted  # training cached them, with the maps
    assert features.grid.shape[1:] == (9, 256) and features.grid.dtype == np.float16
    # The pooled vector is the mean of the map over its positions.
    np.testing.assert_allclose(features.array[:5],
                               np.asarray(features.grid[:5], "float32").mean(axis=1), atol=2e-2)
    assert (model_dir / "attention.png").is_file() == (decoder == "attention")


def test_a_grid_decoder_captions_files_and_bytes_alike(trained, sample_root, tmp_path):
    _, model_dir = trained
    images = sorted((sample_root / "Images").glob("*.jpg"))[:3]
    captioner = Captioner.load(model_dir)
    from_files = [caption for _, caption in captioner.caption_files(images)]
    assert all(isinstance(c, str) for c in from_files)  # (two epochs may give no words)
    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(saved), python_model=str(CODE),
        artifacts={ARTIFACT: str(package(model_dir, tmp_path / "packaged"))},
        signature=signature(1), input_example=input_example())
    predicted = mlflow.pyfunc.load_model(str(saved)).predict(
        pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    assert list(predicted["caption"]) == from_files


def test_a_grid_decoder_is_scored_greedy_and_with_beams(trained):
    _, model_dir = trained
    greedy = evaluate_model(model_dir, "test", 1, progress=False)
    beam = evaluate_model(model_dir, "test", 3, progress=False)
    assert greedy["images_scored"] == beam["images_scored"] > 0
    assert set(greedy["scores"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}


def test_caption_draws_where_the_attention_decoder_looked_for_each_word(trained, sample_root,
                                                                       tmp_path):
    decoder, model_dir = trained
    image = sorted((sample_root / "Images").glob("*.jpg"))[0]
    out = tmp_path / "looked.png"
    result = run_cli("caption", str(image), "--model", str(model_dir), "--attention", str(out))
    if decoder != "attention":
        assert result.returncode == 2
        assert "does not say where it looks; the attention decoder does" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-2000:]
    assert start_up_noise(result) == []
    path, caption, drawn = result.stdout.strip().split("\t")
    assert path == str(image) and drawn == f"(attention: {out})"
    words = caption.split()
    with Image.open(out) as figure:  # the image, then one panel per word
        assert figure.width > 100 * (len(words) + 1) * 0.9
    maps = Captioner.load(model_dir).attend(image)[1]
    assert maps.shape == (len(words), 9)
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-5)


def test_a_saved_grid_model_is_recognised_by_its_config(trained):
    decoder, model_dir = trained
    other = "merge"
    config = (model_dir / "config.json").read_text()
    broken = model_dir.parent / "mislabelled"
    broken.mkdir(exist_ok=True)
    for name in ("model.keras", "vocab.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "config.json").write_text(config.replace(f'"decoder": "{decoder}"',
                                                       f'"decoder": "{other}"'))
    from captioning.errors import ModelDirError

    with pytest.raises(ModelDirError, match="not a captioning model"):
        Captioner.load(broken)


def test_image_bytes_become_the_same_feature_maps_as_files(trained, sample_root):
    _, model_dir = trained
    captioner = Captioner.load(model_dir)
    image = sorted((sample_root / "Images").glob("*.jpg"))[1]
    buffer = io.BytesIO(image.read_bytes())
    assert captioner.caption_images([buffer.getvalue()]) == captioner.caption_images([image])
