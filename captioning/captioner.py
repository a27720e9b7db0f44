"""A trained model directory, loaded for captioning features or image files."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captioning.config import ExperimentConfig, read_config
from captioning.decode import generate
from captioning.encoders import ENCODERS, build_encoder
from captioning.images import ImageError, load_image
from captioning.model import StepDecoder, load_keras_model
from captioning.text import Vocabulary

log = logging.getLogger(__name__)

MODEL_FILES = ("model.keras", "vocab.json", "config.json")


class ModelDirError(ValueError):
    """A path that is not a usable captioning model directory."""


@dataclass
class Captioner:
    model_dir: Path
    config: ExperimentConfig
    vocab: Vocabulary
    decoder: StepDecoder
    _encoder: object = field(default=None, repr=False)

    @classmethod
    def load(cls, model_dir: Path | str) -> Captioner:
        """Read model.keras (safe mode), vocab.json and config.json from `model_dir`."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelDirError(f"{model_dir}: no such model directory")
        missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
        if missing:
            raise ModelDirError(f"{model_dir}: not a captioning model directory "
                                f"(missing {', '.join(missing)})")
        config = read_config(model_dir / "config.json")
        vocab = Vocabulary.load(model_dir / "vocab.json")
        try:
            model = load_keras_model(model_dir / "model.keras")
        except Exception as error:  # Keras raises many types for foreign or broken files
            raise ModelDirError(f"{model_dir / 'model.keras'}: cannot load it as a captioning "
                                f"model ({type(error).__name__}: {error})") from None
        if model.output_shape[-1] != len(vocab):
            raise ModelDirError(f"{model_dir}: model predicts {model.output_shape[-1]} words "
                                f"but vocab.json has {len(vocab)}")
        return cls(model_dir, config, vocab, StepDecoder(model))

    def caption_features(self, features: np.ndarray, beam_width: int = 1) -> list[str]:
        return generate(self.decoder, self.vocab, features, beam_width=beam_width,
                        max_length=self.config.decode.max_length)

    def features_of(self, paths: list[Path]) -> tuple[np.ndarray, list[Path], list[ImageError]]:
        """Encoder features of readable images; unreadable ones come back as errors."""
        spec = ENCODERS[self.config.encoder.name]
        size = self.config.encoder.image_size or spec.image_size
        if self._encoder is None:
            self._encoder = build_encoder(spec.name, self.config.encoder.weights, size)
        good, arrays, errors = [], [], []
        for path in paths:
            try:
                arrays.append(load_image(path, size))
                good.append(Path(path))
            except ImageError as error:
                errors.append(error)
        if not arrays:
            return np.zeros((0, spec.dim), "float32"), good, errors
        pixels = spec.preprocess()(np.stack(arrays).astype("float32"))
        features = np.asarray(self._encoder.predict_on_batch(pixels))
        return features, good, errors

    def caption_files(self, paths: list[Path], beam_width: int = 1
                      ) -> list[tuple[Path, str | ImageError]]:
        """(path, caption or the error that stopped it) for every path, in order."""
        features, good, errors = self.features_of(paths)
        captions = dict(zip(good, self.caption_features(features, beam_width), strict=True))
        failed = {error.path: error for error in errors}
        return [(Path(p), captions[Path(p)] if Path(p) in captions else failed[Path(p)])
                for p in paths]
