"""The encoder's settings (encoder: in an experiment), and the syntax of its names.

Keras-free, so that a config loads without building anything: what only keras.applications
knows (which constructors there are, which take `alpha`, their smallest inputs) is checked by
features/encoders.py's `check_encoder` before an image is read. `hub:<preset>` names a KerasHub
vision backbone (features/hub.py builds it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from captioning.config.section import KeyProblem, Section, at_most

PREFIX = "hub:"
# keras.applications.imagenet_utils' modes, for encoder.preprocess of a model of one's own.
PREPROCESS_MODES = ("tf", "torch", "caffe", "none")


def is_hub(name: str) -> bool:
    return name.startswith(PREFIX)


def preset_of(name: str) -> str:
    """`hub:<preset>` -> the preset name or directory."""
    return name[len(PREFIX):]


def is_local(preset: str) -> bool:
    """A preset given as a directory (a path), not a KerasHub preset name."""
    return "/" in preset or preset.startswith((".", "~"))


def check_preset(name: str) -> str:
    """The encoder name with a local preset directory made absolute (trials run in other
    folders); raises ValueError saying what is wrong with the directory."""
    preset = preset_of(name)
    if not preset:
        raise ValueError("hub: names no preset; give hub:<KerasHub preset> or "
                         "hub:<preset directory>")
    if not is_local(preset):
        return name
    path = Path(preset).expanduser()
    if not path.is_dir():
        raise ValueError(f"{preset}: no such preset directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"{preset}: not a KerasHub preset directory (no config.json; "
                         "save one with backbone.save_to_preset)")
    return PREFIX + str(path.resolve())


# encoder.weights that name weights rather than a file: downloaded by Keras, or seeded random.
NAMED_WEIGHTS = ("imagenet", "none")


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
        return check_preset(name) if is_hub(name) else name

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
        """What can be checked without Keras; features/encoders.py's check_encoder checks the
        rest against keras.applications (the name, alpha, the smallest input) before any image
        is read."""
        if self.model is not None:
            if self.preprocess is None:
                raise KeyProblem("preprocess", f"{self.preprocess!r}: with encoder.model, say "
                                f"how its pixels are scaled: one of {', '.join(PREPROCESS_MODES)}"
                                " or a built-in encoder's name")
            if self.weights_file is not None or self.alpha is not None:
                key = "alpha" if self.alpha is not None else "weights"
                raise KeyProblem(key, "a model of one's own (encoder.model) carries its own "
                                "weights and width")
            return self
        if is_hub(self.name):
            return self._fits_hub()
        if self.preprocess is not None:
            raise KeyProblem("preprocess", f"only for encoder.model; {self.name} uses its own "
                            "preprocess_input")
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


