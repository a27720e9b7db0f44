import csv
import logging
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning.cli import main
from captioning.data.sample import (
    BACKGROUNDS,
    CAPTIONS_FILE,
    COLOURS,
    IMAGES_DIR,
    KINDS,
    draw_example,
    draw_sample_dataset,
    draw_scene,
)

N_IMAGES = 200


def read_captions(root: Path) -> dict[str, list[str]]:
    with open(root / CAPTIONS_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "caption"]
    captions: dict[str, list[str]] = {}
    for name, caption in rows[1:]:
        captions.setdefault(name, []).append(caption)
    return captions


def clean(caption: str) -> list[str]:
    text = caption.lower().translate(str.maketrans("", "", string.punctuation))
    return [w for w in text.split() if len(w) >= 2]


def nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - rgb) ** 2)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_sample_dataset(tmp_path_factory.mktemp("sample"), images=N_IMAGES, seed=0)


def test_layout_is_images_dir_plus_captions_csv_with_header(dataset: Path) -> None:
    assert (dataset / IMAGES_DIR).is_dir()
    assert (dataset / CAPTIONS_FILE).read_text(encoding="utf-8").splitlines()[0] == "image,caption"
    captions = read_captions(dataset)
    assert len(captions) == N_IMAGES
    assert sorted(p.name for p in (dataset / IMAGES_DIR).iterdir()) == sorted(captions)


def test_image_names_look_like_flickr(dataset: Path) -> None:
    for name in read_captions(dataset):
        assert re.fullmatch(r"\d{10}_[0-9a-f]{10}\.jpg", name), name


def test_every_image_has_five_captions(dataset: Path) -> None:
    counts = Counter(len(c) for c in read_captions(dataset).values())
    assert counts == {5: N_IMAGES}


def test_each_images_five_captions_are_worded_differently(dataset: Path) -> None:
    for name, captions in read_captions(dataset).items():
        assert len({" ".join(clean(c)) for c in captions}) == 5, (name, captions)


def test_images_are_rgb_within_expected_size_range(dataset: Path) -> None:
    for path in sorted((dataset / IMAGES_DIR).iterdir())[:40]:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            width, height = image.size
        assert 128 <= width <= 192
        assert 120 <= height <= 192


def test_same_seed_gives_identical_dataset(tmp_path: Path) -> None:
    a = draw_sample_dataset(tmp_path / "a", images=12, seed=7)
    b = draw_sample_dataset(tmp_path / "b", images=12, seed=7)
    assert (a / CAPTIONS_FILE).read_bytes() == (b / CAPTIONS_FILE).read_bytes()
    name = next(iter(read_captions(a)))
    with Image.open(a / IMAGES_DIR / name) as ia, Image.open(b / IMAGES_DIR / name) as ib:
        assert np.array_equal(np.asarray(ia), np.asarray(ib))


def test_other_seed_gives_different_dataset(tmp_path: Path) -> None:
    a = draw_sample_dataset(tmp_path / "a", images=12, seed=7)
    b = draw_sample_dataset(tmp_path / "b", images=12, seed=8)
    assert (a / CAPTIONS_FILE).read_bytes() != (b / CAPTIONS_FILE).read_bytes()
    assert set(read_captions(a)).isdisjoint(read_captions(b))


@pytest.mark.parametrize("images", [0, -3])
def test_fewer_than_one_image_raises(tmp_path: Path, images: int) -> None:
    with pytest.raises(ValueError):
        draw_sample_dataset(tmp_path, images=images)


def test_captions_file_matches_draw_example(dataset: Path) -> None:
    captions = list(read_captions(dataset).values())
    for index in (0, 1, 57, N_IMAGES - 1):
        assert draw_example(0, index)[2] == captions[index]


def test_every_caption_names_colour_and_kind_of_each_shape() -> None:
    for index in range(100):
        _, scene, captions = draw_example(3, index)
        assert 1 <= len(scene.shapes) <= 3
        for caption in captions:
            words = clean(caption)
            for shape in scene.shapes:
                phrase = f"{shape.colour} {shape.kind}"
                assert phrase in " ".join(words), (caption, scene)


def test_draw_scene_covers_all_kinds_colours_and_backgrounds() -> None:
    rng = np.random.default_rng(0)
    scenes = [draw_scene(rng)[1] for _ in range(150)]
    assert {s.kind for sc in scenes for s in sc.shapes} == set(KINDS)
    assert {s.colour for sc in scenes for s in sc.shapes} == set(COLOURS)
    assert {sc.background for sc in scenes} == set(BACKGROUNDS)
    assert {len(sc.shapes) for sc in scenes} == {1, 2, 3}


def test_image_colour_agrees_with_first_colour_named_in_captions(dataset: Path) -> None:
    captions = read_captions(dataset)
    for index, name in enumerate(list(captions)[:25]):
        _, scene, _ = draw_example(0, index)
        first = scene.shapes[0]
        named = next(w for w in clean(captions[name][0]) if w in COLOURS)
        with Image.open(dataset / IMAGES_DIR / name) as image:
            pixels = np.asarray(image, dtype=np.float64)
        ys, xs = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
        inside = np.hypot(xs - first.cx, ys - first.cy) <= 0.3 * first.radius
        assert nearest_colour(pixels[inside].mean(axis=0)) == named == first.colour


def test_shapes_do_not_overlap_much() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        _, scene = draw_scene(rng)
        for i, a in enumerate(scene.shapes):
            for b in scene.shapes[i + 1 :]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius


def test_vocabulary_is_small_and_no_caption_dominates(dataset: Path) -> None:
    all_captions = [c for cs in read_captions(dataset).values() for c in cs]
    vocabulary = {w for c in all_captions for w in clean(c)}
    assert 25 <= len(vocabulary) <= 80
    _, top = Counter(" ".join(clean(c)) for c in all_captions).most_common(1)[0]
    assert top / len(all_captions) < 0.05


# --- captioning sample-data into a folder that holds data ---------------------------------------

EXISTING = {
    "captions.txt": ("captions.txt", "image,caption\nmine.jpg,My own caption .\n"),
    "token": ("Flickr8k.token.txt", "mine.jpg#0\tMy own caption .\n"),
    "karpathy": ("dataset_flickr8k.json", '{"images": []}'),
    "images": ("Images/mine.jpg", "not really a photo"),
}


@pytest.mark.parametrize(("name", "content"), EXISTING.values(), ids=EXISTING)
def test_sample_data_into_a_folder_holding_a_dataset_is_refused_naming_it(
        tmp_path, capsys, name, content):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert main(["sample-data", str(tmp_path), "--images", "2"]) == 2
    found = "Images/ with files" if name.startswith("Images/") else name
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path} already holds a dataset ({found}); pass --force to overwrite its "
        f"{CAPTIONS_FILE} and add the sample images to {IMAGES_DIR}/"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                  if p.is_file()) == [name]
    assert (tmp_path / name).read_text(encoding="utf-8") == content


def test_sample_data_with_force_overwrites_the_captions_of_a_dataset(tmp_path, capsys):
    (tmp_path / CAPTIONS_FILE).write_text("image,caption\nmine.jpg,My own caption .\n", "utf-8")
    assert main(["sample-data", str(tmp_path), "--images", "2", "--force"]) == 0
    assert "mine.jpg" not in read_captions(tmp_path) and len(read_captions(tmp_path)) == 2


def test_sample_data_into_an_empty_folder_needs_no_force(tmp_path):
    (tmp_path / IMAGES_DIR).mkdir()
    assert main(["sample-data", str(tmp_path), "--images", "2"]) == 0
    assert len(read_captions(tmp_path)) == 2


def test_sample_data_into_a_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "data").write_text("a file", encoding="utf-8")
    assert main(["sample-data", str(tmp_path / "data"), "--images", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'data'} is a file, not a folder to draw sample data into"]


def test_forcing_sample_data_next_to_a_token_file_warns_that_it_is_read_first(tmp_path, caplog):
    (tmp_path / "Flickr8k.token.txt").write_text("mine.jpg#0\tMy own caption .\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="captioning.data.sample"):
        draw_sample_dataset(tmp_path, images=2, force=True)
    assert "also holds Flickr8k.token.txt, which data.format auto reads before captions.txt" in (
        caplog.text)
    assert (tmp_path / "Flickr8k.token.txt").read_text("utf-8") == "mine.jpg#0\tMy own caption .\n"
