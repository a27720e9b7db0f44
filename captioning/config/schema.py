"""One typed config for an experiment: every key of an experiment file maps to one field here.

An unknown key or a bad value is a one-line `ConfigError` naming it, e.g.
``model.lstm_units: Input should be greater than 0``. Each decoder owns its settings section in
its own file (config/attention.py, config/transformer.py, beside config/encoder.py), and
ModelConfig composes them. Nothing here imports Keras: a config loads in a fraction of a second,
and what only Keras knows is checked by the layer that builds it (features/encoders.py's
check_encoder). Reading files, --set and path rules live in config/loading.py.
"""

from __future__ import annotations

import json
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

from captioning.config.attention import AttentionConfig
from captioning.config.encoder import EncoderConfig
from captioning.config.limits import (
    BEAM_WHY,
    MAX_BEAM_WIDTH,
    MAX_TOKENS,
    TOKENS_WHY,
)
from captioning.config.metrics import Mode, RankingMetric, mode_of
from captioning.config.section import KeyProblem, Section, at_most
from captioning.config.sweep import SweepConfig
from captioning.config.transformer import TransformerConfig
from captioning.errors import ConfigError


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


# model.decoder's names, each a file in captioning/models/ (models/registry.py maps them to the
# code; a test keeps the two tables' names equal), and whether it reads the feature map
# (batch, positions, channels) rather than the pooled vector: what a config must know (which
# features to cache) without building a model.
READS_GRID = {"merge": False, "attention": True, "transformer": True}


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
        if name not in READS_GRID:
            raise ValueError(f"unknown decoder {name!r}; choose one of {', '.join(READS_GRID)}")
        return name

    @property
    def grid(self) -> bool:
        """Whether the decoder reads the feature map rather than the pooled vector."""
        return READS_GRID[self.decoder]


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
