"""Files written whole or not at all: the feature cache and model checkpoints.

Each file goes to a temp name beside it and is flushed to disk; only when every file of the
set is written are they renamed into place, in order. A write that fails (a full disk) leaves
no temp file behind and every target as it was, and raises WriteError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from captioning.errors import WriteError

Writer = Callable[[Path], None]  # writes one file's content to the path it is given


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is renamed: hidden, with its suffix kept (Keras
    saves only to a path ending .keras)."""
    return path.with_name(f".{path.name}.tmp{path.suffix}")


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)  # a file or a directory
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_whole(files: Mapping[Path, Writer], what: str, kept: str) -> None:
    """Write `files` (path -> writer) all or none; on failure raise WriteError
    "could not write <what> <path>: <reason>; <kept>"."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in files.items():
            staged.append((temp_name(path), path))
            write(staged[-1][0])
            _fsync(staged[-1][0])
    except BaseException as error:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise WriteError(f"could not write {what} {staged[-1][1]}: "
                             f"{error.strerror or error}; {kept}") from error
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    for directory in dict.fromkeys(path.parent for _, path in staged):
        _fsync(directory)  # the renames themselves survive a power cut
