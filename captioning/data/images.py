"""Reading any common image file into a fixed-size RGB array, or a clear reason why not."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The most pixels decoded at full size: 64 megapixels is 192 MB as RGB, and up to
# encoder.decode_workers images are decoded at once. A JPEG is first cut down by `draft`
# (1/2 to 1/8 scale while decoding), so larger JPEG photos still load; a bigger PNG, GIF, ... is
# refused before any pixel is decoded. PIL itself refuses more than 2 x Image.MAX_IMAGE_PIXELS
# (179 megapixels) when it opens any file, as a possible decompression bomb.
MAX_PIXELS = 64_000_000
# The most bytes read from a pipe or device (`caption /dev/stdin`), which is read into memory
# before it is decoded: the pixel bound as uncompressed RGB, which no image file within it
# needs to exceed. A regular file is not read whole, so needs no such bound.
MAX_STREAM_BYTES = 3 * MAX_PIXELS


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: PIL's convert("RGB") clips at 255, so rescale to 8 bits first,
        # by the 16-bit range (not the image's peak, which would turn a flat grey white).
        array = np.asarray(image, dtype=np.float32)  # float64 would double a large image
        full = max(65535.0, float(array.max()))
        image = Image.fromarray(np.clip(array * (255.0 / full), 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


ImageSource = Path | str | bytes


def readable(source: ImageSource, label: str | None = None) -> ImageSource:
    """`source` as it can be read more than once: the bytes of a pipe or device (a named pipe,
    /dev/stdin), read to its end now, at most MAX_STREAM_BYTES; any other source unchanged.
    Raises ImageError (naming `label`, else the file) if there are more bytes than that."""
    if isinstance(source, bytes | bytearray):
        return source
    try:
        mode = Path(source).stat().st_mode
    except OSError:
        return source  # load_image says why it cannot be read
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return source
    with Path(source).open("rb") as stream:
        data = stream.read(MAX_STREAM_BYTES + 1)
    if len(data) > MAX_STREAM_BYTES:
        raise ImageError(Path(label or source), f"more than {MAX_STREAM_BYTES // 1_000_000} "
                         "MB from a pipe or device: too large for an image within the "
                         f"{MAX_PIXELS // 1_000_000} megapixels decoded")
    return data


def load_image(source: ImageSource, size: int, label: str | None = None) -> np.ndarray:
    """Decode an image file (or its encoded bytes) and resize it to (size, size, 3) uint8 RGB.

    Handles JPEG/PNG/… in greyscale, palette, CMYK, 16-bit and alpha (composited on white),
    honours EXIF orientation, and raises ImageError for missing, empty, truncated or non-image
    files, and for images of more than MAX_PIXELS pixels (after a JPEG's reduced-scale
    decoding), before decoding them. A pipe or device (/dev/stdin) is read to its end first
    (see `readable`). Errors name `label`, else the file (or "image bytes").
    """
    path = Path(label or ("image bytes" if isinstance(source, bytes | bytearray) else source))
    try:
        source = readable(source, str(path))
        encoded = isinstance(source, bytes | bytearray)
        if (len(source) if encoded else Path(source).stat().st_size) == 0:
            raise ImageError(path, "empty (0 bytes), not an image")
        with Image.open(io.BytesIO(source) if encoded else Path(source)) as image:
            # JPEG can decode straight to a smaller scale: much faster for large photos.
            image.draft("RGB", (size, size))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    path,
                    f"image too large: {width}x{height} pixels, more than "
                    f"the {MAX_PIXELS // 1_000_000} megapixels decoded",
                )
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file PIL can read") from None
    except Image.DecompressionBombError as error:
        # Raised by Image.open from the header alone: no pixel has been decoded.
        raise ImageError(path, f"image too large ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(path, f"unreadable image ({error})") from None
