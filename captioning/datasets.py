"""Reading Flickr8k / Flickr30k captions in the three common on-disk layouts.

* ``kaggle``: ``captions.txt`` (CSV with header ``image,caption``) and images in ``Images/``.
* ``token``: the original ``Flickr8k.token.txt`` (or Flickr30k's ``results_20130124.token``),
  optionally with the official ``Flickr_8k.{train,dev,test}Images.txt`` split lists.
* ``karpathy``: Karpathy's ``dataset_flickr8k.json`` / ``dataset_flickr30k.json`` with splits.

Image files are only checked for existence here; unreadable ones are found by the feature
extractor and removed with :meth:`Dataset.without`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from captioning.text import END, START, clean_caption

logger = logging.getLogger("captioning.datasets")

# Auto-detection order: a Karpathy JSON carries the official split, so it wins when present.
FORMATS = ("karpathy", "token", "kaggle")
SPLITS = ("train", "val", "test")

IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "flickr30k-images")
TEXT_SUBDIR = "Flickr8k_text"
TOKEN_FILES = ("Flickr8k.token.txt", "results_20130124.token")
KARPATHY_FILES = ("dataset_flickr8k.json", "dataset_flickr30k.json")
SPLIT_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
# Flickr8k's official split sizes, used as proportions for the seeded split.
_FLICKR8K_TRAIN, _FLICKR8K_VAL, _FLICKR8K_TOTAL = 6000, 1000, 8091

_TOKEN_LINE = "expected '<image>#<n><TAB><caption>'"


class DatasetError(ValueError):
    """The dataset on disk is missing or malformed; the message names the file (and line)."""


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

    ``format`` is ``"auto"`` (detect from the files present, trying kaggle, token, karpathy in
    that order) or one of ``"kaggle"``, ``"token"``, ``"karpathy"``. Official splits (split
    lists or the JSON's ``split``) are used when present; otherwise images (never captions) are
    shuffled with ``numpy.random.default_rng(split_seed)`` and split in Flickr8k's
    6000/1000/1091 proportions. Captions are cleaned with :func:`captioning.text.clean_caption`.
    Captions of missing image files, empty captions and images outside every split list are
    dropped, recorded in ``Dataset.skipped`` and logged as one warning.

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

    layout, source = _detect(root, format)
    if layout == "kaggle":
        image_dir = _find_image_dir(
            root, ("Images",) + tuple(d for d in IMAGE_DIRS if d != "Images")
        )
        raw, listed = _read_kaggle(source), None
    elif layout == "token":
        image_dir = _find_image_dir(root, IMAGE_DIRS)
        raw, listed = _read_token_file(source), _read_split_lists(source.parent)
    else:
        image_dir = _find_image_dir(root, IMAGE_DIRS)
        raw, listed = _read_karpathy(source)

    on_disk = _files_in(image_dir)
    captions: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    for name, texts in raw.items():
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


# --- layout detection -------------------------------------------------------------------------


def _detect(root: Path, format: str) -> tuple[str, Path]:
    """Return (layout, captions file) for ``root``."""
    finders = {"kaggle": _kaggle_file, "token": _token_file, "karpathy": _karpathy_file}
    for layout in FORMATS if format == "auto" else (format,):
        found = finders[layout](root)
        if found is not None:
            return layout, found
    wanted = {
        "auto": "captions.txt, Flickr8k.token.txt or dataset_flickr8k.json",
        "kaggle": "captions.txt",
        "token": f"Flickr8k.token.txt (or any *.token.txt / *.token, also in {TEXT_SUBDIR}/)",
        "karpathy": "dataset_flickr8k.json (or any dataset_*.json)",
    }[format]
    raise DatasetError(f"data.root: {root} has no {wanted}")


def _kaggle_file(root: Path) -> Path | None:
    path = root / "captions.txt"
    return path if path.is_file() else None


def _token_file(root: Path) -> Path | None:
    for folder in (root, root / TEXT_SUBDIR):
        if not folder.is_dir():
            continue
        for name in TOKEN_FILES:
            if (folder / name).is_file():
                return folder / name
        # Flickr8k_text also ships Flickr8k.lemma.token.txt (lemmatised captions): last resort.
        matches = [p for p in [*folder.glob("*.token.txt"), *folder.glob("*.token")] if p.is_file()]
        matches.sort(key=lambda p: ("lemma" in p.name.lower(), p.name))
        if matches:
            return matches[0]
    return None


def _karpathy_file(root: Path) -> Path | None:
    for name in KARPATHY_FILES:
        if (root / name).is_file():
            return root / name
    matches = sorted(p for p in root.glob("dataset_*.json") if p.is_file())
    return matches[0] if matches else None


def _find_image_dir(root: Path, candidates: Iterable[str]) -> Path:
    candidates = tuple(candidates)
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(str(root / name) for name in candidates)
    raise DatasetError(f"data.root: {root} has no image folder; tried {tried}")


def _files_in(folder: Path) -> set[str]:
    # One directory listing instead of a stat per caption; names with "/" or ".." never match.
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries if entry.is_file()}


# --- caption files -----------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Decode ``path`` as strict UTF-8 (BOM allowed); bad bytes -> DatasetError with line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{path} line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "re-save the file as UTF-8"
        ) from exc


def _read_kaggle(path: Path) -> dict[str, list[str]]:
    """Read the Kaggle ``captions.txt`` CSV into image name -> raw captions."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"{path}: empty file; expected a CSV header 'image,caption'") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: not a CSV file ({exc})") from exc
    columns = [h.strip().lower() for h in header]
    if "image" not in columns or "caption" not in columns:
        raise DatasetError(f"{path}: expected CSV columns 'image' and 'caption', found {header!r}")
    image_col, caption_col = columns.index("image"), columns.index("caption")
    raw: dict[str, list[str]] = {}
    try:
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if len(row) <= max(image_col, caption_col):
                raise DatasetError(
                    f"{path} line {reader.line_num}: expected {len(header)} fields "
                    f"({','.join(header)}), found {len(row)}"
                )
            caption = row[caption_col]
            if caption_col == len(header) - 1 and len(row) > len(header):
                # An unquoted comma inside the last column: the rest still belongs to the caption.
                caption = ",".join(row[caption_col:])
            raw.setdefault(row[image_col].strip(), []).append(caption)
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from exc
    return raw


def _read_token_file(path: Path) -> dict[str, list[str]]:
    """Read ``<image>#<n><TAB><caption>`` lines into image name -> raw captions."""
    raw: dict[str, list[str]] = {}
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, index = key.strip().rpartition("#")
        if not tab or not hash_sign or not name or not index.isdigit():
            raise DatasetError(f"{path} line {number}: {_TOKEN_LINE}, found {line[:80]!r}")
        raw.setdefault(name, []).append(caption)
    return raw


def _read_karpathy(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """Read Karpathy's JSON into (image name -> raw captions, split -> names or None)."""
    text = _read_text(path)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        raise DatasetError(
            f'{path}: expected a JSON object with an "images" list (Karpathy format)'
        )
    raw: dict[str, list[str]] = {}
    split_of: dict[str, str] = {}
    for i, entry in enumerate(images):
        where = f'{path}: "images"[{i}]'
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DatasetError(f'{where}: expected an object with a "filename" string')
        name = entry["filename"]
        sentences = entry.get("sentences", [])
        if not isinstance(sentences, list):
            raise DatasetError(f'{where} ({name}): "sentences" must be a list')
        texts = raw.setdefault(name, [])
        for sentence in sentences:
            if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str):
                texts.append(sentence["raw"])
            elif isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                texts.append(" ".join(str(t) for t in sentence["tokens"]))
            else:
                raise DatasetError(f'{where} ({name}): a sentence has neither "raw" nor "tokens"')
        if "split" in entry:
            split = {"restval": "train", "dev": "val"}.get(entry["split"], entry["split"])
            if split not in SPLITS:
                raise DatasetError(
                    f"{where} ({name}): unknown split {entry['split']!r}; "
                    "expected train, restval, val or test"
                )
            if split_of.setdefault(name, split) != split:
                raise DatasetError(
                    f"{where}: {name} is listed in both {split_of[name]} and {split}"
                )
    if not split_of:
        return raw, None
    listed = {split: [n for n, s in split_of.items() if s == split] for split in SPLITS}
    return raw, listed


# --- splits ------------------------------------------------------------------------------------


def _read_split_lists(folder: Path) -> dict[str, list[str]] | None:
    """Read the official split lists next to the token file, or None when there are none."""
    listed: dict[str, list[str]] = {}
    owner: dict[str, Path] = {}
    for split, file_name in SPLIT_LISTS.items():
        path = folder / file_name
        if not path.is_file():
            continue
        names = []
        for line in _read_text(path).split("\n"):
            name = line.strip()
            if not name:
                continue
            if name in owner and owner[name] != path:
                raise DatasetError(f"{path}: {name} is also listed in {owner[name]}")
            owner[name] = path
            names.append(name)
        listed[split] = names
    if not listed:
        return None
    return {split: listed.get(split, []) for split in SPLITS}


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
