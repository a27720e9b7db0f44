"""Captioner.load: a model directory is read in safe mode, or refused with one line naming the
file at fault; `captioning caption` on it, from files, pipes and with attention figures. Small
untrained models; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from captioning.cli import main
from captioning.config.loading import save_config
from captioning.config.schema import ModelConfig, parse_config
from captioning.data.vocabulary import Vocabulary
from captioning.errors import ModelDirError
from captioning.features.encoders import build_encoder
from captioning.inference.captioner import Captioner
from captioning.jsonfile import MAX_BYTES
from captioning.models.build import build_model
from conftest import cli, cli_env

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


@pytest.mark.parametrize("name", ["vocab.json", "config.json"])
def test_deeply_nested_json_in_a_model_file_is_refused_naming_the_file(model_dir, name):
    (model_dir / name).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert load_error(model_dir) == (
        f"{model_dir / name}: JSON nested too deeply to read (arrays or objects more than about "
        "a thousand levels deep)")


@pytest.mark.parametrize("name", ["vocab.json", "config.json"])
def test_a_model_file_that_is_not_utf8_is_refused_naming_the_file(model_dir, name):
    (model_dir / name).write_bytes(b'{"format": "\xff\xfe"}')
    assert load_error(model_dir) == (
        f"{model_dir / name} line 1: not valid UTF-8 (byte 0xff); re-save the file as UTF-8")


@pytest.mark.parametrize("name", ["vocab.json", "config.json"])
def test_a_model_file_that_is_not_json_is_refused_naming_the_file(model_dir, name):
    (model_dir / name).write_text('{"tokens": [', encoding="utf-8")
    assert load_error(model_dir) == f"{model_dir / name} line 1: not valid JSON (Expecting value)"


@pytest.mark.parametrize("name", ["vocab.json", "config.json"])
def test_an_absurdly_large_model_file_is_refused_before_it_is_read(model_dir, name):
    with (model_dir / name).open("wb") as handle:  # sparse: 257 MiB on disk in no time
        handle.truncate(MAX_BYTES + 2**20)
    assert load_error(model_dir) == (
        f"{model_dir / name}: too large to read (257 MiB; the limit is 256 MiB)")


@pytest.mark.parametrize("kept", [0.5, 0.0])
def test_a_truncated_keras_file_is_called_truncated_not_missing(model_dir, kept):
    path = model_dir / "model.keras"
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * kept)])
    assert load_error(model_dir) == (
        f"{path}: truncated or corrupt: {int(len(whole) * kept)} bytes that are not a zip "
        "archive, as every .keras file is; copy or train the model again")


def a_jpeg(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (96, 96), colour)
    image.paste((250, 250, 250), (20, 20, 60, 60))
    image.save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def attention_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loadable (untrained) model directory of the attention decoder."""
    path = tmp_path_factory.mktemp("attention") / "model"
    path.mkdir()
    vocab = Vocabulary.build(["startseq red circle endseq", "startseq blue star endseq"], 1)
    vocab.save(path / "vocab.json")
    # 139 x 139 images: a 3 x 3 feature map to attend over.
    config = parse_config({"encoder": {"weights": "none", "image_size": 139},
                           "model": {"decoder": "attention", "lstm_units": 8,
                                     "embedding_dim": 4, "attention": {"units": 8}}})
    save_config(config, path / "config.json")
    _, height, width, channels = build_encoder(config.encoder).output_shape
    model = build_model(config.model, len(vocab), np.zeros(channels, "float32"),
                        np.ones(channels, "float32"), positions=height * width,
                        max_length=config.decode.max_length)
    model.save(path / "model.keras")
    return path


def test_attention_figures_of_images_of_one_name_go_to_distinct_files(attention_dir, tmp_path,
                                                                      capsys):
    images = [a_jpeg(tmp_path / "a" / "x.jpg", (200, 40, 40)),
              a_jpeg(tmp_path / "b" / "x.jpg", (40, 40, 200)),
              a_jpeg(tmp_path / "y.jpg", (40, 200, 40))]
    out = tmp_path / "figures" / "out.png"
    out.parent.mkdir()
    assert main(["caption", "--attention", str(out), *map(str, images),
                 "--model", str(attention_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    figures = [out.with_name(name) for name in ("out-x-1.png", "out-x-2.png", "out-y.png")]
    assert [line.split("\t")[0] for line in lines] == list(map(str, images))
    assert [line.split("\t")[2] for line in lines] == [f"(attention: {f})" for f in figures]
    assert sorted(out.parent.iterdir()) == sorted(figures)


def test_an_attention_figure_is_drawn_of_an_image_read_from_a_named_pipe(attention_dir,
                                                                        tmp_path, capsys):
    fifo = tmp_path / "image.pipe"
    os.mkfifo(fifo)
    jpeg = a_jpeg(tmp_path / "image.jpg", (200, 40, 40)).read_bytes()

    def write() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(jpeg)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    out = tmp_path / "out.png"
    assert main(["caption", "--attention", str(out), str(fifo),
                 "--model", str(attention_dir)]) == 0
    writer.join()
    assert capsys.readouterr().out.strip().endswith(f"\t(attention: {out})")
    assert Image.open(out).size[0] > 0


@pytest.mark.slow
def test_caption_reads_an_image_piped_into_dev_stdin(attention_dir, tmp_path):
    jpeg = a_jpeg(tmp_path / "piped.jpg", (200, 40, 40))
    result = subprocess.run(cli("caption", "/dev/stdin", "--model", str(attention_dir)),
                            input=jpeg.read_bytes(), env=cli_env(), capture_output=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    [(_, expected)] = Captioner.load(attention_dir).caption_files([jpeg])
    assert expected
    assert result.stdout.decode().splitlines() == [f"/dev/stdin\t{expected}"]


def test_an_unreadable_image_for_an_attention_model_is_an_error_line_not_a_crash(
        attention_dir, tmp_path, capsys):
    missing = tmp_path / "missing.jpg"
    assert main(["caption", str(missing), "--model", str(attention_dir)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {missing}: file not found"
