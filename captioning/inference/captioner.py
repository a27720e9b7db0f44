"""A trained model directory, loaded for captioning features, image files or image bytes."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captioning.config.schema import ExperimentConfig, parse_config
from captioning.data.images import ImageError, ImageSource
from captioning.data.vocabulary import Vocabulary
from captioning.errors import ConfigError, ModelDirError, first_line
from captioning.features import hub
from captioning.features.cut import build_head
from captioning.features.extract import encode_images
from captioning.models.build import captioner_problem, load_keras_model, step_decoder
from captioning.models.decoding import beam_search, generate
from captioning.models.protocol import Stepper
from captioning.models.registry import decoder_named
from captioning.training import model_files

log = logging.getLogger(__name__)

def check_model_files(model_dir: Path) -> None:
    """Raise ModelDirError naming the files a model directory lacks."""
    missing = model_files.missing_files(model_dir)
    if missing:
        raise ModelDirError(f"{model_dir}: not a captioning model directory "
                            f"(missing {', '.join(missing)})")


def read_model_config(model_dir: Path) -> ExperimentConfig:
    """config.json of a model directory; an encoder weights or model file named relative to
    the directory (as in a packaged model, see `tracking.pyfunc.package`) is resolved against
    it. A file that is not JSON (or too large, or too deep) is a ModelDirError, a config that
    is not valid a ConfigError."""
    data = model_files.read_config(model_dir)
    encoder = data.get("encoder") if isinstance(data, dict) else None
    for key in ("weights", "model"):
        value = encoder.get(key) if isinstance(encoder, dict) else None
        if isinstance(value, str) and not Path(value).is_absolute() \
                and (model_dir / value).is_file():
            data["encoder"][key] = str((model_dir / value).resolve())
    name = encoder.get("name") if isinstance(encoder, dict) else None
    if isinstance(name, str) and hub.is_hub(name):  # a preset directory packaged with it
        preset = hub.preset_of(name)
        if hub.is_local(preset) and not Path(preset).is_absolute() \
                and (model_dir / preset).is_dir():
            data["encoder"]["name"] = hub.PREFIX + str((model_dir / preset).resolve())
    return parse_config(data, source=str(model_dir / model_files.CONFIG))


@dataclass
class Captioner:
    model_dir: Path
    config: ExperimentConfig
    vocab: Vocabulary
    decoder: Stepper
    _encoder: object = field(default=None, repr=False)

    @classmethod
    def load(cls, model_dir: Path | str) -> Captioner:
        """Read model.keras (safe mode), vocab.json and config.json from `model_dir`."""
        model_dir = Path(model_dir)
        if model_dir.is_file():
            raise ModelDirError(f"{model_dir}: a file, not a model directory; give the folder "
                                f"that holds {', '.join(model_files.REQUIRED)}")
        if not model_dir.is_dir():
            raise ModelDirError(f"{model_dir}: no such model directory")
        check_model_files(model_dir)
        try:
            config = read_model_config(model_dir)
        except ConfigError as error:
            raise ModelDirError(f"{model_dir}: not a usable model directory ({error})") from None
        try:
            vocab = Vocabulary.load(model_dir / model_files.VOCAB)
        except ValueError as error:  # one line naming the file (captioning.jsonfile)
            raise ModelDirError(str(error)) from None
        path = model_dir / model_files.MODEL
        if not zipfile.is_zipfile(path):
            # Keras itself says "File not found" of a file that is there but is no zip.
            raise ModelDirError(f"{path}: truncated or corrupt: {path.stat().st_size} bytes "
                                "that are not a zip archive, as every .keras file is; copy or "
                                "train the model again")
        try:
            model = load_keras_model(path)
        except Exception as error:  # Keras raises many types for foreign or broken files
            reason = first_line(error)
            raise ModelDirError(f"{path}: cannot load it as a captioning model "
                                f"({type(error).__name__}: {reason})") from None
        problem = captioner_problem(model, config.model.decoder)
        if problem:
            raise ModelDirError(f"{path}: not a captioning model: {problem}")
        if model.output_shape[-1] != len(vocab):
            raise ModelDirError(f"{model_dir}: model predicts {model.output_shape[-1]} words "
                                f"but {model_files.VOCAB} has {len(vocab)}")
        try:
            decoder = step_decoder(model)
        except Exception as error:  # layers of our names but not of our kinds or shapes
            reason = first_line(error)
            raise ModelDirError(f"{path}: not a captioning model: its layers do not make a "
                                f"step decoder ({type(error).__name__}: {reason})") from None
        return cls(model_dir, config, vocab, decoder)

    def caption_features(self, features: np.ndarray, beam_width: int | None = None
                         ) -> list[str]:
        return generate(self.decoder, self.vocab, features,
                        beam_width=beam_width or self.config.decode.beam_width,
                        max_length=self.config.decode.max_length)

    @property
    def encoder(self) -> object:
        """The image encoder of config.json (its frozen head, when its tail was fine-tuned
        inside model.keras), built on first use (Keras fetches ImageNet weights here, once)."""
        if self._encoder is None:
            self._encoder = build_head(self.config.encoder)
        return self._encoder

    def caption_images(self, sources: list[ImageSource], beam_width: int | None = None,
                       labels: list[str] | None = None) -> list[str | ImageError]:
        """A caption, or the ImageError that stopped it, for each image file or encoded image
        (JPEG, PNG, ... bytes), in order."""
        features, kept, errors = encode_images(self.encoder, self.config.encoder, sources,
                                               labels=labels, grid=self.config.reads_grid)
        captions = self.caption_features(features.astype("float32"), beam_width) if kept else []
        results: list[str | ImageError] = [errors.get(i) for i in range(len(sources))]
        for position, caption in zip(kept, captions, strict=True):
            results[position] = caption
        return results

    def attend(self, source: ImageSource, beam_width: int | None = None,
               label: str | None = None) -> tuple[list[str], np.ndarray] | ImageError:
        """The caption of one image file (or its bytes) as words, with where the decoder
        looked for each: (words, maps (words, positions)); or the ImageError that stopped it,
        naming `label` if given."""
        features, kept, errors = encode_images(self.encoder, self.config.encoder, [source],
                                               labels=[label] if label else None, grid=True)
        if not kept:
            return errors[0]
        maps: list[np.ndarray] = []
        ids = beam_search(self.decoder, self.vocab, features.astype("float32"),
                          beam_width or self.config.decode.beam_width,
                          self.config.decode.max_length, attention=maps)
        return [self.vocab.tokens[i] for i in ids[0]], maps[0]

    @property
    def attends(self) -> bool:
        """Whether the decoder says where it looks for each word."""
        return decoder_named(self.config.model.decoder).attends

    def caption_files(self, paths: list[Path], beam_width: int | None = None
                      ) -> list[tuple[Path, str | ImageError]]:
        """(path, caption or the error that stopped it) for every path, in order."""
        return list(zip(map(Path, paths), self.caption_images(list(paths), beam_width),
                        strict=True))
