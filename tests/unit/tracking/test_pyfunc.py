"""The captioner as an MLflow pyfunc, offline: image bytes in, the local model's caption out."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from captioning.config.encoder import EncoderConfig
from captioning.config.limits import MAX_BEAM_WIDTH
from captioning.errors import ModelDirError
from captioning.features.encoders import build_encoder
from captioning.inference.captioner import Captioner
from captioning.tracking.pyfunc import (
    ARTIFACT,
    CODE,
    input_example,
    package,
    signature,
)
from captioning.training.train import train_captioner
from conftest import flat_png, quick_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    train_captioner(quick_config(sample_root, epochs=4), model_dir=path, verbose=0)
    return path


def save_pyfunc(model_dir: Path, path: Path) -> Path:
    config = Captioner.load(model_dir).config
    mlflow.pyfunc.save_model(
        str(path), python_model=str(CODE),
        artifacts={ARTIFACT: str(package(model_dir, path.parent / "packaged"))},
        signature=signature(config.decode.beam_width), input_example=input_example())
    return path


@pytest.fixture(scope="module")
def pyfunc(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    saved = save_pyfunc(model_dir, tmp_path_factory.mktemp("saved") / "model")
    return mlflow.pyfunc.load_model(str(saved)), saved


def as_png(jpeg: Path, dest: Path) -> Path:
    Image.open(jpeg).save(dest, format="PNG")
    return dest


def test_the_pyfunc_captions_jpeg_and_png_bytes_as_the_model_directory_does(
        pyfunc, model_dir, sample_root, tmp_path):
    model, _ = pyfunc
    jpegs = sorted((sample_root / "Images").glob("*.jpg"))[:3]
    png = as_png(jpegs[0], tmp_path / "first.png")
    files = [*jpegs, png]
    out = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in files]}))
    expected = [caption for _, caption in Captioner.load(model_dir).caption_files(files)]
    assert list(out["caption"]) == expected
    assert all(isinstance(c, str) for c in expected)
    assert list(out["error"]) == [None] * len(files)


def test_an_unreadable_image_gets_an_error_and_the_others_still_get_captions(pyfunc,
                                                                            sample_root):
    model, _ = pyfunc
    jpeg = sorted((sample_root / "Images").glob("*.jpg"))[0].read_bytes()
    out = model.predict(pd.DataFrame({"image": [b"not an image", jpeg, jpeg[:200]]}))
    assert out["caption"][0] is None and out["caption"][2] is None
    assert isinstance(out["caption"][1], str) and out["error"][1] is None
    assert out["error"][0].startswith("row 0: not an image file")
    assert out["error"][2].startswith("row 2: ")


def test_an_empty_request_gets_an_empty_answer(pyfunc):
    model, _ = pyfunc
    out = model.predict(pd.DataFrame({"image": pd.Series([], dtype=object)}))
    assert list(out.columns) == ["caption", "error"]
    assert len(out) == 0


def test_empty_image_bytes_get_an_error_and_the_others_still_get_captions(pyfunc, sample_root):
    model, _ = pyfunc
    jpeg = sorted((sample_root / "Images").glob("*.jpg"))[0].read_bytes()
    out = model.predict(pd.DataFrame({"image": [b"", jpeg]}))
    assert list(out["error"]) == ["row 0: empty (0 bytes), not an image", None]
    assert out["caption"][0] is None and isinstance(out["caption"][1], str)


def test_an_oversized_image_gets_an_error_and_the_others_still_get_captions(pyfunc,
                                                                            sample_root):
    model, _ = pyfunc
    jpegs = [p.read_bytes() for p in sorted((sample_root / "Images").glob("*.jpg"))[:2]]
    # Small files, huge pictures: 400 and 72 megapixels, refused from their headers.
    rows = [jpegs[0], flat_png(20000, 20000), flat_png(9000, 8000), jpegs[1]]
    out = model.predict(pd.DataFrame({"image": rows}))
    alone = model.predict(pd.DataFrame({"image": jpegs}))
    assert [out["caption"][0], out["caption"][3]] == list(alone["caption"])
    assert out["error"][0] is None and out["error"][3] is None
    assert out["caption"][1] is None and out["caption"][2] is None
    assert out["error"][1].startswith("row 1: image too large (Image size (400000000 pixels)")
    assert out["error"][2] == ("row 2: image too large: 9000x8000 pixels, more than the 64 "
                               "megapixels decoded")


def test_beam_width_is_a_parameter_with_the_models_default_and_a_bound(pyfunc, model_dir,
                                                                        sample_root):
    model, _ = pyfunc
    jpegs = sorted((sample_root / "Images").glob("*.jpg"))[:4]
    frame = pd.DataFrame({"image": [p.read_bytes() for p in jpegs]})
    local = Captioner.load(model_dir)
    assert local.config.decode.beam_width == 1
    wide = [c for _, c in local.caption_files(jpegs, beam_width=3)]
    assert wide != [c for _, c in local.caption_files(jpegs, beam_width=1)], \
        "pick images whose beam-3 and greedy captions differ, or this cannot tell them apart"
    assert list(model.predict(frame, params={"beam_width": 3})["caption"]) == wide
    params = model.metadata.get_params_schema().to_dict()
    assert params == [{"name": "beam_width", "type": "long", "shape": None, "default": 1}]
    for bad in (0, -2, MAX_BEAM_WIDTH + 1):
        with pytest.raises(MlflowException, match=f"beam_width: expected 1 to "
                                                  f"{MAX_BEAM_WIDTH}, got {bad}"):
            model.predict(frame, params={"beam_width": bad})


def test_a_served_row_that_is_not_base64_gets_an_error_and_the_others_still_get_captions(
        pyfunc, sample_root):
    from mlflow.pyfunc.scoring_server import invocations

    model, _ = pyfunc
    jpegs = [p.read_bytes() for p in sorted((sample_root / "Images").glob("*.jpg"))[:2]]
    rows = [base64.b64encode(jpegs[0]).decode(), "not base64!", 42,
            base64.encodebytes(jpegs[1]).decode()]  # with line breaks, as MLflow writes it
    # What `mlflow models serve` runs on a POST to /invocations: parse with the signature,
    # then predict.
    answer = invocations(json.dumps({"dataframe_records": [{"image": r} for r in rows]}),
                         "application/json", model, model.metadata.get_input_schema())
    assert answer.status == 200, answer.response
    alone = model.predict(pd.DataFrame({"image": jpegs}))
    assert json.loads(answer.response) == {"predictions": [
        {"caption": alone["caption"][0], "error": None},
        {"caption": None, "error": "row 1: not base64 (Only base64 data is allowed)"},
        {"caption": None, "error": "row 2: expected image file bytes or base64, got int"},
        {"caption": alone["caption"][1], "error": None}]}


def test_the_saved_model_has_a_signature_an_input_example_and_no_pickle(pyfunc):
    model, saved = pyfunc
    inputs = model.metadata.get_input_schema().to_dict()
    # Any, not binary: MLflow's server would decode a binary column itself, refusing the whole
    # request for one row that is not base64 (see the next test).
    assert inputs == [{"type": "any", "name": "image", "required": True}]
    outputs = [c["name"] for c in model.metadata.get_output_schema().to_dict()]
    assert outputs == ["caption", "error"]
    example = json.loads((saved / "serving_input_example.json").read_text())
    encoded = example["dataframe_split"]["data"][0][0]
    Image.open(io.BytesIO(base64.b64decode(encoded))).verify()  # a real PNG
    assert not list(saved.rglob("*.pkl")), "the model must load without unpickling"
    assert "model_code_path" in model.metadata.flavors["python_function"]


def test_a_local_encoder_weights_file_travels_inside_the_packaged_model(model_dir, sample_root,
                                                                        tmp_path):
    weights = tmp_path / "my_encoder.weights.h5"
    build_encoder(EncoderConfig(name="inception_v3", weights="none", image_size=75)).save_weights(
        weights)
    local = tmp_path / "local"
    local.mkdir()
    for name in ("model.keras", "vocab.json"):
        (local / name).write_bytes((model_dir / name).read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["encoder"]["weights"] = str(weights)
    (local / "config.json").write_text(json.dumps(config))

    packed = package(local, tmp_path / "packed")
    weights.unlink()  # the packaged model must not need the original file
    packed_config = json.loads((packed / "config.json").read_text())
    assert packed_config["encoder"]["weights"] == "encoder-weights.weights.h5"
    loaded = Captioner.load(packed)
    assert Path(loaded.config.encoder.weights) == (packed / "encoder-weights.weights.h5").resolve()
    jpegs = sorted((sample_root / "Images").glob("*.jpg"))[:3]
    # Same weights as the seeded random encoder, so the same captions as the original model.
    assert loaded.caption_files(jpegs) == Captioner.load(model_dir).caption_files(jpegs)


def test_packaging_a_folder_that_is_not_a_model_names_what_is_missing(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ModelDirError, match="missing model.keras, config.json"):
        package(tmp_path, tmp_path / "out")
