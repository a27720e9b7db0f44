"""Image encoders: every keras.applications CNN without its classifier, or a user's own model.

The registry is read from keras.applications itself: each constructor there is an encoder,
named in snake case (`MobileNetV3Large` -> `mobilenet_v3_large`), with the `preprocess_input`
of its own module, the width multiplier `alpha` where its constructor takes one, and the native
and smallest input sizes its constructor checks. Nothing is written down per model.

An encoder maps an RGB image to its last feature map; the pooled vector (its mean over
positions, i.e. global average pooling) is what the merge model reads, as the seed did with
InceptionV3 and ResNet50 (2048-d). `encoder.model` names a saved Keras model of one's own
instead (loaded in safe mode), with `encoder.preprocess` saying how its pixels are scaled.
`hub:<preset>` names a KerasHub vision backbone (features/hub.py).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.config.encoder import PREPROCESS_MODES, EncoderConfig
from captioning.errors import ConfigError, first_line
from captioning.features import hub

# Random ("none") weights are drawn from this seed, so every process builds the same encoder
# and cached features stay valid for every trial of a sweep, whatever its own seed.
RANDOM_WEIGHTS_SEED = 1234
_FAMILY_WORDS = {"MobileNet": "mobilenet", "EfficientNet": "efficientnet",
                 "InceptionResNet": "inception_resnet", "ResNet": "resnet",
                 "ConvNeXt": "convnext", "DenseNet": "densenet", "NASNet": "nasnet",
                 "Inception": "inception", "Xception": "xception", "VGG": "vgg"}


def snake_name(constructor: str) -> str:
    """keras.applications' `MobileNetV3Large` -> `mobilenet_v3_large`, `ResNet50V2` ->
    `resnet50_v2`, `EfficientNetV2S` -> `efficientnet_v2_s`, `InceptionResNetV2` ->
    `inception_resnet_v2`."""
    text = constructor
    for word, lower in _FAMILY_WORDS.items():
        text = text.replace(word, f"_{lower}_")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text).lower()
    text = re.sub(r"_+", "_", text).strip("_")
    return re.sub(r"(?<=[a-z])_(?=\d)", "", text)  # resnet_50 -> resnet50, not v_3


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    constructor: str  # attribute of keras.applications
    module: str  # the keras.applications submodule holding its preprocess_input
    has_alpha: bool  # takes a width multiplier

    def build_function(self) -> Callable[..., Any]:
        import keras

        return getattr(keras.applications, self.constructor)

    def preprocess(self) -> Callable[[Any], Any]:
        import keras

        return getattr(keras.applications, self.module).preprocess_input

    @property
    def image_size(self) -> int:
        return _sizes(self.constructor)[0]

    @property
    def min_size(self) -> int:
        return _sizes(self.constructor)[1]


@functools.cache
def encoders() -> dict[str, EncoderSpec]:
    """Every keras.applications constructor as an encoder, by snake-case name."""
    import keras

    specs = {}
    for attribute in sorted(dir(keras.applications)):
        constructor = getattr(keras.applications, attribute)
        if not attribute[0].isupper() or not callable(constructor):
            continue
        module = constructor.__module__.rsplit(".", 1)[-1]
        parameters = inspect.signature(constructor).parameters
        if not hasattr(getattr(keras.applications, module, None), "preprocess_input") or \
                "include_top" not in parameters:
            continue
        spec = EncoderSpec(snake_name(attribute), attribute, module, "alpha" in parameters)
        specs[spec.name] = spec
    return specs


@functools.cache
def _sizes(constructor: str) -> tuple[int, int]:
    """(native, smallest) input size, as the constructor itself checks them: its call to
    keras.applications' input-shape check is caught before any layer is built."""
    import keras
    from keras.src.applications import imagenet_utils

    class Seen(Exception):
        pass

    seen: dict[str, int] = {}
    check = imagenet_utils.obtain_input_shape

    def spy(input_shape: Any, default_size: int, min_size: int, *args: Any, **kwargs: Any):
        seen.update(default=default_size, min=min_size)
        raise Seen

    imagenet_utils.obtain_input_shape = spy
    try:
        getattr(keras.applications, constructor)(include_top=False, weights=None)
    except Seen:
        return seen["default"], seen["min"]
    except Exception:  # noqa: BLE001 - a constructor that checks differently: Keras' defaults
        pass
    finally:
        imagenet_utils.obtain_input_shape = check
    return 224, 32


def check_encoder(config: EncoderConfig, source: str | None = None) -> None:
    """What the config cannot know without Keras: that `name` is a keras.applications
    constructor, that it takes `alpha`, that `image_size` is not below its smallest input, and
    that a model of one's own names a built-in encoder's pixel scaling. Raises a one-line
    ConfigError naming the key; build_encoder calls it, and so does every command before it
    reads an image. `source` (an experiment or search-space file) begins the message."""
    try:
        _check_encoder(config)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}" if source else str(error)) from None


def _check_encoder(config: EncoderConfig) -> None:
    known = encoders()
    if config.model is not None:
        if config.preprocess not in PREPROCESS_MODES and config.preprocess not in known:
            raise ConfigError(f"encoder.preprocess: {config.preprocess!r}: with encoder.model, "
                              f"say how its pixels are scaled: one of "
                              f"{', '.join(PREPROCESS_MODES)} or a built-in encoder's name")
        return
    if hub.is_hub(config.name):
        return
    if config.name not in known:
        raise ConfigError(f"encoder.name: unknown encoder {config.name!r}; choose one of "
                          f"{', '.join(known)}")
    spec = known[config.name]
    if config.alpha is not None and not spec.has_alpha:
        takes = ", ".join(n for n, s in known.items() if s.has_alpha)
        raise ConfigError(f"encoder.alpha: {config.name} has no width multiplier; only "
                          f"{takes} take alpha")
    if config.image_size is not None and config.image_size < spec.min_size:
        raise ConfigError(f"encoder.image_size: {config.image_size} is below {config.name}'s "
                          f"smallest input, {spec.min_size}")


def spec_of(name: str) -> EncoderSpec:
    return encoders()[name]


def input_size(config: EncoderConfig) -> int:
    """The side of the square images the encoder of `config` reads."""
    if hub.is_hub(config.name) and config.model is None:
        return hub.image_size(hub.preset_of(config.name))
    if config.image_size is not None:
        return config.image_size
    if config.model is not None:
        return _model_size(str(config.model))
    return spec_of(config.name).image_size


@functools.cache
def _model_size(path: str) -> int:
    shape = _load_model(path).input_shape
    if shape[1] is None:
        raise ValueError(f"encoder.image_size: {path} takes images of any size; set one")
    return int(shape[1])


def _load_model(path: str) -> Any:
    import keras

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def preprocessing(config: EncoderConfig) -> Callable[[Any], Any]:
    """What turns uint8 RGB pixels into the encoder's input."""
    if config.model is None:
        if hub.is_hub(config.name):
            return hub.preprocess(hub.preset_of(config.name))
        return spec_of(config.name).preprocess()
    mode = config.preprocess or "none"
    if mode in encoders():
        return spec_of(mode).preprocess()
    if mode == "none":
        return lambda pixels: pixels
    from keras.applications import imagenet_utils

    return functools.partial(imagenet_utils.preprocess_input, mode=mode)


def weights_argument(weights: str) -> str | None:
    """Map encoder.weights ("imagenet", "none" or a file path) to keras.applications' argument."""
    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(f"encoder.weights: {weights} is not 'imagenet', 'none' or a weights file")
    return str(path)


def build_encoder(config: EncoderConfig) -> Any:
    """A Keras model from (batch, size, size, 3) preprocessed images to its last feature map
    (batch, h, w, channels), or (batch, dim) for a model of one's own that pools itself.

    ImageNet weights are downloaded once by Keras into ~/.keras/models on the machine that
    calls this (a failed download is a ConfigError saying what to give instead); "none"
    builds seeded random weights and needs no network. A weights file or
    alpha that does not fit the architecture is a ConfigError naming the file and what it
    expected, raised before any image is read.
    """
    import keras

    check_encoder(config)
    size = input_size(config)
    if config.model is not None:
        try:
            return _load_model(str(config.model))
        except Exception as error:  # Keras raises many types for foreign or unsafe files
            raise ConfigError(f"encoder.model: {config.model} cannot be loaded as a Keras "
                              f"model in safe mode ({first_line(error)})") from None
    if hub.is_hub(config.name):
        return hub.build(hub.preset_of(config.name), config.weights == "none", size,
                         RANDOM_WEIGHTS_SEED)
    spec = spec_of(config.name)
    argument = weights_argument(config.weights)
    if argument is None:
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    extra = {"alpha": config.alpha} if config.alpha is not None else {}
    try:
        return spec.build_function()(include_top=False, weights=argument,
                                     input_shape=(size, size, 3), **extra)
    except ValueError as error:
        alpha = f" alpha {config.alpha:g}" if config.alpha is not None else ""
        what = f"{config.name}{alpha} at {size}x{size}"
        if argument not in (None, "imagenet"):
            call = f", alpha={config.alpha:g}" if config.alpha is not None else ""
            raise ConfigError(
                f"encoder.weights: {config.weights} does not fit {what}: expected the weights "
                f"of keras.applications.{spec.constructor}(include_top=False{call}) "
                f"({first_line(error, 200)})") from None
        raise ConfigError(f"encoder: {what} cannot be built with weights "
                          f"{config.weights!r} ({first_line(error, 200)})") from None
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if argument != "imagenet" or not _download_failed(error):
            raise
        raise ConfigError(
            f"encoder.weights: imagenet: the ImageNet weights of keras.applications."
            f"{spec.constructor} could not be downloaded ({first_line(error, 240)}); without "
            "the network, give a local weights file (encoder.weights: /path/to.h5) or random "
            "weights (encoder.weights: none)") from None


def _download_failed(error: BaseException) -> bool:
    """Whether `error`, raised while keras.applications fetched weights, is the network's:
    keras.utils.get_file re-raises urllib's URLError as "URL fetch failure on <url>"."""
    import http.client
    import urllib.error

    seen: BaseException | None = error
    while seen is not None:
        if str(seen).startswith("URL fetch failure") or isinstance(
                seen, urllib.error.URLError | http.client.HTTPException | ConnectionError
                | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
