"""Image features: extracted once per (encoder, weights, input size, image list), cached as .npy.

The cache is shared by every run and every sweep trial. A file lock serialises extraction, so
when two processes ask at once one extracts and the other waits and then reads the result;
an entry's files are written whole or not at all (files.py), so a half-written file is never
read, and a write that fails (disk full) raises WriteError naming the file, leaving the cache
as it was. Unreadable images are skipped and reported, never a crash halfway through.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

from captioning.config import ConfigError, EncoderConfig
from captioning.encoders import RANDOM_WEIGHTS_SEED, build_encoder, input_size, preprocessing
from captioning.errors import WriteError
from captioning.files import temp_name, write_whole
from captioning.images import ImageError, ImageSource, load_image

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
    stat = Path(path).expanduser().stat()
    return {"file": str(Path(path).expanduser().resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def _weights_identity(weights: str) -> object:
    if weights in ("imagenet", "none"):
        return weights if weights == "imagenet" else f"none:{RANDOM_WEIGHTS_SEED}"
    return _file_identity(weights)


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
        "encoder": encoder.name,
        "weights": _weights_identity(encoder.weights),
        "alpha": encoder.alpha,
        "model": _file_identity(encoder.model) if encoder.model else None,
        "preprocess": encoder.preprocess,
        "image_size": input_size(encoder),
        "grid_dtype": encoder.grid_dtype,
        "dtype": encoder.cache_dtype,
        "images": images,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _npy_bytes(array: np.ndarray) -> memoryview:
    # Through memory: np.save into a file reports a full disk as "n requested and m written",
    # with no errno to say why.
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getbuffer()


def decoded_batches(sources: Sequence[ImageSource], size: int, batch_size: int, workers: int,
                    labels: Sequence[str] | None = None
                    ) -> Iterator[list[tuple[int, np.ndarray | ImageError]]]:
    """Decode and resize images (files or encoded bytes) on a thread pool, a few batches ahead
    of the consumer.

    Yields, per batch, (position in `sources`, uint8 array or the ImageError for that image).
    """

    def load(position: int) -> np.ndarray | ImageError:
        try:
            return load_image(sources[position], size, labels[position] if labels else None)
        except ImageError as error:
            return error

    starts = range(0, len(sources), batch_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        queue = iter(starts)

        def submit_next() -> None:
            start = next(queue, None)
            if start is not None:
                chunk = range(start, min(start + batch_size, len(sources)))
                pending.append((start, [pool.submit(load, position) for position in chunk]))

        for _ in range(3):  # batches decoded ahead while the encoder runs
            submit_next()
        while pending:
            start, futures = pending.popleft()
            submit_next()
            yield [(start + offset, future.result()) for offset, future in enumerate(futures)]


def encoded_batches(encoder: Any, encoder_config: EncoderConfig,
                    sources: Sequence[ImageSource], progress: bool = False,
                    labels: Sequence[str] | None = None
                    ) -> Iterator[tuple[list[int], np.ndarray, dict[int, ImageError]]]:
    """The encoder's output for every readable image of `sources` (files or encoded bytes),
    batch by batch, decoded ahead on a thread pool: (positions in `sources` of the rows,
    outputs (rows, h, w, channels) or (rows, channels), the error of each other position)."""
    size = input_size(encoder_config)
    preprocess = preprocessing(encoder_config)
    bar = tqdm(total=len(sources), desc=f"features {encoder_config.name}", unit="img",
               disable=not progress)
    for batch in decoded_batches(sources, size, encoder_config.batch_size,
                                 encoder_config.decode_workers, labels):
        good = [(position, array) for position, array in batch if isinstance(array, np.ndarray)]
        errors = {position: result for position, result in batch
                  if isinstance(result, ImageError)}
        outputs = np.zeros((0, *encoder.output_shape[1:]), "float32")
        if good:
            pixels = preprocess(np.stack([array for _, array in good]).astype("float32"))
            outputs = np.asarray(encoder.predict_on_batch(pixels), "float32")
        bar.update(len(batch))
        yield [position for position, _ in good], outputs, errors
    bar.close()


def pooled(outputs: np.ndarray) -> np.ndarray:
    """(rows, h, w, channels) feature maps -> their mean over positions; vectors unchanged."""
    return outputs.mean(axis=(1, 2)) if outputs.ndim == 4 else outputs


def encode_images(encoder: Any, encoder_config: EncoderConfig, sources: Sequence[ImageSource],
                  progress: bool = False, labels: Sequence[str] | None = None,
                  grid: bool = False) -> tuple[np.ndarray, list[int], dict[int, ImageError]]:
    """Features of every readable image in `sources`, in memory (for captioning a few).

    Returns (features (kept, channels), or with `grid` the maps (kept, positions, channels);
    positions in `sources` of the kept rows; the error of every other position).
    """
    rows: list[np.ndarray] = []
    kept: list[int] = []
    errors: dict[int, ImageError] = {}
    for positions, outputs, batch_errors in encoded_batches(encoder, encoder_config, sources,
                                                            progress, labels):
        if grid:
            if outputs.ndim != 4:
                raise ValueError(f"encoder {encoder_config.name} gives vectors, not a feature "
                                 "map: a grid decoder cannot read them")
            rows.append(outputs.reshape(len(outputs), -1, outputs.shape[-1]))
        else:
            rows.append(pooled(outputs).astype(encoder_config.cache_dtype))
        kept.extend(positions)
        errors.update(batch_errors)
    if not rows:  # no source at all
        shape = encoder.output_shape[1:]
        empty = (0, int(np.prod(shape[:-1])), shape[-1]) if grid else (0, shape[-1])
        return np.zeros(empty, encoder_config.cache_dtype), kept, errors
    return np.concatenate(rows), kept, errors


class _GridFile:
    """Writes feature maps into an .npy file batch by batch, with plain writes (a full disk
    is an OSError, never a crash in a memory map): rows for every source, zeros for images
    that could not be read."""

    def __init__(self, path: Path, rows: int, dtype: str):
        self.path, self.rows, self.dtype = path, rows, np.dtype(dtype)
        self.handle: Any = None
        self.written = 0

    def write(self, start: int, positions: list[int], outputs: np.ndarray, end: int) -> None:
        if outputs.ndim != 4:
            raise ValueError("a grid decoder needs a feature map; this encoder gives vectors")
        if self.handle is None:
            self.shape = outputs.shape[1:]
            self.handle = self.path.open("wb")
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                      "shape": (self.rows, int(np.prod(self.shape[:2])), self.shape[2])}
            np.lib.format.write_array_header_2_0(self.handle, header)
        zero = np.zeros(self.shape, self.dtype)
        by_position = dict(zip(positions, outputs.astype(self.dtype), strict=True))
        for position in range(start, end):
            self.handle.write(by_position.get(position, zero).tobytes())
        self.written = end

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def extract(encoder_config: EncoderConfig, image_dir: Path, names: Sequence[str],
            progress: bool = True, grid_path: Path | None = None
            ) -> tuple[np.ndarray, np.ndarray | None, list[str], dict[str, str]]:
    """Run the encoder over images: (pooled features of the kept images, their per-channel
    mean of squares if `grid_path`, names kept, skipped name -> reason). With `grid_path`,
    every image's feature map is written there as it comes (one row per name)."""
    encoder = build_encoder(encoder_config)
    paths = [image_dir / name for name in names]
    vectors, squares, kept, skipped = [], [], [], {}
    grid = _GridFile(grid_path, len(names), encoder_config.grid_dtype) if grid_path else None
    done = 0
    try:
        for positions, outputs, errors in encoded_batches(encoder, encoder_config, paths,
                                                          progress):
            end = max([done, *positions, *errors]) + 1 if positions or errors else done
            if grid is not None:
                grid.write(done, positions, outputs, end)
                squares.append((outputs.astype("float32") ** 2).mean(axis=(1, 2)))
            done = end
            vectors.append(pooled(outputs).astype(encoder_config.cache_dtype))
            kept.extend(positions)
            for position, error in errors.items():
                log.warning("skipping image %s", error)
                skipped[names[position]] = error.reason
    finally:
        if grid is not None:
            grid.close()
    dim = int(encoder.output_shape[-1])
    array = np.concatenate(vectors) if vectors else np.zeros((0, dim), encoder_config.cache_dtype)
    sq = np.concatenate(squares) if squares else None
    return array, sq, [names[position] for position in kept], skipped


# Below this many images a TensorFlow process is not worth its start (a few seconds).
TENSORFLOW_EXTRACTION_MIN_IMAGES = 300


def extract_on_tensorflow(encoder_config: EncoderConfig, image_dir: Path,
                          names: Sequence[str], progress: bool = True,
                          grid_path: Path | None = None
                          ) -> tuple[np.ndarray, np.ndarray | None, list[str], dict[str, str]]:
    """`extract`, run on TensorFlow: here if this process's Keras backend is TensorFlow (or
    there are few images), else in a child process on TensorFlow, whose oneDNN convolutions
    are 2 to 4 times as fast as XLA's on a CPU (captioning/backend.py)."""
    import keras

    if keras.backend.backend() == "tensorflow" or len(names) < TENSORFLOW_EXTRACTION_MIN_IMAGES:
        return extract(encoder_config, image_dir, names, progress, grid_path)
    with tempfile.TemporaryDirectory(prefix="captioning-extract-") as tmp:
        folder = Path(tmp)
        (folder / "request.json").write_text(json.dumps({
            "encoder": encoder_config.model_dump(mode="json"), "image_dir": str(image_dir),
            "names": list(names), "progress": progress,
            "grid_path": str(grid_path) if grid_path else None}), encoding="utf-8")
        log.info("extracting on TensorFlow, in a child process")
        child = subprocess.run([sys.executable, "-m", "captioning.features", str(folder)],
                               env={**os.environ, "KERAS_BACKEND": "tensorflow"}, check=False)
        if (folder / "error.json").is_file():
            error = json.loads((folder / "error.json").read_text(encoding="utf-8"))
            kinds = {"config": ConfigError, "write": OSError}
            raise kinds.get(error["kind"], RuntimeError)(error["message"])
        if child.returncode != 0:
            raise RuntimeError(f"feature extraction on TensorFlow failed (exit code "
                               f"{child.returncode}; its error is printed above)")
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        array = np.load(folder / "array.npy", allow_pickle=False)
        squares = np.load(folder / "squares.npy", allow_pickle=False) \
            if (folder / "squares.npy").is_file() else None
        return array, squares, result["kept"], result["skipped"]


def _extract_for_parent(folder: Path) -> int:
    """The child side of `extract_on_tensorflow`: request.json in, arrays and JSON out."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    grid_path = Path(request["grid_path"]) if request["grid_path"] else None
    try:
        array, squares, kept, skipped = extract(
            EncoderConfig.model_validate(request["encoder"]), Path(request["image_dir"]),
            request["names"], request["progress"], grid_path)
    except ConfigError as error:
        (folder / "error.json").write_text(json.dumps({"kind": "config",
                                                       "message": str(error)}))
        return 2
    except OSError as error:
        (folder / "error.json").write_text(json.dumps({"kind": "write", "message": str(error)}))
        return 2
    np.save(folder / "array.npy", array, allow_pickle=False)
    if squares is not None:
        np.save(folder / "squares.npy", squares, allow_pickle=False)
    (folder / "result.json").write_text(json.dumps({"kept": kept, "skipped": skipped}))
    return 0


def load_or_extract(encoder_config: EncoderConfig, image_dir: Path, names: Sequence[str],
                    progress: bool = True, grid: bool = False) -> FeatureSet:
    """Features for `names` from the cache, extracting them first if no process has yet.

    With `grid`, the feature maps too (memory-mapped): an entry cached without them is
    extracted again, with them, and then serves both.
    """
    cache_dir = encoder_config.resolved_cache_dir() / "features"
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(encoder_config, image_dir, names)
    array_path = cache_dir / f"{encoder_config.name}-{key}.npy"
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


if __name__ == "__main__":
    sys.exit(_extract_for_parent(Path(sys.argv[1])))
