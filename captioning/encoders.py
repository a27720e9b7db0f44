"""The registry of image encoders: keras.applications CNNs without their classifier.

Each encoder maps an RGB image to one vector (global average pooling of the last feature map),
as the seed did with InceptionV3 and ResNet50 (2048-d).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    application: str  # attribute of keras.applications
    module: str  # keras.applications submodule holding preprocess_input
    image_size: int  # native input size
    dim: int  # length of the pooled feature vector
    min_size: int = 32  # smallest input keras.applications accepts

    def preprocess(self) -> Callable[[Any], Any]:
        import keras

        return getattr(keras.applications, self.module).preprocess_input


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("inception_v3", "InceptionV3", "inception_v3", 299, 2048, min_size=75),
        EncoderSpec("resnet50", "ResNet50", "resnet50", 224, 2048),
        EncoderSpec("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224, 1280),
        EncoderSpec("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, 1280),
        EncoderSpec("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 768),
        EncoderSpec("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, 960),
    )
}

# Random ("none") weights are drawn from this seed, so every process builds the same encoder
# and cached features stay valid for every trial of a sweep, whatever its own seed.
RANDOM_WEIGHTS_SEED = 1234


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


def build_encoder(name: str, weights: str = "imagenet", image_size: int | None = None) -> Any:
    """A Keras model from (batch, size, size, 3) preprocessed images to (batch, dim) features.

    ImageNet weights are downloaded once by Keras into ~/.keras/models on the machine that
    calls this; "none" builds seeded random weights and needs no network.
    """
    import keras

    spec = ENCODERS[name]
    size = image_size or spec.image_size
    argument = weights_argument(weights)
    if argument is None:
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    application = getattr(keras.applications, spec.application)
    return application(
        include_top=False, weights=argument, input_shape=(size, size, 3), pooling="avg"
    )
