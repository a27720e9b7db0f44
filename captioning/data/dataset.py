"""A captioned image dataset: its captions cleaned, its images split into train/val/test.

`load_dataset` reads any of the three layouts (data/layouts.py), drops captions of missing
image files and empty captions, and splits by the official lists when there are any, else by
a seeded shuffle. Image files are only checked for existence here (an entry that cannot even be
looked at, such as a symbolic link loop, is skipped); unreadable ones are found by the feature
extractor and removed with :meth:`Dataset.without`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from captioning.data.layouts import (
    FORMATS,
    IMAGE_DIRS,
    SPLIT_LISTS,
    SPLITS,
    detect,
    files_in,
    find_image_dir,
    read_kaggle,
    read_karpathy,
    read_split_lists,
    read_token_file,
)
from captioning.data.vocabulary import END, START, clean_caption
from captioning.errors import DatasetError

logger = logging.getLogger(__name__)
# Flickr8k's official split sizes, used as proportions for the seeded split.
_FLICKR8K_TRAIN, _FLICKR8K_VAL, _FLICKR8K_TOTAL = 6000, 1000, 8091

@dataclass(frozen=True)
class Skipped:
    """An image left out of the dataset, and why.

    ``image`` is the file name as written in the captions file (possibly a bogus id), ``reason``
    a short phrase such as ``"image file missing"``, ``captions`` how many captions were dropped
    with it (0 for a name that only appears in a split list).
    """

    image: str
    reason: str
    captions: int


@dataclass(frozen=True)
class Dataset:
    """Cleaned captions of the images that exist on disk, with a train/val/test split.

    ``captions`` maps image file name -> cleaned captions (``startseq ... endseq``);
    ``splits`` maps ``"train"``, ``"val"``, ``"test"`` -> sorted image names, disjoint, whose
    union is exactly the keys of ``captions``. ``skipped`` records everything left out.
    """

    root: Path
    image_dir: Path
    layout: str
    captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    skipped: tuple[Skipped, ...] = ()

    def images(self) -> list[str]:
        """All image names, sorted."""
        return sorted(self.captions)

    def image_path(self, name: str) -> Path:
        """The path of image ``name`` (a key of ``captions``)."""
        return self.image_dir / name

    def without(self, unreadable: Mapping[str, str]) -> Dataset:
        """Return a copy without the given images, each recorded as a :class:`Skipped` row.

        ``unreadable`` maps image name -> reason, stored verbatim (e.g.
        ``{"x.jpg": "unreadable image: cannot identify image file"}``). Names that are not in
        the dataset (already removed, or never there) are ignored.
        """
        dropped = [name for name in unreadable if name in self.captions]
        if not dropped:
            return self
        gone = set(dropped)
        rows = tuple(Skipped(name, unreadable[name], len(self.captions[name])) for name in dropped)
        _log_skipped(self.root, rows)
        return replace(
            self,
            captions={k: list(v) for k, v in self.captions.items() if k not in gone},
            splits={s: [n for n in names if n not in gone] for s, names in self.splits.items()},
            skipped=self.skipped + rows,
        )

    def digest(self) -> str:
        """A short hash of the captions and splits: the same data gives the same digest."""
        content = json.dumps({"captions": self.captions, "splits": self.splits},
                             sort_keys=True).encode()
        return hashlib.sha256(content).hexdigest()[:10]

    def profile(self) -> dict:
        """Images and captions per split, and the layout: what an MLflow dataset input shows."""
        return {"layout": self.layout,
                **{f"{split}_images": len(self.splits.get(split, [])) for split in SPLITS},
                **{f"{split}_captions": sum(len(self.captions[n])
                                           for n in self.splits.get(split, []))
                   for split in SPLITS}}

    def skipped_images(self) -> list[Skipped]:
        """The rows of images left out entirely (not those of which only a caption was)."""
        return [row for row in self.skipped if row.image not in self.captions]

    def summary(self) -> dict:
        """Sizes for logging: a flat dict of ints/floats/str.

        Keys: ``layout``, ``images``, ``captions``, ``captions_per_image`` (mean),
        ``longest_caption`` (words, without ``startseq``/``endseq``), ``train``, ``val``,
        ``test`` (images per split), ``skipped`` (Skipped rows), ``skipped_captions``.
        """
        lengths = [_word_count(c) for caps in self.captions.values() for c in caps]
        n_images = len(self.captions)
        return {
            "layout": self.layout,
            "images": n_images,
            "captions": len(lengths),
            "captions_per_image": len(lengths) / n_images if n_images else 0.0,
            "longest_caption": max(lengths, default=0),
            **{split: len(self.splits.get(split, [])) for split in SPLITS},
            "skipped": len(self.skipped),
            "skipped_captions": sum(s.captions for s in self.skipped),
        }


def load_dataset(
    root: Path | str,
    format: str = "auto",
    *,
    split_seed: int = 0,
    keep_one_letter_words: bool = False,
) -> Dataset:
    """Read the captions under ``root`` and split the images into train/val/test.

    ``format`` is ``"auto"`` (detect from the files present, in the order of FORMATS: a
    Karpathy JSON, then a token file, then a Kaggle CSV) or one of ``"kaggle"``, ``"token"``,
    ``"karpathy"``. Official splits (split lists or the JSON's ``split``) are used when
    present; otherwise images (never captions) are shuffled with
    ``numpy.random.default_rng(split_seed)`` and split in Flickr8k's 6000/1000/1091
    proportions. Captions are cleaned with :func:`captioning.data.vocabulary.clean_caption`.
    Captions of missing image files (or of entries that cannot be looked at, such as a
    symbolic link loop), empty captions and images outside every split list are dropped,
    recorded in ``Dataset.skipped`` and logged as one warning.

    Raises :class:`DatasetError` when nothing usable is found, a split list names no usable
    image, or a file is malformed.
    """
    root = Path(root)
    if format != "auto" and format not in FORMATS:
        raise DatasetError(
            f"data.format: unknown format {format!r}; expected 'auto' or one of {FORMATS}"
        )
    if not root.is_dir():
        raise DatasetError(f"data.root: {root} is not a directory")

    layout, source = detect(root, format)
    if layout == "kaggle":
        image_dir = find_image_dir(
            root, ("Images",) + tuple(d for d in IMAGE_DIRS if d != "Images")
        )
        raw, listed = read_kaggle(source), None
    elif layout == "token":
        image_dir = find_image_dir(root, IMAGE_DIRS)
        raw, listed = read_token_file(source), read_split_lists(source.parent)
    else:
        image_dir = find_image_dir(root, IMAGE_DIRS)
        raw, listed = read_karpathy(source)

    on_disk, unreadable = files_in(image_dir)
    captions: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    for name, texts in raw.items():
        if name in unreadable:
            skipped.append(Skipped(name, unreadable[name], len(texts)))
            continue
        if name not in on_disk:
            skipped.append(Skipped(name, "image file missing", len(texts)))
            continue
        cleaned = [clean_caption(t, keep_one_letter_words=keep_one_letter_words) for t in texts]
        kept = [c for c in cleaned if c]
        if len(kept) < len(cleaned):
            skipped.append(Skipped(name, "empty caption", len(cleaned) - len(kept)))
        if kept:
            captions[name] = kept

    if listed is None:
        splits = _seeded_split(sorted(captions), split_seed)
    else:
        splits, split_skipped = _apply_split_lists(listed, captions, raw)
        skipped.extend(split_skipped)
        for row in split_skipped:
            if row.reason == "in no split list":
                del captions[row.image]

    if not captions:
        reasons = Counter(s.reason for s in skipped)
        raise DatasetError(
            f"{source}: no usable captions: none of the {len(raw)} images it names is a file in "
            f"{image_dir} with a non-empty caption (skipped: {dict(reasons)})"
        )
    if layout == "token" and listed is not None:
        _check_split_lists(source, listed, splits, raw)
    skipped_rows = tuple(skipped)
    _log_skipped(root, skipped_rows)
    return Dataset(
        root=root,
        image_dir=image_dir,
        layout=layout,
        captions=captions,
        splits=splits,
        skipped=skipped_rows,
    )


# --- splits ------------------------------------------------------------------------------------


def _apply_split_lists(
    listed: dict[str, list[str]],
    captions: dict[str, list[str]],
    raw: dict[str, list[str]],
) -> tuple[dict[str, list[str]], list[Skipped]]:
    """Split ``captions`` by the lists; report listed names without captions and vice versa."""
    splits: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    placed: set[str] = set()
    for split in SPLITS:
        names = []
        for name in dict.fromkeys(listed.get(split, [])):
            if name in captions:
                names.append(name)
                placed.add(name)
            elif name not in raw:
                skipped.append(Skipped(name, f"in {split} list but has no captions", 0))
            # Otherwise it has captions but was already skipped (missing file / empty captions).
        splits[split] = sorted(names)
    for name in captions:
        if name not in placed:
            skipped.append(Skipped(name, "in no split list", len(captions[name])))
    return splits, skipped


def _check_split_lists(
    source: Path,
    listed: dict[str, list[str]],
    splits: dict[str, list[str]],
    raw: dict[str, list[str]],
) -> None:
    """Raise DatasetError for a split list that names images of which not one can be used.

    Such a list is the wrong file (another dataset's list, or the images are elsewhere); some
    unusable names in a list are only skipped and reported.
    """
    for split, names in listed.items():
        if not names or splits[split]:
            continue
        unnamed = sum(1 for name in names if name not in raw)
        raise DatasetError(
            f"{source.parent / SPLIT_LISTS[split]}: none of its {len(names)} images can be used "
            f"({unnamed} not in {source.name}, {len(names) - unnamed} without an image file or "
            f"a non-empty caption), e.g. {names[0]}; fix the list, or remove the split lists "
            "to split the images by data.split_seed"
        )


def _seeded_split(names: list[str], seed: int) -> dict[str, list[str]]:
    """Shuffle sorted image names with ``seed`` and cut them in Flickr8k's proportions."""
    n = len(names)
    n_train = math.floor(n * _FLICKR8K_TRAIN / _FLICKR8K_TOTAL + 0.5)
    n_val = math.floor(n * _FLICKR8K_VAL / _FLICKR8K_TOTAL + 0.5)
    if n >= 3:
        n_val = max(1, n_val)
        n_train = min(n_train, n - n_val - 1)
    n_val = min(n_val, n - n_train)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [names[i] for i in order]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


# --- helpers -----------------------------------------------------------------------------------


def _word_count(caption: str) -> int:
    return sum(1 for word in caption.split() if word not in (START, END))


def _log_skipped(root: Path, rows: tuple[Skipped, ...]) -> None:
    if not rows:
        return
    reasons = Counter(row.reason for row in rows)
    by_reason = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    names = [row.image for row in rows[:10]]
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    logger.warning(
        "%s: skipped %d image(s) (%d captions): %s; e.g. %s%s",
        root,
        len(rows),
        sum(row.captions for row in rows),
        by_reason,
        ", ".join(names),
        more,
    )
