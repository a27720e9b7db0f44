"""Fuzzing the readers of every file a user hands us: a few hundred seeded random mutations of
valid files (bytes flipped, cut, repeated, YAML and JSON syntax spliced in), each read as the
command would. Every outcome is success or one of our one-line errors (CaptioningError), never
a traceback: the CLI prints the first as `error: ...` and no other exception reaches a user."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from captioning.config.loading import load_experiment
from captioning.config.schema import ExperimentConfig, ModelConfig, parse_config
from captioning.data.dataset import load_dataset
from captioning.data.sample import draw_sample_dataset
from captioning.data.vocabulary import Vocabulary
from captioning.errors import CaptioningError
from captioning.inference.captioner import Captioner
from captioning.tune.search_space import load_search_space
from conftest import REPO

# Splinters of the formats the files are in, and of what breaks parsers.
SPLINTERS = [b"&a ", b"*a", b"[", b"]", b"{", b"}", b": ", b"- ", b"\t", b"\n", b"#", b"'", b'"',
             b"!!python/object:os.system ", b"<<: *a\n", b"? ", b"|", b"\xff\xfe", b"\x00",
             b"\xcc\x81", b"1e999", b"-1", b"nan", b"null", b"true", b"99999999999", b",",
             b"[" * 200, b"\\u0000", b"\"split\": [", b"#9\t", b".jpg"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of `data`."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(6)
        if kind == 0 and data:    # flip a byte
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        elif kind == 1:           # cut a stretch
            data = data[:at] + data[at + rng.randint(1, 40):]
        elif kind == 2:           # repeat a stretch
            piece = data[at:at + rng.randint(1, 80)]
            data = data[:at] + piece * rng.randint(2, 5) + data[at:]
        elif kind == 3:           # truncate
            data = data[:at]
        else:                     # splice in syntax
            data = data[:at] + rng.choice(SPLINTERS) + data[at:]
    return data


def fuzz(original: Path, read: Callable[[], object], count: int, seed: int) -> dict[str, int]:
    """Read `count` mutations of `original` (restored after); fail on any outcome other than
    success or a one-line CaptioningError, naming the mutation that broke it. The unmutated
    file must read before and after: a reader that refused everything would pass otherwise."""
    valid = original.read_bytes()
    read()  # the valid file reads
    rng = random.Random(seed)
    outcomes = {"read": 0, "refused": 0}
    try:
        for case in range(count):
            mutated = mutate(valid, rng)
            original.write_bytes(mutated)
            try:
                read()
                outcomes["read"] += 1
            except CaptioningError as error:
                assert "\n" not in str(error).strip(), (case, mutated[:300], str(error))
                assert str(error).strip(), (case, mutated[:300])
                outcomes["refused"] += 1
            except Exception as error:  # noqa: BLE001 - what the test is for
                pytest.fail(f"mutation {case} of {original.name} ({mutated[:300]!r}) raised "
                            f"{type(error).__name__}: {error}")
    finally:
        original.write_bytes(valid)
    read()  # and still reads: nothing the mutations did stuck (a cache, a lock, a half write)
    assert outcomes["refused"] > 0  # the mutations do reach the checks
    return outcomes


def test_the_config_loader_survives_300_mutations_of_an_experiment(tmp_path):
    path = tmp_path / "experiment.yaml"
    shutil.copy(REPO / "experiments" / "quickstart.yaml", path)
    fuzz(path, lambda: load_experiment(path), 300, seed=1)


def test_the_search_space_loader_survives_300_mutations_of_a_space(tmp_path):
    path = tmp_path / "space.yaml"
    shutil.copy(REPO / "search_spaces" / "default.yaml", path)
    base = ExperimentConfig()
    fuzz(path, lambda: load_search_space(path, base), 300, seed=2)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The three dataset layouts of one small sample: Kaggle's captions.txt, the original
    Flickr8k.token.txt with its split lists, Karpathy's dataset_flickr8k.json."""
    root = draw_sample_dataset(tmp_path_factory.mktemp("kaggle") / "data", images=12, seed=5)
    dataset = load_dataset(root)
    names = sorted(dataset.captions)
    token = tmp_path_factory.mktemp("token")
    shutil.copytree(root / "Images", token / "Images")
    (token / "Flickr8k.token.txt").write_text("".join(
        f"{name}#{i}\t{caption}\n" for name in names
        for i, caption in enumerate(_raw(root, name))), encoding="utf-8")
    (token / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:8]) + "\n")
    (token / "Flickr_8k.devImages.txt").write_text("\n".join(names[8:10]) + "\n")
    (token / "Flickr_8k.testImages.txt").write_text("\n".join(names[10:]) + "\n")
    karpathy = tmp_path_factory.mktemp("karpathy")
    shutil.copytree(root / "Images", karpathy / "Images")
    (karpathy / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": [
        {"filename": name, "split": ["train", "val", "test"][min(i // 4, 2)],
         "sentences": [{"raw": caption, "tokens": caption.lower().split()}
                       for caption in _raw(root, name)]}
        for i, name in enumerate(names)]}), encoding="utf-8")
    return {"kaggle": root / "captions.txt", "token": token / "Flickr8k.token.txt",
            "karpathy": karpathy / "dataset_flickr8k.json"}


def _raw(root: Path, name: str) -> list[str]:
    lines = (root / "captions.txt").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split(",", 1)[1] for line in lines if line.split(",", 1)[0] == name]


@pytest.mark.parametrize(("layout", "seed"), [("kaggle", 3), ("token", 4), ("karpathy", 5)])
def test_each_dataset_reader_survives_200_mutations_of_its_captions_file(layouts, layout, seed):
    path = layouts[layout]
    assert len(load_dataset(path.parent, layout).captions) == 12
    fuzz(path, lambda: load_dataset(path.parent, layout), 200, seed=seed)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A loadable (untrained) model directory, written as training writes it."""
    from captioning.config.loading import save_config
    from captioning.models.build import build_model

    path = tmp_path_factory.mktemp("model")
    vocab = Vocabulary.build(["startseq red circle endseq", "startseq blue star endseq"], 1)
    vocab.save(path / "vocab.json")
    save_config(parse_config({"encoder": {"weights": "none", "image_size": 75}}),
                path / "config.json")
    build_model(ModelConfig(lstm_units=8, embedding_dim=4), len(vocab),
                np.zeros(8, "float32"), np.ones(8, "float32")).save(path / "model.keras")
    return path


@pytest.mark.parametrize(("name", "count", "seed"), [("config.json", 200, 6),
                                                     ("vocab.json", 200, 7),
                                                     ("model.keras", 40, 8)])
def test_the_model_loader_survives_mutations_of_each_file(model_dir, name, count, seed):
    fuzz(model_dir / name, lambda: Captioner.load(model_dir), count, seed=seed)
