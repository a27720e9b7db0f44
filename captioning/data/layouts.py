"""The three on-disk layouts of Flickr8k / Flickr30k captions: finding them, and reading them.

* ``kaggle``: ``captions.txt`` (CSV with header ``image,caption``) and images in ``Images/``.
* ``token``: the original ``Flickr8k.token.txt`` (or Flickr30k's ``results_20130124.token``),
  optionally with the official ``Flickr_8k.{train,dev,test}Images.txt`` split lists.
* ``karpathy``: Karpathy's ``dataset_flickr8k.json`` / ``dataset_flickr30k.json`` with splits.

Each reader returns image name -> raw captions (and the splits a file names); a malformed
file is a DatasetError naming the file and line. data/dataset.py cleans and splits them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from captioning.errors import DatasetError
from captioning.jsonfile import read_json, read_text

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

_TOKEN_LINE = "expected '<image>#<n><TAB><caption>'"


# --- layout detection -------------------------------------------------------------------------


def detect(root: Path, format: str) -> tuple[str, Path]:
    """Return (layout, captions file) for ``root``."""
    finders = {"kaggle": kaggle_file, "token": token_file, "karpathy": karpathy_file}
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


def kaggle_file(root: Path) -> Path | None:
    path = root / "captions.txt"
    return path if path.is_file() else None


def token_file(root: Path) -> Path | None:
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


def karpathy_file(root: Path) -> Path | None:
    for name in KARPATHY_FILES:
        if (root / name).is_file():
            return root / name
    matches = sorted(p for p in root.glob("dataset_*.json") if p.is_file())
    return matches[0] if matches else None


def find_image_dir(root: Path, candidates: Iterable[str]) -> Path:
    candidates = tuple(candidates)
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(str(root / name) for name in candidates)
    raise DatasetError(f"data.root: {root} has no image folder; tried {tried}")


def files_in(folder: Path) -> tuple[set[str], dict[str, str]]:
    """The names of the files in ``folder``, and name -> why for the entries that cannot be
    looked at (a symbolic link loop, no permission); DatasetError if it cannot be listed."""
    # One directory listing instead of a stat per caption; names with "/" or ".." never match.
    files: set[str] = set()
    unreadable: dict[str, str] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        files.add(entry.name)
                except OSError as exc:
                    unreadable[entry.name] = f"image file unreadable ({exc.strerror or exc})"
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list its files ({exc.strerror or exc})") from exc
    return files, unreadable


# --- caption files -----------------------------------------------------------------------------


def read_kaggle(path: Path) -> dict[str, list[str]]:
    """Read the Kaggle ``captions.txt`` CSV into image name -> raw captions."""
    reader = csv.reader(io.StringIO(read_text(path, DatasetError), newline=""))
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


def read_token_file(path: Path) -> dict[str, list[str]]:
    """Read ``<image>#<n><TAB><caption>`` lines into image name -> raw captions."""
    raw: dict[str, list[str]] = {}
    for number, line in enumerate(read_text(path, DatasetError).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, index = key.strip().rpartition("#")
        if not tab or not hash_sign or not name or not index.isdigit():
            raise DatasetError(f"{path} line {number}: {_TOKEN_LINE}, found {line[:80]!r}")
        raw.setdefault(name, []).append(caption)
    return raw


def read_karpathy(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """Read Karpathy's JSON into (image name -> raw captions, split -> names or None).

    Every value of the wrong JSON type is a DatasetError naming the file, the image's index
    (and file name, once known), the sentence's index and the key.
    """
    payload = read_json(path, DatasetError)
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        found = (_json_type(payload) if not isinstance(payload, dict) else
                 f'"images" as {_json_type(images)}' if "images" in payload else 'no "images"')
        raise DatasetError(f'{path}: expected a JSON object with an "images" array (Karpathy '
                           f"format), found {found}")
    raw: dict[str, list[str]] = {}
    split_of: dict[str, str] = {}
    for i, entry in enumerate(images):
        where = f'{path}: "images"[{i}]'
        if not isinstance(entry, dict):
            raise DatasetError(f'{where}: expected an object with a "filename" string, '
                               f"found {_json_type(entry)}")
        name = _field(entry, "filename", str, where)
        where = f"{where} ({name})"
        sentences = _field(entry, "sentences", list, where, default=[])
        texts = raw.setdefault(name, [])
        for j, sentence in enumerate(sentences):
            texts.append(_sentence_text(sentence, f'{where} "sentences"[{j}]'))
        if "split" in entry:
            given = _field(entry, "split", str, where)
            split = {"restval": "train", "dev": "val"}.get(given, given)
            if split not in SPLITS:
                raise DatasetError(f"{where}: unknown split {given!r}; "
                                   "expected train, restval, val or test")
            if split_of.setdefault(name, split) != split:
                raise DatasetError(f"{where}: listed in both {split_of[name]} and {split}")
    if not split_of:
        return raw, None
    listed = {split: [n for n, s in split_of.items() if s == split] for split in SPLITS}
    return raw, listed


def _sentence_text(sentence: object, where: str) -> str:
    """A Karpathy sentence's caption: its "raw" text, else its "tokens" joined by spaces."""
    if not isinstance(sentence, dict):
        raise DatasetError(f"{where}: expected an object, found {_json_type(sentence)}")
    if "raw" not in sentence and "tokens" not in sentence:
        raise DatasetError(f'{where}: has neither "raw" nor "tokens"')
    raw = _field(sentence, "raw", str, where, default=None)
    tokens = _field(sentence, "tokens", list, where, default=None)
    for k, token in enumerate(tokens or ()):
        if not isinstance(token, str):
            raise DatasetError(f'{where}: "tokens"[{k}] must be a string, '
                               f"found {_json_type(token)}")
    return raw if raw is not None else " ".join(tokens)


_MISSING = object()


def _field(entry: dict, key: str, kind: type, where: str, default: object = _MISSING) -> Any:
    """``entry[key]``, which must be of JSON type ``kind`` (``str`` or ``list``); ``default``
    when there is no such key (a DatasetError without a default)."""
    if key not in entry:
        if default is _MISSING:
            raise DatasetError(f'{where}: has no "{key}"')
        return default
    value = entry[key]
    if not isinstance(value, kind):
        wanted = {str: "a string", list: "an array"}[kind]
        raise DatasetError(f'{where}: "{key}" must be {wanted}, found {_json_type(value)}')
    return value


def _json_type(value: object) -> str:
    """What JSON calls the type of a parsed value: "an object", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def read_split_lists(folder: Path) -> dict[str, list[str]] | None:
    """Read the official split lists next to the token file, or None when there are none."""
    listed: dict[str, list[str]] = {}
    owner: dict[str, Path] = {}
    for split, file_name in SPLIT_LISTS.items():
        path = folder / file_name
        if not path.is_file():
            continue
        names = []
        for line in read_text(path, DatasetError).split("\n"):
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
