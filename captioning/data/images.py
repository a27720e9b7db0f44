"""Reading any common image file into a fixed-size RGB array, or a clear reason why not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The most pixels decoded at full size: 64 megapixels is 192 MB as RGB, and up to
# encoder.decode_workers images are decoded at once. A JPEG is first cut down by `draft`
# (1/2 to 1/8 scale while decoding), so larger JPEG photos still load; a bigger PNG, GIF, ... is
# refused before any pixel is decoded. PIL itself refuses more than 2 x Image.MAX_IMAGE_PIXELS
# (179 megapixels) when it opens any file, as a possible decompression bomb.
MAX_PIXELS = 64_000_000


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


def load_image(source: ImageSource, size: int, label: str | None = None) -> np.ndarray:
    """Decode an image file (or its encoded bytes) and resize it to (size, size, 3) uint8 RGB.

    Handles JPEG/PNG/… in greyscale, palette, CMYK, 16-bit and alpha (composited on white),
    honours EXIF orientation, and raises ImageError for missing, empty, truncated or non-image
    files, and for images of more than MAX_PIXELS pixels (after a JPEG's reduced-scale
    decoding), before decoding them. Errors name `label`, else the file (or "image bytes").
    """
    encoded = isinstance(source, bytes | bytearray)
    path = Path(label or ("image bytes" if encoded else source))
    try:
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
