"""A trained captioner as an MLflow model: a pyfunc that captions raw images.

Input: a DataFrame with one column, `image`, holding encoded image files (JPEG, PNG, ...) as
bytes. Over REST the bytes travel as base64 strings, which the model decodes row by row: the
signature types the column as any, not binary, since MLflow's server would decode a binary
column itself and refuse the whole request for one row that is not base64. Output: one row
per image, with `caption`, and `error` when that image could not be read or decoded (its
caption is then null); the other rows are captioned.

The model is logged "from code": MLflow stores a copy of `model_code.py` (three lines that
import `CaptionerModel` from the installed `captioning` package; models logged by 0.1.0
import it by its old name, captioning/mlflow_model.py) and runs that copy to load
it; nothing is unpickled. Whoever can write to the artifact store can change that copy, so
the tracking server's artifacts must be trusted like code (`captioning caption/evaluate`
never run it: they read only the decoder, in safe mode, and JSON). Keras loads the decoder in safe
mode; the vocabulary and config are JSON. The encoder is rebuilt from its name, weights and
input size: Keras fetches ImageNet weights on the machine that loads the model, a local
weights file travels inside the model, and `weights: none` is a seeded random encoder.
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from captioning.config.limits import MAX_BEAM_WIDTH
from captioning.data.sample import draw_example
from captioning.features import hub
from captioning.features.encoders import input_size
from captioning.inference.captioner import Captioner, check_model_files, read_model_config
from captioning.tracking.client import using
from captioning.training import model_files
from captioning.training.devices import enable_memory_growth

ARTIFACT = "captioner"  # the model directory's key in the pyfunc's artifacts
LOGGED_NAME = "model"  # the name every trial's model is logged under: runs:/<run id>/model
CODE = Path(__file__).with_name("model_code.py")
REQUIREMENTS = ("mlflow", "keras", "tensorflow", "jax", "jaxlib", "numpy", "pandas", "pillow",
                "pydantic", "pyyaml", "filelock", "tqdm")


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """image bytes in, caption out (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        # A server (or the sweep driver, which loads each logged model once to check it) may
        # share its GPU with trials: take memory as needed, not all of it.
        enable_memory_growth()
        self.captioner = Captioner.load(context.artifacts[ARTIFACT])
        _ = self.captioner.encoder  # built now: a server is ready once it has loaded

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(
            model_input)
        if "image" not in frame:
            raise ValueError(f"expected a column 'image' of encoded images, got columns "
                             f"{list(frame.columns)}")
        sources, bad = [], {}
        for row, value in enumerate(frame["image"]):
            source = _image_bytes(value)
            if isinstance(source, str):
                bad[row] = f"row {row}: {source}"
                source = b""
            sources.append(source)
        beam = (params or {}).get("beam_width")
        if beam is not None and not 1 <= int(beam) <= MAX_BEAM_WIDTH:
            raise MlflowException.invalid_parameter_value(
                f"beam_width: expected 1 to {MAX_BEAM_WIDTH}, got {beam}")
        results = self.captioner.caption_images(
            sources, int(beam) if beam is not None else None,
            labels=[f"row {i}" for i in range(len(frame))])
        captions = [r if isinstance(r, str) else None for r in results]
        errors = [bad.get(row) or (None if isinstance(r, str) else str(r))
                  for row, r in enumerate(results)]
        # object columns: missing values stay None (JSON null); pandas' string dtype makes NaN.
        return pd.DataFrame({"caption": captions, "error": errors}, dtype=object)


def _image_bytes(value: Any) -> bytes | str:
    """A row's image file bytes: bytes as they are, a string decoded as base64 (line breaks
    allowed, as MLflow's own serving example has them); else why not, as a string."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):  # base64, as REST requests send them
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            return f"not base64 ({error})"
    return f"expected image file bytes or base64, got {type(value).__name__}"


def signature(beam_width: int) -> ModelSignature:
    return ModelSignature(
        # Any, not binary: see the module docstring.
        inputs=Schema([ColSpec(AnyType(), "image")]),
        outputs=Schema([ColSpec("string", "caption"), ColSpec("string", "error",
                                                              required=False)]),
        params=ParamSchema([ParamSpec("beam_width", "long", beam_width)]))


def input_example() -> pd.DataFrame:
    """One small PNG drawn by the sample-data generator."""
    image = draw_example(seed=0, index=0)[0].resize((64, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def requirements() -> list[str]:
    """The runtime packages, pinned as installed. `captioning` itself must be installed where
    the model loads (serve with --env-manager local, or in the project's image)."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return pinned


def package(model_dir: Path, dest: Path) -> Path:
    """Copy what captioning needs from a model directory into `dest`: the best model, vocab,
    config and scores, and a local encoder weights file or model (renamed, made relative)."""
    check_model_files(model_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for name in model_files.PACKAGED:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    config = model_files.read_config(model_dir)
    # Resolved as loading does: a packaged model's encoder files are relative to its folder.
    encoder = read_model_config(model_dir).encoder
    files = {"weights": encoder.weights_file,
             "model": str(encoder.model) if encoder.model else None}
    for key, path in files.items():
        if path is not None:
            source = Path(path).expanduser()
            bundled = f"encoder-{key}" + "".join(source.suffixes[-2:])
            shutil.copy2(source, dest / bundled)
            config["encoder"][key] = bundled
    preset = hub.preset_of(encoder.name) if hub.is_hub(encoder.name) else ""
    if hub.is_local(preset) and encoder.model is None:  # the preset directory travels too
        shutil.copytree(Path(preset), dest / "encoder-preset", dirs_exist_ok=True)
        config["encoder"]["name"] = hub.PREFIX + "./encoder-preset"
    if any(files.values()) or config["encoder"]["name"] != encoder.name:
        model_files.write_json(dest / model_files.CONFIG, config)
    return dest


def log_captioner(tracking_uri: str, run_id: str, model_dir: Path, step: int) -> str:
    """Log `model_dir` as the pyfunc model of run `run_id`; returns the logged model's id.

    `step` is the epoch of the kept model: MLflow links that epoch's metrics to the model.
    """
    config = read_model_config(model_dir)
    # The logged model belongs to its run's experiment (the sweep's), so that the experiment's
    # Models tab lists it: MLflow would put a model logged without an active run in Default.
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    with using(tracking_uri, experiment_id), \
            tempfile.TemporaryDirectory(prefix="captioning-model-") as tmp:
        packaged = package(model_dir, Path(tmp) / ARTIFACT)
        bundled = model_files.read_config(packaged)
        # Model.log, not the fluent log_model: it takes the run, so no active run is needed
        # (nor disturbed, if the caller has one). With the input example, MLflow loads the
        # model once and runs it on the example before it uploads: a model that cannot
        # caption is reported in the log here, not when it is served.
        info = mlflow.models.Model.log(
            artifact_path=None, name=LOGGED_NAME, flavor=mlflow.pyfunc, run_id=run_id,
            flavor_name="pyfunc.ModelFromCode", python_model=str(CODE),
            artifacts={ARTIFACT: str(packaged)},
            signature=signature(config.decode.beam_width), input_example=input_example(),
            pip_requirements=requirements(), step=step,
            metadata={"captioning.encoder": config.encoder.name,
                      "captioning.encoder_weights": bundled["encoder"]["weights"],
                      "captioning.image_size": input_size(config.encoder),
                      "captioning.max_length": config.decode.max_length})
    return info.model_id
