"""Image features: extracted once per (encoder, weights, input size, cut, image list), cached
as .npy.

The cache is shared by every run and every sweep trial. A file lock serialises extraction, so
when two processes ask at once one extracts and the other waits and then reads the result;
an entry's files are written whole or not at all (captioning/atomic.py), so a half-written
file is never read, and a write that fails (disk full) raises WriteError naming the file,
leaving the cache as it was. Unreadable images are skipped and reported (features/extract.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from captioning.atomic import temp_name, write_whole
from captioning.config.encoder import EncoderConfig
from captioning.errors import WriteError
from captioning.features import hub
from captioning.features.child import extract_on_tensorflow
from captioning.features.encoders import RANDOM_WEIGHTS_SEED, input_size

log = logging.getLogger(__name__)

CACHE_FORMAT = "captioning.features/1"


@dataclass
class FeatureSet:
    """Features of `names[i]` in row i of `array`; `skipped` maps image name -> reason.

    `array` holds each image's pooled vector: the mean over its feature map's positions
    (global average pooling). With the map asked for (a grid decoder), `grid` holds it too,
    memory-mapped from the cache (never read whole), row i for names[i], and `grid_sq` each
    image's per-channel mean of squares, from which the training split's variance comes.
    """

    names: list[str]
    array: np.ndarray  # (images, channels)
    skipped: dict[str, str]
    path: Path
    extracted: bool  # True when this call ran the encoder, False when read from the cache
    grid: np.ndarray | None = None  # (images, positions, channels), memory-mapped
    grid_sq: np.ndarray | None = None  # (images, channels)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {name: row for row, name in enumerate(self.names)}

    def rows(self, names: Sequence[str]) -> np.ndarray:
        return self.array[[self.index[name] for name in names]]

    def grid_rows(self, names: Sequence[str]) -> np.ndarray:
        """The feature maps of `names` as float32 (len(names), positions, channels): only
        those rows are read from the memory-mapped cache file."""
        assert self.grid is not None, "features were loaded without their feature maps"
        rows = np.array([self.index[name] for name in names])
        order = np.argsort(rows)  # read the file front to back, then put rows back in order
        gathered = np.empty((len(rows), *self.grid.shape[1:]), "float32")
        gathered[order] = self.grid[rows[order]]
        return gathered

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    @property
    def positions(self) -> int | None:
        return None if self.grid is None else int(self.grid.shape[1])


def image_inputs(features: FeatureSet, names: Sequence[str], grid: bool) -> np.ndarray:
    """What a decoder reads of `names`: pooled vectors, or float32 feature maps (grid)."""
    return features.grid_rows(names) if grid else features.rows(names).astype("float32")


def _file_identity(path: str | Path) -> dict[str, object]:
    """An encoder file by its content: a registered model's bundled weights are downloaded to a
    new folder (with a new time) every time it is loaded, and must still find their features."""
    digest = hashlib.sha256()
    with Path(path).expanduser().open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return {"sha256": digest.hexdigest()}


def _weights_identity(encoder: EncoderConfig) -> object:
    if hub.is_hub(encoder.name) and encoder.model is None:
        return {"hub": hub.identity(encoder.name), "random": encoder.weights == "none"}
    if encoder.weights_file is not None:
        return _file_identity(encoder.weights_file)
    return "imagenet" if encoder.weights == "imagenet" else f"none:{RANDOM_WEIGHTS_SEED}"


def cache_key(encoder: EncoderConfig, image_dir: Path, names: Sequence[str]) -> str:
    """A digest of everything the features depend on, the image files' sizes and times too."""
    images = []
    for name in sorted(names):
        try:
            stat = (image_dir / name).stat()
            images.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            images.append((name, -1, -1))
    spec = {
        "format": CACHE_FORMAT,
        "encoder": hub.label(encoder.name),
        "weights": _weights_identity(encoder),
        "alpha": encoder.alpha,
        "model": _file_identity(encoder.model) if encoder.model else None,
        "preprocess": encoder.preprocess,
        "image_size": input_size(encoder),
        "grid_dtype": encoder.grid_dtype,
        "dtype": encoder.cache_dtype,
        "images": images,
    }
    # Where the cached map is taken, when not at the encoder's end (frozen trials of the
    # whole encoder keep the keys they always had).
    if encoder.grid_layer is not None:
        spec["grid_layer"] = encoder.grid_layer
    if encoder.fine_tune is not None:
        spec["cut"] = encoder.fine_tune.from_layer
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _npy_bytes(array: np.ndarray) -> memoryview:
    # Through memory: np.save into a file reports a full disk as "n requested and m written",
    # with no errno to say why.
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getbuffer()


def load_or_extract(encoder_config: EncoderConfig, image_dir: Path, names: Sequence[str],
                    progress: bool = True, grid: bool = False) -> FeatureSet:
    """Features for `names` from the cache, extracting them first if no process has yet.

    With `grid`, the feature maps too (memory-mapped): an entry cached without them is
    extracted again, with them, and then serves both.
    """
    cache_dir = encoder_config.resolved_cache_dir() / "features"
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(encoder_config, image_dir, names)
    array_path = cache_dir / f"{hub.label(encoder_config.name)}-{key}.npy"
    index_path = array_path.with_suffix(".json")
    grid_path = array_path.with_suffix(".grid.npy")
    squares_path = array_path.with_suffix(".gridsq.npy")
    lock = FileLock(str(array_path) + ".lock")
    with lock:
        if array_path.exists() and index_path.exists():
            index = json.loads(index_path.read_text(encoding="utf-8"))
            has_grid = index.get("grid", False) and grid_path.exists()
            if has_grid or not grid:
                array = np.load(array_path, allow_pickle=False)
                maps = squares = None
                if grid:
                    maps = _grid_of(np.load(grid_path, mmap_mode="r", allow_pickle=False),
                                    index["grid_rows"])
                    squares = np.load(squares_path, allow_pickle=False)
                return FeatureSet(index["names"], array, index["skipped"], array_path, False,
                                  maps, squares)
            log.info("the cached %s features have no feature maps: extracting them again, "
                     "with the maps", encoder_config.name)
        log.info("extracting %s features%s of %d images into %s", encoder_config.name,
                 " and feature maps" if grid else "", len(names), array_path)
        # Temp files of this entry left by a writer that was killed: nobody else writes here.
        for target in (index_path, array_path, grid_path, squares_path):
            for stale in cache_dir.glob(f".{target.name}.*"):
                stale.unlink(missing_ok=True)
        staged_grid = temp_name(grid_path) if grid else None
        try:
            array, squares, kept, skipped = extract_on_tensorflow(
                encoder_config, image_dir, names, progress, staged_grid)
        except OSError as error:
            if staged_grid is not None:
                staged_grid.unlink(missing_ok=True)
            raise WriteError(f"could not write feature cache file {grid_path}: "
                             f"{error.strerror or error}; {_KEPT}") from error
        position = {name: row for row, name in enumerate(names)}
        index = {"format": CACHE_FORMAT, "encoder": encoder_config.name,
                 "weights": encoder_config.weights, "names": kept, "skipped": skipped,
                 "grid": grid, "grid_rows": [position[n] for n in kept] if grid else None}
        if staged_grid is not None and not staged_grid.exists():  # not one readable image
            np.save(staged_grid, np.zeros((len(names), 0, 0), encoder_config.grid_dtype))
        files: dict[Path, Any] = {index_path: lambda path: path.write_text(json.dumps(index))}
        if grid:
            # The map file is written already, under the temp name write_whole renames.
            files[grid_path] = lambda path: None
            files[squares_path] = lambda path: path.write_bytes(_npy_bytes(squares))
        # The .npy of the pooled features goes last: its appearing marks the entry complete.
        files[array_path] = lambda path: path.write_bytes(_npy_bytes(array))
        write_whole(files, "feature cache file", _KEPT)
        maps = _grid_of(np.load(grid_path, mmap_mode="r"), index["grid_rows"]) if grid else None
        return FeatureSet(kept, array, skipped, array_path, True, maps, squares)


_KEPT = ("the cache is as it was (free space there, or point encoder.cache_dir or "
         "CAPTIONING_CACHE_DIR elsewhere)")


def _grid_of(maps: np.ndarray, rows: list[int]) -> np.ndarray:
    """The memory-mapped maps of the kept images, in their order (a view when none was
    skipped, as is usual; else only the index is copied, not the maps)."""
    if rows == list(range(len(maps))):
        return maps
    return _RowView(maps, np.asarray(rows))


class _RowView:
    """Rows `rows` of a memory-mapped array, read only when indexed."""

    def __init__(self, maps: np.ndarray, rows: np.ndarray):
        self.maps, self.row_map = maps, rows
        self.shape = (len(rows), *maps.shape[1:])
        self.dtype = maps.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.maps[self.row_map[index]]

    def __len__(self) -> int:
        return len(self.row_map)


