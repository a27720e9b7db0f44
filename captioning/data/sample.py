"""Synthetic captioning dataset in the Kaggle Flickr8k layout (``Images/`` + ``captions.txt``).

Each image shows one to three coloured shapes on a simple background; its five captions name
the colours, kinds, sizes and count of the shapes and sometimes the background. The content is
chosen so that globally pooled CNN features carry most of what the captions say.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioning.data.layouts import kaggle_file, karpathy_file, token_file
from captioning.errors import ConfigError

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.txt"
IMAGES_DIR = "Images"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (245, 220, 40),
    "purple": (140, 45, 185),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("large", "small")
BACKGROUNDS: tuple[str, ...] = ("light", "dark", "gradient", "noisy")

_COLOUR_NAMES = tuple(COLOURS)
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_JPEG_QUALITY = 90
_N_TEMPLATES = 8


@dataclass(frozen=True)
class Shape:
    """One drawn shape: what it is and where (centre and bounding-circle radius, in pixels)."""

    kind: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """What an image shows, in the order its captions name the shapes."""

    width: int
    height: int
    background: str
    shapes: list[Shape] = field(default_factory=list)


def _tint(rng: np.random.Generator, base: float, spread: int = 14) -> np.ndarray:
    return np.clip(base + rng.integers(-spread, spread + 1, size=3), 0, 255).astype(np.float32)


def _background(rng: np.random.Generator, kind: str, width: int, height: int) -> Image.Image:
    # Low-saturation tints keep the background from competing with the shapes' colour names.
    if kind == "light":
        arr = np.broadcast_to(_tint(rng, rng.integers(215, 246)), (height, width, 3))
    elif kind == "dark":
        arr = np.broadcast_to(_tint(rng, rng.integers(15, 50)), (height, width, 3))
    elif kind == "gradient":
        a, b = _tint(rng, rng.integers(180, 236), 18), _tint(rng, rng.integers(20, 80), 18)
        if rng.random() < 0.5:
            a, b = b, a
        if rng.random() < 0.5:
            t = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
        else:
            t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(a * (1.0 - t) + b * t, (height, width, 3))
    elif kind == "noisy":
        base = _tint(rng, rng.integers(95, 161))
        noise = rng.normal(0.0, 28.0, size=(height, width, 1)).astype(np.float32)
        arr = base + noise + rng.normal(0.0, 8.0, size=(height, width, 3)).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        # Half-diagonal slightly above r; the overlap check below leaves a margin for it.
        pts = [(1.06 * r, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif kind == "triangle":
        pts = [(r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif kind == "star":
        pts = [(r if k % 2 == 0 else 0.45 * r, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    else:
        raise ValueError(f"no polygon for {kind!r}")
    return [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for d, a in pts]


def _place(
    rng: np.random.Generator, width: int, height: int, sizes: list[str]
) -> list[tuple[float, float, float, str]]:
    """Centres and radii for non-overlapping shapes; shrinks large shapes if they do not fit."""
    side = min(width, height)
    placed: list[tuple[float, float, float, str]] = []
    for size in sizes:
        for attempt in range(200):
            if size == "large" and attempt >= 60:
                size = "small"
            lo, hi = (0.19, 0.25) if size == "large" else (0.10, 0.14)
            r = float(rng.uniform(lo, hi)) * side
            margin = r + 2
            cx = float(rng.uniform(margin, width - margin))
            cy = float(rng.uniform(margin, height - margin))
            if all(math.hypot(cx - x, cy - y) >= 1.08 * (r + q) + 3 for x, y, q, _ in placed):
                placed.append((cx, cy, r, size))
                break
        else:
            # Practically unreachable with at most three small shapes; keep the scene anyway.
            placed.append((cx, cy, r, size))
    return placed


def draw_scene(
    rng: np.random.Generator, width: int | None = None, height: int | None = None
) -> tuple[Image.Image, Scene]:
    """Draw one random scene; returns the RGB image and the scene it shows."""
    if width is None:
        width = int(rng.integers(128, 193))
    if height is None:
        height = int(np.clip(width + rng.integers(-20, 21), 120, 192))
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    colours = [str(_COLOUR_NAMES[i]) for i in rng.integers(0, len(_COLOUR_NAMES), size=n)]
    kinds = [str(KINDS[i]) for i in rng.integers(0, len(KINDS), size=n)]
    sizes = [str(SIZES[i]) for i in rng.integers(0, len(SIZES), size=n)]
    # White shapes would vanish on light or near-white gradient backgrounds.
    backgrounds = [
        b for b in BACKGROUNDS if not ("white" in colours and b in ("light", "gradient"))
    ]
    background = str(backgrounds[int(rng.integers(0, len(backgrounds)))])

    image = _background(rng, background, width, height)
    draw = ImageDraw.Draw(image)
    shapes = []
    for (cx, cy, r, size), colour, kind in zip(
        _place(rng, width, height, sizes), colours, kinds, strict=True
    ):
        red, green, blue = np.clip(np.add(COLOURS[colour], rng.integers(-18, 19, size=3)), 0, 255)
        rgb = (int(red), int(green), int(blue))
        if kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        else:
            angle = float(rng.uniform(-0.3, 0.3)) if kind != "star" else float(rng.uniform(0, 1.26))
            draw.polygon(_polygon(kind, cx, cy, r, angle), fill=rgb)
        shapes.append(Shape(kind, colour, size, cx, cy, r, rgb))
    # A canonical order (large first, then palette order) makes the caption a function of what
    # the image contains rather than of where things happen to be.
    shapes.sort(
        key=lambda s: (
            SIZES.index(s.size),
            _COLOUR_NAMES.index(s.colour),
            KINDS.index(s.kind),
            s.cx,
        )
    )
    return image, Scene(width, height, background, shapes)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _caption(scene: Scene, template: int) -> str:
    shapes = scene.shapes
    n = len(shapes)
    bare = [f"{s.colour} {s.kind}" for s in shapes]
    sized = [f"{s.size} {s.colour} {s.kind}" for s in shapes]
    with_a = [f"{_article(b)} {b}" for b in bare]
    sized_a = [f"{_article(b)} {b}" for b in sized]
    count = f"{_COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'}"
    bg = f"{_article(scene.background)} {scene.background} background"
    if template == 0:
        return f"{_join(sized_a)} on {bg}"
    if template == 1:
        return _join(bare)
    if template == 2:
        return f"{count}: {_join(with_a)}"
    if template == 3:
        if n == 1:
            return f"there is {sized_a[0]} in the picture"
        return f"there is {with_a[0]} next to {_join(sized_a[1:])}"
    if template == 4:
        if n == 1:
            return f"picture of {bare[0]} on {scene.background}"
        return f"picture of {bare[0]} with {_join(bare[1:])} on {scene.background}"
    if template == 5:
        return f"the image shows {_join(with_a)} on {bg}"
    if template == 6:
        return f"{_join(sized)} drawn on {bg}"
    if template == 7:
        return f"simple drawing of {count}, {_join(sized)}"
    raise ValueError(f"no caption template {template}")


def captions_for(scene: Scene, rng: np.random.Generator, k: int = 5) -> list[str]:
    """``k`` captions for ``scene``, each from a different template."""
    templates = rng.choice(_N_TEMPLATES, size=k, replace=False)
    return [_caption(scene, int(t)) for t in templates]


def image_name(seed: int, index: int) -> str:
    """Flickr-like file name (``<10 digits>_<10 hex>.jpg``) fixed by ``seed`` and ``index``."""
    digest = hashlib.sha256(f"sample-data:{seed}:{index}".encode()).hexdigest()
    number = 1_000_000_000 + int(digest[:15], 16) % 9_000_000_000
    return f"{number}_{digest[15:25]}.jpg"


def draw_example(seed: int, index: int) -> tuple[Image.Image, Scene, list[str]]:
    """Image, scene and five captions of example ``index`` of the dataset drawn with ``seed``."""
    rng = np.random.default_rng([seed, index])
    image, scene = draw_scene(rng)
    return image, scene, captions_for(scene, rng)


def dataset_files(root: Path) -> list[str]:
    """What of a dataset ``root`` already holds, relative to it: caption files of any layout,
    and ``Images/`` when it has anything in it."""
    found = [path.relative_to(root).as_posix()
             for path in (kaggle_file(root), token_file(root), karpathy_file(root)) if path]
    images = root / IMAGES_DIR
    if images.is_dir() and next(images.iterdir(), None) is not None:
        found.append(f"{IMAGES_DIR}/ with files")
    return found


def draw_sample_dataset(root: Path | str, images: int = 200, seed: int = 0, *,
                        force: bool = False) -> Path:
    """Write ``images`` synthetic examples under ``root`` in the Flickr8k layout; returns root.

    Refuses (ConfigError) a ``root`` that is a file, or that already holds a dataset (see
    :func:`dataset_files`) unless ``force``: its ``captions.txt`` would be replaced.
    """
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file, not a folder to draw sample data into")
    existing = dataset_files(root) if root.is_dir() else []
    if existing and not force:
        raise ConfigError(f"{root} already holds a dataset ({', '.join(existing)}); pass --force "
                          f"to overwrite its {CAPTIONS_FILE} and add the sample images to "
                          f"{IMAGES_DIR}/")
    image_dir = root / IMAGES_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(root / CAPTIONS_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        for index in range(images):
            image, _, captions = draw_example(seed, index)
            name = image_name(seed, index)
            image.save(image_dir / name, format="JPEG", quality=_JPEG_QUALITY)
            writer.writerows([name, caption] for caption in captions)
    others = [name for name in existing if name != CAPTIONS_FILE and "/ " not in name]
    if others:
        log.warning("%s also holds %s, which data.format auto reads before %s: set "
                    "data.format: kaggle to train on the sample data", root, ", ".join(others),
                    CAPTIONS_FILE)
    return root
