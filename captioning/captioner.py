"""A trained model directory, loaded for captioning features or image files."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captioning.config import ConfigError, ExperimentConfig, read_config
from captioning.decode import generate
from captioning.encoders import ENCODERS, build_encoder
from captioning.errors import ModelDirError
from captioning.features import encode_images
from captioning.images import ImageError
from captioning.model import StepDecoder, load_keras_model
from captioning.text import Vocabulary

log = logging.getLogger(__name__)

MODEL_FILES = ("model.keras", "vocab.json", "config.json")


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
        try:
            config = read_config(model_dir / "config.json")
            vocab = Vocabulary.load(model_dir / "vocab.json")
        except (ConfigError, ValueError) as error:
            raise ModelDirError(f"{model_dir}: not a usable model directory ({error})") from None
        try:
            model = load_keras_model(model_dir / "model.keras")
        except Exception as error:  # Keras raises many types for foreign or broken files
            raise ModelDirError(f"{model_dir / 'model.keras'}: cannot load it as a captioning "
                                f"model ({type(error).__name__}: {error})") from None
        if model.output_shape[-1] != len(vocab):
            raise ModelDirError(f"{model_dir}: model predicts {model.output_shape[-1]} words "
                                f"but vocab.json has {len(vocab)}")
        return cls(model_dir, config, vocab, StepDecoder(model))

    def caption_features(self, features: np.ndarray, beam_width: int | None = None
                         ) -> list[str]:
        return generate(self.decoder, self.vocab, features,
                        beam_width=beam_width or self.config.decode.beam_width,
                        max_length=self.config.decode.max_length)

    def features_of(self, paths: list[Path]) -> tuple[np.ndarray, list[Path], list[ImageError]]:
        """Encoder features of readable images; unreadable ones come back as errors."""
        encoder_config = self.config.encoder
        if self._encoder is None:
            size = encoder_config.image_size or ENCODERS[encoder_config.name].image_size
            self._encoder = build_encoder(encoder_config.name, encoder_config.weights, size)
        features, kept, errors = encode_images(self._encoder, encoder_config, paths)
        return features.astype("float32"), [Path(paths[i]) for i in kept], errors

    def caption_files(self, paths: list[Path], beam_width: int | None = None
                      ) -> list[tuple[Path, str | ImageError]]:
        """(path, caption or the error that stopped it) for every path, in order."""
        features, good, errors = self.features_of(paths)
        captions = dict(zip(good, self.caption_features(features, beam_width), strict=True))
        failed = {error.path: error for error in errors}
        return [(Path(p), captions[Path(p)] if Path(p) in captions else failed[Path(p)])
                for p in paths]
