"""Where an attending decoder looked for each word of an image file's caption, drawn to a
figure file per image (`captioning caption --attention OUT.png`)."""

from __future__ import annotations

import io
from pathlib import Path

from captioning.data.images import ImageError, readable
from captioning.evaluation.figures import attention_figure
from captioning.inference.captioner import Captioner


def attention_files(out: Path, images: list[Path]) -> list[Path]:
    """Where each image's figure goes: `out` for one image; for several, OUT-<image>.png,
    with the image's position (1, 2, ...) added where names would collide (a/x.jpg and b/x.jpg:
    OUT-x-1.png, OUT-x-2.png)."""
    if len(images) == 1:
        return [out]
    stems = [Path(image).stem for image in images]
    taken: set[str] = set()
    files = []
    for index, stem in enumerate(stems, 1):
        name = stem if stems.count(stem) == 1 else f"{stem}-{index}"
        while name in taken:  # x-2.jpg beside two x.jpg
            name = f"{name}-{index}"
        taken.add(name)
        files.append(out.with_name(f"{out.stem}-{name}{out.suffix or '.png'}"))
    return files


def draw_attention(captioner: Captioner, path: Path, out: Path, beam_width: int | None = None
                   ) -> list[str] | ImageError:
    """Caption the image file `path` and draw, to `out`, the image and where the decoder
    looked for each word; returns the words, or the ImageError that stopped it. A pipe
    (/dev/stdin) is read once, for both."""
    from PIL import Image

    try:
        source = readable(path)
    except ImageError as error:
        return error
    result = captioner.attend(source, beam_width, label=str(path))
    if not isinstance(result, tuple):
        return result
    words, maps = result
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else path) as image:
        attention_figure([(image, words, maps)], out)
    return words
