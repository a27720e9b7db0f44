"""Reading a JSON (or any UTF-8 text) file that a person made, every failure one line.

Such a file may be anything: not UTF-8, not JSON, nested deeper than Python's parser recurses,
or gigabytes long. `read_json` and `read_text` raise the error class their caller names
(DatasetError for a dataset's files, ModelDirError for a model directory's) with a one-line
message naming the file, and the line where there is one. Imports only captioning.errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from captioning.errors import first_line

# A file is read whole, and parsed JSON takes several times its size in memory: this bounds
# both. Karpathy's largest caption file (dataset_coco.json, about 150 MB) fits.
MAX_BYTES = 256 * 2**20


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count} bytes"


def read_text(path: Path | str, error: type[Exception], *, max_bytes: int = MAX_BYTES) -> str:
    """The text of `path`, decoded as strict UTF-8 (a leading byte-order mark is dropped).

    Raises `error` with a one-line message naming the file when it cannot be read, holds more
    than `max_bytes` bytes (refused before they are read), or is not UTF-8 (naming the line
    and the first bad byte).
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            # Never more than the limit and one byte, even from a file that grows meanwhile.
            data = stream.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or first_line(exc)})") from exc
    size = max(size, len(data))
    if size > max_bytes:
        raise error(f"{path}: too large to read ({_size(size)}; the limit is {_size(max_bytes)})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path} line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "re-save the file as UTF-8"
        ) from exc


def read_json(path: Path | str, error: type[Exception], *, max_bytes: int = MAX_BYTES) -> Any:
    """The JSON value in `path` (any JSON type: the caller checks the shape it needs).

    Raises `error` with a one-line message naming the file for everything `read_text` refuses,
    and for text that is not JSON (naming the line), JSON nested too deeply for Python's parser,
    or a number too long to convert.
    """
    text = read_text(path, error, max_bytes=max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read (arrays or objects more than "
                    "about a thousand levels deep)") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise error(f"{path}: not valid JSON ({first_line(exc)})") from exc
