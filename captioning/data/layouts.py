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
import json
import os
from collections.abc import Iterable
from pathlib import Path

from captioning.errors import DatasetError

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


def files_in(folder: Path) -> set[str]:
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


def read_kaggle(path: Path) -> dict[str, list[str]]:
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


def read_token_file(path: Path) -> dict[str, list[str]]:
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


def read_karpathy(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
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


def read_split_lists(folder: Path) -> dict[str, list[str]] | None:
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
