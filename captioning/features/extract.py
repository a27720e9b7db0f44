"""Running an encoder over images: decoded on a thread pool a few batches ahead, encoded batch
by batch; an unreadable image is skipped and reported, never a crash halfway through.

`encode_images` keeps features in memory (captioning a few images); `extract` runs over a
dataset for the cache (features/cache.py), writing feature maps to disk as they come.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from captioning.config.encoder import EncoderConfig
from captioning.data.images import ImageError, ImageSource, load_image
from captioning.features import hub
from captioning.features.cut import build_head
from captioning.features.encoders import input_size, preprocessing

log = logging.getLogger(__name__)


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


def map_shape(encoder: Any) -> tuple:
    """The shape of one image's output of `encoder` that is its map ((h, w, channels), or
    (dim,) for a model of one's own that pools itself): its first output, where a hub
    backbone's own pooled vector is the second."""
    return tuple(encoder.outputs[0].shape[1:])


def encoded_batches(encoder: Any, encoder_config: EncoderConfig,
                    sources: Sequence[ImageSource], progress: bool = False,
                    labels: Sequence[str] | None = None
                    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, dict[int, ImageError]]]:
    """The encoder's output for every readable image of `sources` (files or encoded bytes),
    batch by batch, decoded ahead on a thread pool: (positions in `sources` of the rows, their
    maps (rows, h, w, channels) or vectors (rows, channels), their pooled vectors (the
    encoder's own second output, else the maps' mean), the error of each other position)."""
    size = input_size(encoder_config)
    preprocess = preprocessing(encoder_config)
    shape = map_shape(encoder)
    bar = tqdm(total=len(sources), desc=f"features {hub.label(encoder_config.name)}", unit="img",
               disable=not progress)
    for batch in decoded_batches(sources, size, encoder_config.batch_size,
                                 encoder_config.decode_workers, labels):
        good = [(position, array) for position, array in batch if isinstance(array, np.ndarray)]
        errors = {position: result for position, result in batch
                  if isinstance(result, ImageError)}
        maps = np.zeros((0, *shape), "float32")
        vectors = np.zeros((0, int(encoder.outputs[-1].shape[-1])), "float32")
        if good:
            pixels = preprocess(np.stack([array for _, array in good]).astype("float32"))
            outputs = encoder.predict_on_batch(pixels)
            if isinstance(outputs, list | tuple):  # (map, the backbone's own pooled vector)
                maps, vectors = (np.asarray(output, "float32") for output in outputs)
            else:
                maps = np.asarray(outputs, "float32")
                vectors = pooled(maps)
        bar.update(len(batch))
        yield [position for position, _ in good], maps, vectors, errors
    bar.close()


def pooled(outputs: np.ndarray) -> np.ndarray:
    """(rows, h, w, channels) feature maps -> their mean over positions; vectors unchanged."""
    return outputs.mean(axis=(1, 2)) if outputs.ndim == 4 else outputs


def encode_images(encoder: Any, encoder_config: EncoderConfig, sources: Sequence[ImageSource],
                  progress: bool = False, labels: Sequence[str] | None = None,
                  grid: bool = False) -> tuple[np.ndarray, list[int], dict[int, ImageError]]:
    """Features of every readable image in `sources`, in memory (for captioning a few).

    Returns (pooled features (kept, channels), or with `grid` the maps (kept, positions,
    channels); positions in `sources` of the kept rows; the error of every other position).
    """
    rows: list[np.ndarray] = []
    kept: list[int] = []
    errors: dict[int, ImageError] = {}
    for positions, maps, vectors, batch_errors in encoded_batches(
            encoder, encoder_config, sources, progress, labels):
        if grid:
            if maps.ndim != 4:
                raise ValueError(f"encoder {encoder_config.name} gives vectors, not a feature "
                                 "map: a grid decoder cannot read them")
            # (rows, h * w, channels); spelt out, as -1 cannot be inferred for no rows
            rows.append(maps.reshape(len(maps), maps.shape[1] * maps.shape[2], maps.shape[3]))
        else:
            rows.append(vectors.astype(encoder_config.cache_dtype))
        kept.extend(positions)
        errors.update(batch_errors)
    if not rows:  # no source at all
        shape = map_shape(encoder)
        empty = ((0, int(np.prod(shape[:-1])), shape[-1]) if grid
                 else (0, int(encoder.outputs[-1].shape[-1])))
        return np.zeros(empty, encoder_config.cache_dtype), kept, errors
    return np.concatenate(rows), kept, errors


class GridFile:
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
    encoder = build_head(encoder_config)  # up to the cut or encoder.grid_layer, if set
    paths = [image_dir / name for name in names]
    vectors, squares, kept, skipped = [], [], [], {}
    grid = GridFile(grid_path, len(names), encoder_config.grid_dtype) if grid_path else None
    done = 0
    try:
        for positions, maps, pooled_rows, errors in encoded_batches(encoder, encoder_config,
                                                                    paths, progress):
            end = max([done, *positions, *errors]) + 1 if positions or errors else done
            if grid is not None:
                grid.write(done, positions, maps, end)
                squares.append((maps.astype("float32") ** 2).mean(axis=(1, 2)))
            done = end
            vectors.append(pooled_rows.astype(encoder_config.cache_dtype))
            kept.extend(positions)
            for position, error in errors.items():
                log.warning("skipping image %s", error)
                skipped[names[position]] = error.reason
    finally:
        if grid is not None:
            grid.close()
    dim = int(encoder.outputs[-1].shape[-1])
    array = np.concatenate(vectors) if vectors else np.zeros((0, dim), encoder_config.cache_dtype)
    sq = np.concatenate(squares) if squares else None
    return array, sq, [names[position] for position in kept], skipped
