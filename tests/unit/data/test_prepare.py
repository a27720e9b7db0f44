"""prepare: from an experiment config to captions, features and vocabulary, or one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning.config.schema import parse_config
from captioning.errors import DatasetError
from captioning.training.prepare import prepare


def broken_dataset(root: Path, count: int) -> Path:
    """A Kaggle-layout dataset whose every image file is corrupt (text, empty, cut short)."""
    images = root / "Images"
    images.mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(count):
        name = f"{i}.jpg"
        (images / name).write_bytes([b"not a picture\n", b"", b"\xff\xd8\xff\xe0\x00"][i % 3])
        lines += [f"{name},A red circle on a dark background .", f"{name},A red circle ."]
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_an_image_folder_where_no_image_can_be_read_is_one_clear_error(tmp_path):
    root = broken_dataset(tmp_path / "data", count=6)
    config = parse_config(
        {
            "data": {"root": str(root)},
            "encoder": {
                "name": "inception_v3",
                "weights": "none",
                "image_size": 75,
                "cache_dir": str(tmp_path / "cache"),
            },
        }
    )
    for _ in range(2):  # extracting, then from the feature cache
        with pytest.raises(DatasetError) as caught:
            prepare(config, progress=False)
        message = str(caught.value)
        assert message.startswith(f"{root / 'Images'}: none of the 6 images could be read (e.g. ")
        assert "\n" not in message
