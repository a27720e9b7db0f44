"""One typed config for an experiment: every key of an experiment file maps to one field here.

An unknown key or a bad value is a one-line `ConfigError` naming it, e.g.
``model.lstm_units: Input should be greater than 0``. Each decoder owns its settings section in
its own file (models/attention.py, models/transformer.py); ModelConfig composes them. Reading
files, --set and path rules live in config/loading.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from captioning.config.limits import (
    BEAM_WHY,
    MAX_BEAM_WIDTH,
    MAX_TOKENS,
    TOKENS_WHY,
)
from captioning.config.section import KeyProblem, Section, at_most
from captioning.config.sweep import SweepConfig
from captioning.errors import ConfigError
from captioning.evaluation.metrics import Mode, RankingMetric, mode_of
from captioning.features import hub
from captioning.features.encoders import PREPROCESS_MODES, encoders
from captioning.models.attention import AttentionConfig
from captioning.models.registry import DECODERS, decoder_named
from captioning.models.transformer import TransformerConfig

# encoder.weights that name weights rather than a file: downloaded by Keras, or seeded random.
NAMED_WEIGHTS = ("imagenet", "none")


class DataConfig(Section):
    root: Path = Path("data/sample")
    format: Literal["auto", "kaggle", "token", "karpathy"] = "auto"
    # The seed dropped one-letter words ("a"); keeping them makes BLEU comparable with papers.
    keep_one_letter_words: bool = False
    # The seed kept words seen more than once: 2232 words on Flickr8k.
    min_word_count: Annotated[StrictInt, Field(ge=1),
                              at_most(1_000_000, "no word is that frequent in a captions file")] = 2
    split_seed: StrictInt = 0
    # Drawn by `captioning sample-data` when data.root does not exist (0 = never draw).
    sample_images: Annotated[StrictInt, Field(ge=0),
                             at_most(100_000, "images to draw (100,000 is about 1 GB)")] = 0


class FineTuneConfig(Section):
    """encoder.fine_tune: train the encoder's layers from `from_layer` on with the decoder.
    Features are cached at the cut (that layer's input), once per encoder and cut; the layers
    after it become the first layers of the trained model (features/cut.py)."""

    # The first trained layer, by its Keras name: for mobilenet, conv_pad_12 trains the last
    # two blocks, conv_dw_13 the last one. A wrong name is refused with the valid cuts listed;
    # null (or unset) is no fine-tuning (a search space's frozen choice).
    from_layer: str
    # The encoder layers' learning rate over the decoder's (train.learning_rate).
    learning_rate_scale: StrictFloat = Field(0.1, gt=0.0, le=10.0)


class EncoderConfig(Section):
    # A keras.applications CNN in snake case (features/encoders.py): inception_v3, resnet50,
    # mobilenet, efficientnet_b0, ...; or hub:<KerasHub preset or preset directory>, a vision
    # backbone (features/hub.py): hub:clip_vit_base_patch16, hub:/models/dinov2_base. With
    # `model` set, only a label for it.
    name: str = "inception_v3"
    # "imagenet" (downloaded and cached by Keras), "none" (random, offline) or a weights file.
    weights: str = "imagenet"
    # The width multiplier of the families that have one (mobilenet, mobilenet_v2,
    # mobilenet_v3_*); None = the constructor's default (1.0).
    alpha: Annotated[StrictFloat | None, Field(gt=0),
                     at_most(4.0, "keras.applications publishes widths up to 1.4")] = None
    # A saved Keras model of one's own (.keras, loaded in safe mode) from images to a feature
    # map or vector, instead of a keras.applications CNN; `preprocess` says how it wants its
    # pixels: tf ([-1, 1]), torch or caffe (keras.applications.imagenet_utils), none (0..255,
    # for a model that rescales itself), or a built-in encoder's name (its preprocess_input).
    model: Path | None = None
    preprocess: str | None = None
    # None = the encoder's native input size (299 for inception_v3, 224 for resnet50), or the
    # input size of `model`. A KerasHub preset always reads its own size (its patch grid and
    # position embeddings are fixed), so a sweep over CNNs and presets may set this for the CNNs.
    image_size: Annotated[StrictInt | None, Field(ge=32),
                          at_most(1024, "encoders are trained at 224-600 px")] = None
    batch_size: Annotated[StrictInt, Field(ge=1),
                          at_most(1024, "images decoded and held at once")] = 32
    # None = $CAPTIONING_CACHE_DIR or ~/.cache/captioning.
    cache_dir: Path | None = None
    cache_dtype: Literal["float32", "float16"] = "float32"  # of the pooled vectors
    # Of the feature maps a grid decoder reads (cached only when one may): float16 halves a
    # cache that is positions times larger (Flickr30k's ResNet50 maps: 6.4 GB in float16).
    grid_dtype: Literal["float16", "float32"] = "float16"
    # Cache the feature maps as well (a sweep sets it when its space has a grid decoder, so
    # that every trial reads one extraction).
    keep_grid: bool = False
    decode_workers: Annotated[StrictInt, Field(ge=1), at_most(256, "threads decoding images")] = 4
    # The layer whose output is the feature map (None = the encoder's last), e.g. mobilenet's
    # conv_pw_11_relu: its 14x14 map before the last stride-2 block instead of the final 7x7.
    grid_layer: str | None = None
    fine_tune: FineTuneConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _frozen_without_a_cut(cls, data: Any) -> Any:
        """fine_tune without a from_layer (null, or unset) is no fine-tuning: what a space's
        `choice: [null, ...]` over that key draws for its frozen trials, which may still draw
        a learning_rate_scale."""
        fine_tune = data.get("fine_tune") if isinstance(data, dict) else None
        if isinstance(fine_tune, dict) and fine_tune.get("from_layer") is None:
            return {**data, "fine_tune": None}
        return data

    @field_validator("name")
    @classmethod
    def _hub_preset(cls, name: str) -> str:
        return hub.check_preset(name) if hub.is_hub(name) else name

    @field_validator("weights")
    @classmethod
    def _usable_weights(cls, weights: str) -> str:
        if weights in NAMED_WEIGHTS:
            return weights
        if not Path(weights).expanduser().is_file():
            raise ValueError(f"{weights} is not 'imagenet', 'none' or an existing weights file")
        return str(Path(weights).expanduser().resolve())  # trials run in other folders

    @field_validator("model")
    @classmethod
    def _existing_model(cls, model: Path | None) -> Path | None:
        if model is None:
            return None
        if not Path(model).expanduser().is_file():
            raise ValueError(f"{model} is not a file (a saved Keras model, .keras)")
        return Path(model).expanduser().resolve()

    @model_validator(mode="after")
    def _fits(self) -> EncoderConfig:
        known = encoders()
        if self.model is not None:
            if self.preprocess is None or (self.preprocess not in PREPROCESS_MODES
                                           and self.preprocess not in known):
                raise KeyProblem("preprocess", f"{self.preprocess!r}: with encoder.model, say "
                                f"how its pixels are scaled: one of {', '.join(PREPROCESS_MODES)}"
                                " or a built-in encoder's name")
            if self.weights_file is not None or self.alpha is not None:
                key = "alpha" if self.alpha is not None else "weights"
                raise KeyProblem(key, "a model of one's own (encoder.model) carries its own "
                                "weights and width")
            return self
        if hub.is_hub(self.name):
            return self._fits_hub()
        if self.name not in known:
            raise KeyProblem("name", f"unknown encoder {self.name!r}; choose one of "
                            f"{', '.join(known)}")
        if self.preprocess is not None:
            raise KeyProblem("preprocess", f"only for encoder.model; {self.name} uses its own "
                            "preprocess_input")
        spec = known[self.name]
        if self.alpha is not None and not spec.has_alpha:
            takes = ", ".join(n for n, s in known.items() if s.has_alpha)
            raise KeyProblem("alpha", f"{self.name} has no width multiplier; only {takes} "
                            "take alpha")
        if self.image_size is not None and self.image_size < spec.min_size:
            raise KeyProblem("image_size", f"{self.image_size} is below {self.name}'s smallest "
                            f"input, {spec.min_size}")
        return self

    def _fits_hub(self) -> EncoderConfig:
        for key in ("fine_tune", "grid_layer"):
            if getattr(self, key) is not None:
                raise KeyProblem(key, f"only for keras.applications encoders, not a KerasHub "
                                 f"preset ({self.name}); unset it")
        for key, why in (("alpha", "width multiplier"), ("preprocess", "pixel scaling")):
            if getattr(self, key) is not None:
                raise KeyProblem(key, f"a KerasHub preset ({self.name}) sets its own {why}; "
                                 "unset it")
        if self.weights_file is not None:
            raise KeyProblem("weights", f"a KerasHub preset ({self.name}) carries its weights: "
                             "imagenet (the preset's own, whatever it was trained on) or none "
                             "(random, seeded)")
        return self

    @property
    def weights_file(self) -> str | None:
        """The weights file `weights` names, or None for imagenet and none."""
        return None if self.weights in NAMED_WEIGHTS else self.weights

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        env = os.environ.get("CAPTIONING_CACHE_DIR")
        return Path(env) if env else Path.home() / ".cache" / "captioning"


class ModelConfig(Section):
    # merge (the seed's), attention or transformer: captioning/models/, one file each.
    decoder: str = "merge"
    # seed: 256 (merge and attention)
    lstm_units: Annotated[StrictInt, Field(ge=1),
                          at_most(8192, "an LSTM of 8192 units already has 270 M weights")] = 256
    # Ignored for spaCy embeddings, whose vectors fix the width (300 for en_core_web_md).
    embedding_dim: Annotated[StrictInt, Field(ge=1),
                             at_most(8192, "word vectors are 50-4096 wide")] = 256
    dropout: StrictFloat = Field(0.5, ge=0.0, lt=1.0)  # seed: 0.5 on both branches
    # Fine-tune the embedding matrix (a spaCy matrix stays fixed when false).
    train_embedding: bool = True
    attention: AttentionConfig = AttentionConfig()
    transformer: TransformerConfig = TransformerConfig()

    @field_validator("decoder")
    @classmethod
    def _known_decoder(cls, name: str) -> str:
        if name not in DECODERS:
            raise ValueError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
        return name

    @property
    def grid(self) -> bool:
        """Whether the decoder reads the feature map rather than the pooled vector."""
        return decoder_named(self.decoder).grid


class ScstConfig(Section):
    """Self-critical sequence training (train.scst): after the cross-entropy epochs, from the
    best of them, optimise the CIDEr-D of sampled captions (Rennie et al. 2017; Luo 2020).
    Its epochs continue the same history (training/scst.py)."""

    # 0 = off; each samples every training image once
    epochs: Annotated[StrictInt, Field(ge=0),
                      at_most(10_000, "of SCST")] = 0
    # Constant. ruotianluo/ImageCaptioning.pytorch: 5e-5 for LSTMs, 1e-5 for Transformers.
    learning_rate: StrictFloat = Field(5e-5, gt=0.0)
    samples: Annotated[StrictInt, Field(ge=1),
                       at_most(100, "captions sampled per image and step")] = 5  # K
    # mean: each sample's baseline is the mean reward of the image's other K-1 samples (Luo's
    # "new self-critical", the reference's default); greedy: the greedy caption's reward (Rennie).
    baseline: Literal["mean", "greedy"] = "mean"
    # Tokens of a sampled caption, startseq and endseq included: Flickr captions average 12.
    max_length: Annotated[StrictInt, Field(ge=3), at_most(MAX_TOKENS, TOKENS_WHY)] = 20

    @model_validator(mode="after")
    def _baseline_has_samples(self) -> ScstConfig:
        if self.baseline == "mean" and self.samples < 2:
            raise KeyProblem("samples", "the mean baseline needs at least 2 samples per image "
                                        "(it averages the others')")
        return self


class TrainConfig(Section):
    # seed: 50 (of cross-entropy; train.scst adds more)
    epochs: Annotated[StrictInt, Field(ge=1),
                      at_most(10_000, "of cross-entropy")] = 50
    # seed: 32 captions
    batch_size: Annotated[StrictInt, Field(ge=1),
                          at_most(65_536, "captions per step held at once")] = 32
    learning_rate: StrictFloat = Field(0.0012, gt=0.0)  # seed: 0.0012 with Adam
    # The learning rate over the cross-entropy epochs: constant (the seed's), or from 0 up to
    # learning_rate over `warmup`, then down to 0 at the last epoch along a cosine or a line.
    # Transformers are trained with warmup in every published captioning recipe.
    schedule: Literal["constant", "warmup_cosine", "warmup_linear"] = "constant"
    # Below 1: a fraction of all training steps; from 1: a number of steps.
    warmup: StrictFloat | StrictInt = Field(0.05, ge=0.0)
    # Of the cross-entropy over real tokens (0 = none); val_loss is then the smoothed loss.
    label_smoothing: StrictFloat = Field(0.0, ge=0.0, lt=1.0)
    # The largest global norm of a step's gradients (None = unclipped).
    clip_norm: StrictFloat | None = Field(None, gt=0.0)
    scst: ScstConfig = ScstConfig()
    seed: StrictInt = 0
    # Early stopping: epochs without improvement of `monitor` before training stops; the
    # epoch kept is the best by it. CIDEr-D, as sweeps rank trials (docs/quality.md: on real
    # photos val_loss bottoms out epochs before the captions stop improving).
    patience: Annotated[StrictInt, Field(ge=1), at_most(10_000, "epochs")] = 5
    monitor: RankingMetric = "val_cider"
    # Validation captions are decoded for BLEU/CIDEr/ROUGE on at most this many images: on a
    # few hundred, CIDEr-D moves by several hundredths from epoch to epoch by chance alone.
    score_images: Annotated[StrictInt, Field(ge=1),
                            at_most(1_000_000, "images decoded every epoch")] = 1000
    # tokens, startseq/endseq included
    max_caption_length: Annotated[StrictInt, Field(ge=3),
                                  at_most(MAX_TOKENS, TOKENS_WHY)] = 40
    # Keras' dtype policy: mixed ones compute in 16 bits and keep the weights, the logits and
    # the loss in float32 (mixed_float16 scales the loss so gradients do not underflow).
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # Train steps run per call into the compiled function (Keras' steps_per_execution).
    steps_per_execution: Annotated[StrictInt, Field(ge=1),
                                   at_most(10_000, "steps per compiled call")] = 1
    # The Keras backend that trains: auto = JAX on a CPU-only machine for 10 epochs or more,
    # else TensorFlow (captioning/training/backend.py says why). KERAS_BACKEND, if set, wins.
    backend: Literal["auto", "tensorflow", "jax"] = "auto"

    @model_validator(mode="after")
    def _whole_warmup(self) -> TrainConfig:
        if isinstance(self.warmup, float) and self.warmup >= 1.0 and not self.warmup.is_integer():
            raise KeyProblem("warmup", f"{self.warmup}: below 1 a fraction of the steps, "
                                       "from 1 a whole number of steps")
        return self

    @property
    def monitor_mode(self) -> Mode:
        return mode_of(self.monitor)

    @property
    def total_epochs(self) -> int:
        """Cross-entropy epochs and SCST epochs: the most a run reports."""
        return self.epochs + self.scst.epochs

    def warmup_steps(self, total_steps: int) -> int:
        """The warmup in steps, for a schedule of `total_steps`."""
        if self.warmup < 1:
            return int(round(self.warmup * total_steps))
        return min(int(self.warmup), total_steps)


class DecodeConfig(Section):
    beam_width: Annotated[StrictInt, Field(ge=1),
                          at_most(MAX_BEAM_WIDTH, BEAM_WHY)] = 1  # evaluate's, caption's --beam
    # Tokens of a generated caption, startseq and endseq included (as train.max_caption_length).
    max_length: Annotated[StrictInt, Field(ge=3), at_most(MAX_TOKENS, TOKENS_WHY)] = 40


class ExperimentConfig(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    name: str = "captioning"
    data: DataConfig = DataConfig()
    encoder: EncoderConfig = EncoderConfig()
    # "learned", or "spacy:<model name or path>" (the seed used spacy:en_core_web_md).
    embedding: str = "learned"
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()
    sweep: SweepConfig = SweepConfig()
    output_dir: Path = Path("runs")

    @field_validator("embedding")
    @classmethod
    def _known_embedding(cls, value: str) -> str:
        if value == "learned" or (value.startswith("spacy:") and len(value) > len("spacy:")):
            return value
        raise ValueError(f"expected 'learned' or 'spacy:<model name or path>', got {value!r}")

    @property
    def reads_grid(self) -> bool:
        """Whether the trained model reads each image's feature map (a grid decoder, or an
        encoder tail being fine-tuned, which reads the map at its cut), not the pooled vector."""
        return self.model.grid or self.encoder.fine_tune is not None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (paths as strings)."""
        return json.loads(self.model_dump_json())


def _error_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    loc = [*first["loc"], *([cause.key] if isinstance(cause, KeyProblem) else [])]
    key = ".".join(str(part) for part in loc) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    if first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {message}{suffix}"


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a nested mapping into an ExperimentConfig, or raise a one-line ConfigError."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_error_line(error, source)) from None
