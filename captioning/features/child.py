"""Feature extraction on TensorFlow from a process that trains on JAX: a child process.

The protocol: the parent writes request.json (the encoder config, the images) into a temp
folder and runs `python -m captioning.features.child FOLDER` with KERAS_BACKEND=tensorflow;
the child writes array.npy (and squares.npy) and result.json, or error.json with a message
the parent raises again as the same kind of error.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioning.config.encoder import EncoderConfig
from captioning.errors import ConfigError
from captioning.features.extract import extract
from captioning.log import quiet_start_up, show_info_logs

log = logging.getLogger(__name__)


# Below this many images a TensorFlow process is not worth its start (a few seconds).
TENSORFLOW_EXTRACTION_MIN_IMAGES = 300


def extract_on_tensorflow(encoder_config: EncoderConfig, image_dir: Path,
                          names: Sequence[str], progress: bool = True,
                          grid_path: Path | None = None
                          ) -> tuple[np.ndarray, np.ndarray | None, list[str], dict[str, str]]:
    """`extract`, run on TensorFlow: here if this process's Keras backend is TensorFlow (or
    there are few images), else in a child process on TensorFlow, whose oneDNN convolutions
    are 2 to 4 times as fast as XLA's on a CPU (captioning/training/backend.py)."""
    import keras

    if keras.backend.backend() == "tensorflow" or len(names) < TENSORFLOW_EXTRACTION_MIN_IMAGES:
        return extract(encoder_config, image_dir, names, progress, grid_path)
    with tempfile.TemporaryDirectory(prefix="captioning-extract-") as tmp:
        folder = Path(tmp)
        (folder / "request.json").write_text(json.dumps({
            "encoder": encoder_config.model_dump(mode="json"), "image_dir": str(image_dir),
            "names": list(names), "progress": progress,
            "grid_path": str(grid_path) if grid_path else None}), encoding="utf-8")
        log.info("extracting on TensorFlow, in a child process")
        child = subprocess.run([sys.executable, "-m", "captioning.features.child", str(folder)],
                               env={**os.environ, "KERAS_BACKEND": "tensorflow"}, check=False)
        if (folder / "error.json").is_file():
            error = json.loads((folder / "error.json").read_text(encoding="utf-8"))
            kinds = {"config": ConfigError, "write": OSError}
            raise kinds.get(error["kind"], RuntimeError)(error["message"])
        if child.returncode != 0:
            raise RuntimeError(f"feature extraction on TensorFlow failed (exit code "
                               f"{child.returncode}; its error is printed above)")
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        array = np.load(folder / "array.npy", allow_pickle=False)
        squares = np.load(folder / "squares.npy", allow_pickle=False) \
            if (folder / "squares.npy").is_file() else None
        return array, squares, result["kept"], result["skipped"]


def main(folder: Path) -> int:
    """The child side of `extract_on_tensorflow`: request.json in, arrays and JSON out."""
    show_info_logs()
    quiet_start_up()  # at the level the command set, or its user did
    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    grid_path = Path(request["grid_path"]) if request["grid_path"] else None
    try:
        array, squares, kept, skipped = extract(
            EncoderConfig.model_validate(request["encoder"]), Path(request["image_dir"]),
            request["names"], request["progress"], grid_path)
    except ConfigError as error:
        (folder / "error.json").write_text(json.dumps({"kind": "config",
                                                       "message": str(error)}))
        return 2
    except OSError as error:
        (folder / "error.json").write_text(json.dumps({"kind": "write", "message": str(error)}))
        return 2
    np.save(folder / "array.npy", array, allow_pickle=False)
    if squares is not None:
        np.save(folder / "squares.npy", squares, allow_pickle=False)
    (folder / "result.json").write_text(json.dumps({"kept": kept, "skipped": skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
