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
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

from captioning.config import EncoderConfig
from captioning.encoders import RANDOM_WEIGHTS_SEED, build_encoder, input_size, preprocessing
from captioning.files import write_whole
from captioning.images import ImageError, ImageSource, load_image

log = logging.getLogger(__name__)

CACHE_FORMAT = "captioning.features/1"


@dataclass
class FeatureSet:
    """Features of `names[i]` in row i of `array`; `skipped` maps image name -> reason."""

    names: list[str]
    array: np.ndarray  # (images, dim)
    skipped: dict[str, str]
    path: Path
    extracted: bool  # True when this call ran the encoder, False when read from the cache
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {name: row for row, name in enumerate(self.names)}

    def rows(self, names: Sequence[str]) -> np.ndarray:
        return self.array[[self.index[name] for name in names]]

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])


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


def encode_images(encoder: Any, encoder_config: EncoderConfig, sources: Sequence[ImageSource],
                  progress: bool = False, labels: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, list[int], dict[int, ImageError]]:
    """Features of every readable image in `sources` (files or encoded bytes), decoded ahead on
    a thread pool.

    Returns (features (kept, dim), positions in `sources` of the kept rows, and the error of
    every other position).
    """
    size = input_size(encoder_config)
    preprocess = preprocessing(encoder_config)
    rows: list[np.ndarray] = []
    kept: list[int] = []
    errors: dict[int, ImageError] = {}
    bar = tqdm(total=len(sources), desc=f"features {encoder_config.name}", unit="img",
               disable=not progress)
    for batch in decoded_batches(sources, size, encoder_config.batch_size,
                                 encoder_config.decode_workers, labels):
        good = [(position, array) for position, array in batch if isinstance(array, np.ndarray)]
        errors.update((position, result) for position, result in batch
                      if isinstance(result, ImageError))
        if good:
            pixels = preprocess(np.stack([array for _, array in good]).astype("float32"))
            vectors = np.asarray(encoder.predict_on_batch(pixels))  # (batch, [h, w,] dim)
            if vectors.ndim == 4:  # a feature map: its mean over positions (average pooling)
                vectors = vectors.mean(axis=(1, 2))
            rows.append(vectors.astype(encoder_config.cache_dtype))
            kept.extend(position for position, _ in good)
        bar.update(len(batch))
    bar.close()
    dim = int(encoder.output_shape[-1])
    array = np.concatenate(rows) if rows else np.zeros((0, dim), encoder_config.cache_dtype)
    return array, kept, errors


def extract(encoder_config: EncoderConfig, image_dir: Path, names: Sequence[str],
            progress: bool = True) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Run the encoder over images; returns (features, names kept, skipped name -> reason)."""
    encoder = build_encoder(encoder_config)
    paths = [image_dir / name for name in names]
    array, kept, errors = encode_images(encoder, encoder_config, paths, progress)
    for error in errors.values():
        log.warning("skipping image %s", error)
    skipped = {names[position]: error.reason for position, error in errors.items()}
    return array, [names[position] for position in kept], skipped


def load_or_extract(encoder_config: EncoderConfig, image_dir: Path, names: Sequence[str],
                    progress: bool = True) -> FeatureSet:
    """Features for `names` from the cache, extracting them first if no process has yet."""
    cache_dir = encoder_config.resolved_cache_dir() / "features"
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(encoder_config, image_dir, names)
    array_path = cache_dir / f"{encoder_config.name}-{key}.npy"
    index_path = array_path.with_suffix(".json")
    lock = FileLock(str(array_path) + ".lock")
    with lock:
        if array_path.exists() and index_path.exists():
            index = json.loads(index_path.read_text(encoding="utf-8"))
            array = np.load(array_path, allow_pickle=False)
            return FeatureSet(index["names"], array, index["skipped"], array_path, False)
        log.info("extracting %s features of %d images into %s", encoder_config.name,
                 len(names), array_path)
        # Temp files of this entry left by a writer that was killed: nobody else writes here.
        for target in (index_path, array_path):
            for stale in cache_dir.glob(f".{target.name}.*"):
                stale.unlink(missing_ok=True)
        array, kept, skipped = extract(encoder_config, image_dir, names, progress)
        index = {"format": CACHE_FORMAT, "encoder": encoder_config.name,
                 "weights": encoder_config.weights, "names": kept, "skipped": skipped}
        # The index goes first: the .npy appearing is what marks the entry complete.
        write_whole({index_path: lambda path: path.write_text(json.dumps(index)),
                     array_path: lambda path: path.write_bytes(_npy_bytes(array))},
                    "feature cache file", "the cache is as it was (free space there, or point "
                    "encoder.cache_dir or CAPTIONING_CACHE_DIR elsewhere)")
        return FeatureSet(kept, array, skipped, array_path, True)
