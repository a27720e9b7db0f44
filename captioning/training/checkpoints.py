"""A trial's checkpoints on the sweep's storage: which are whole, and which is the newest.

Every epoch's model directory carries `checkpoint.json`, a manifest of its files with their
SHA-256 digests and the epoch they hold, written after them (epoch_end.py). A checkpoint folder on
storage is whole when each file of its manifest is there with that digest; one whose copy was
cut off (a node lost mid-upload, a driver killed) or partly overwritten is not, and is never
resumed from. Storage is any pyarrow file system Ray Tune writes to: a local or shared path,
s3://, gs://.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.atomic import Writer, temp_name
from captioning.training.model_files import HISTORY, MANIFEST

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "captioning.checkpoint/1"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Tune's checkpoint folders: checkpoint_000003
_CHUNK = 1 << 20


def _digest(stream: Any) -> str:
    sha = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        sha.update(chunk)
    return sha.hexdigest()


def manifest_writer(model_dir: Path, epoch: int, written: Iterable[str]) -> Writer:
    """The writer of `model_dir`'s manifest for `epoch`, to go last in the `write_whole` that
    writes the files named `written`: those are digested from their temp names, every other
    file of the folder as it is, so the manifest lands with the files it describes."""
    written = set(written)

    def write(path: Path) -> None:
        names = {p.name for p in model_dir.iterdir()
                 if p.is_file() and not p.name.startswith(".")} | written
        files = {}
        for name in sorted(names - {MANIFEST}):
            source = temp_name(model_dir / name) if name in written else model_dir / name
            with source.open("rb") as stream:
                files[name] = _digest(stream)
        path.write_text(json.dumps({"format": MANIFEST_FORMAT, "epoch": epoch,
                                    "files": files}, indent=1), encoding="utf-8")

    return write


def storage(location: str) -> tuple[Any, str]:
    """(pyarrow file system, path in it) of a local path or a URI such as s3://bucket/x."""
    from pyarrow import fs

    if "://" in location:
        return fs.FileSystem.from_uri(location)
    return fs.LocalFileSystem(), Path(location).resolve().as_posix()


def _read_json(filesystem: Any, path: str) -> Any:
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read().decode("utf-8"))


def epochs_in(filesystem: Any, folder: str) -> int:
    """How many epochs the checkpoint in `folder` has trained (its history.json), trusted as
    it is: for the checkpoint Ray Tune itself restores a trial from."""
    try:
        return len(_read_json(filesystem, posixpath.join(folder, HISTORY)))
    except (FileNotFoundError, OSError, ValueError):
        return 0


def whole_epoch(filesystem: Any, folder: str) -> int | None:
    """The epoch of the checkpoint in `folder` if every file of its manifest is there with its
    digest, else None."""
    try:
        manifest = _read_json(filesystem, posixpath.join(folder, MANIFEST))
        for name, digest in manifest["files"].items():
            with filesystem.open_input_stream(posixpath.join(folder, name)) as stream:
                if _digest(stream) != digest:
                    return None
        return int(manifest["epoch"])
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
        return None


def folders(filesystem: Any, trial_dir: str) -> list[str]:
    """The checkpoint folders (checkpoint_*) in a trial's folder on storage."""
    from pyarrow import fs

    try:
        infos = filesystem.get_file_info(fs.FileSelector(trial_dir, allow_not_found=True))
    except OSError:
        return []
    return sorted(info.path for info in infos if info.type == fs.FileType.Directory
                  and posixpath.basename(info.path).startswith(CHECKPOINT_PREFIX))


@dataclass(frozen=True)
class Found:
    path: str  # in `filesystem`
    filesystem: Any
    epoch: int


def newest_whole(filesystem: Any, trial_dir: str, *, after: int = 0) -> Found | None:
    """The whole checkpoint of `trial_dir` with the most epochs, if it has more than `after`.

    Claimed epochs are read from the manifests first (small files), and only the candidates
    from the newest down are checked file by file, so a bucket is not read whole.
    """
    claimed = []
    for folder in folders(filesystem, trial_dir):
        try:
            claimed.append((int(_read_json(filesystem, posixpath.join(folder, MANIFEST))
                                ["epoch"]), folder))
        except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
            continue
    for epoch, folder in sorted(claimed, reverse=True):
        if epoch <= after:
            return None
        if whole_epoch(filesystem, folder) == epoch:
            return Found(folder, filesystem, epoch)
        log.warning("checkpoint %s is not whole (a copy cut off or overwritten): not resuming "
                    "from it", folder)
    return None
