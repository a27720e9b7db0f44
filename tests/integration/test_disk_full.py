"""A disk that fills while a checkpoint or a feature-cache file is written: a clear error that
names the file, and the previous checkpoint or cache entry intact, byte for byte.

The disk is real: each case runs in a child process inside its own user and mount namespace
(`unshare -rm`) with a small tmpfs mounted, filled until writes fail with ENOSPC. The child
prints what it saw as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from captioning.data.sample import IMAGES_DIR, draw_sample_dataset, image_name
from conftest import REPO, quick_config

# Shared by both children: fill the tmpfs, hash what is in a directory.
HELPERS = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    def fill(disk: Path, leave: int) -> Path:
        \"\"\"Write to disk/filler until ENOSPC, then free `leave` bytes of it.\"\"\"
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as stream:
            try:
                while True:
                    stream.write(b"x" * 65536)
            except OSError as error:
                assert error.errno == 28, error
        os.truncate(filler, filler.stat().st_size - leave)
        return filler

    def digests(directory: Path) -> dict[str, str]:
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(directory.iterdir()) if path.is_file()}
    """
)

CHECKPOINT_CHILD = HELPERS + textwrap.dedent(
    """
    from captioning.inference.captioner import Captioner
    from captioning.config.schema import parse_config
    from captioning.errors import WriteError
    from captioning.training.train import train_captioner

    disk, data = Path(sys.argv[1]), json.loads(sys.argv[2])

    def train(epochs: int, resume: bool):
        data["train"]["epochs"] = epochs
        return train_captioner(parse_config(data), model_dir=disk / "model", verbose=0,
                               resume=resume)

    train(1, resume=False)
    before = digests(disk / "model")
    filler = fill(disk, leave=16 * 1024)  # room for a JSON file, not for a model
    try:
        train(2, resume=True)
        error = None
    except WriteError as caught:
        error = str(caught)
    after = digests(disk / "model")
    captioner = Captioner.load(disk / "model")
    filler.unlink()
    resumed = train(2, resume=True)
    print(json.dumps({"error": error, "before": before, "after": after,
                      "loaded_vocab": len(captioner.vocab),
                      "resumed_epochs": [m["epoch"] for m in resumed.history]}))
    """
)

CACHE_CHILD = HELPERS + textwrap.dedent(
    """
    import numpy as np
    from captioning.config.encoder import EncoderConfig
    from captioning.errors import WriteError
    from captioning.features.cache import load_or_extract

    disk, image_dir, names = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    config = EncoderConfig(name="inception_v3", weights="none", image_size=75, cache_dir=disk)
    cache = disk / "features"

    old = load_or_extract(config, image_dir, names[:2], progress=False)  # a 16 KiB .npy
    before = digests(cache)
    filler = fill(disk, leave=8 * 1024)  # the next entry's index fits, its 48 KiB .npy not
    try:
        load_or_extract(config, image_dir, names, progress=False)
        error = None
    except WriteError as caught:
        error = str(caught)
    after = digests(cache)
    hidden = sorted(path.name for path in cache.iterdir() if path.name.startswith("."))
    again = load_or_extract(config, image_dir, names[:2], progress=False)
    filler.unlink()
    retried = load_or_extract(config, image_dir, names, progress=False)
    print(json.dumps({
        "error": error, "before": before, "after": after, "hidden": hidden,
        "old_path": str(old.path), "again_extracted": again.extracted,
        "again_identical": bool(np.array_equal(again.array, old.array)),
        "retried_extracted": retried.extracted, "retried_rows": len(retried.names),
    }))
    """
)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless this machine lets an unprivileged process mount a tmpfs (unshare -rm)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs in a mount namespace")
    mount = tmp_path_factory.mktemp("probe")
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k",
                            "tmpfs", str(mount)], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("needs a user and mount namespace (unshare -rm) to mount a small tmpfs: "
                    f"{probe.stderr.strip() or probe.returncode}")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 sample images: enough to train an epoch, few to extract features of."""
    return draw_sample_dataset(tmp_path_factory.mktemp("small") / "data", images=40, seed=0)


def run_on_small_disk(disk: Path, size: str, script: str, *args: str) -> dict:
    """Run `script` (argv: `disk`, *args) with a fresh tmpfs of `size` mounted at `disk`;
    return the JSON line it prints last."""
    disk.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    mount_then_run = 'mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@"'
    command = ["unshare", "-rm", "sh", "-c", mount_then_run, "sh", size, str(disk),
               sys.executable, "-c", script, str(disk), *args]
    child = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=240)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(small_disk, small_dataset,
                                                              tmp_path):
    config = quick_config(small_dataset, score_images=8).to_dict()
    result = run_on_small_disk(tmp_path / "disk", "16m", CHECKPOINT_CHILD, json.dumps(config))

    model_dir = tmp_path / "disk" / "model"
    assert result["error"] is not None, "the second epoch's checkpoint was written anyway"
    assert result["error"].startswith(f"could not write checkpoint {model_dir}/")
    assert result["error"].split(": ", 1)[0].endswith((".keras", ".json"))
    assert result["error"].endswith(
        ": No space left on device; the previous checkpoint (epoch 1) is intact")
    # Every file of epoch 1 as it was, and no temp file left beside them; config.json alone
    # was rewritten, by the resumed run before its first epoch, as the config it runs.
    before, after = result["before"], result["after"]
    assert set(after) == set(before)
    assert {name: after[name] for name in before if name != "config.json"} == {
        name: before[name] for name in before if name != "config.json"}
    assert {"model.keras", "last.keras", "metrics.json", "history.json", "config.json",
            "vocab.json"} <= set(result["before"])
    assert result["loaded_vocab"] > 4
    # Once there is room again, training resumes after epoch 1.
    assert result["resumed_epochs"] == [1, 2]


def test_disk_full_during_a_cache_write_keeps_the_cache_as_it_was(small_disk, small_dataset,
                                                                  tmp_path):
    names = [image_name(0, i) for i in range(6)]
    result = run_on_small_disk(tmp_path / "disk", "1m", CACHE_CHILD,
                               str(small_dataset / IMAGES_DIR), json.dumps(names))

    cache = tmp_path / "disk" / "features"
    assert result["error"] is not None, "the second cache entry was written anyway"
    assert result["error"].startswith(f"could not write feature cache file {cache}/inception_v3-")
    assert ".npy: No space left on device; the cache is as it was" in result["error"]
    assert Path(result["old_path"]).name in result["before"]
    # The old entry byte for byte, no half entry (index without its .npy), no temp file.
    new_files = set(result["after"]) - set(result["before"])
    assert all(name.endswith(".npy.lock") for name in new_files), new_files
    assert {name: result["after"][name] for name in result["before"]} == result["before"]
    assert result["hidden"] == []
    assert result["again_extracted"] is False
    assert result["again_identical"] is True
    # With room again the failed entry is extracted afresh, never read half-written.
    assert result["retried_extracted"] is True
    assert result["retried_rows"] == len(names)
