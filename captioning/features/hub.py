"""KerasHub vision backbones as encoders: `encoder.name: hub:<preset>`, the one seam to
keras-hub (imported only when such an encoder is used; it costs seconds).

A preset is a KerasHub preset name (`hub:clip_vit_base_patch16`, downloaded into Keras' cache
as keras.applications weights are) or a local preset directory (`hub:/models/dinov2_base`, as
`save_to_preset` writes it: config.json, model.weights.h5, image_converter.json), which needs
no network. The backbone's patch tokens become the feature map the attention and Transformer
decoders read (CLIP B/16 at 224 px: 14 x 14 x 768), its leading class and register tokens
dropped. The merge decoder reads the backbone's own pooled output where it has one (CLIP's
class token, the input of its projection; SigLIP's attention pool, its map then the tokens
before that pool), else the tokens' mean, as it reads a CNN map's: such an encoder has two
outputs, (map, pooled vector). A backbone that gives a map itself (KerasHub's CNNs) is used as
it is. Pixels are scaled by the preset's own image converter, at the preset's own image size.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioning.config.encoder import PREFIX, is_hub, is_local, preset_of
from captioning.errors import ConfigError, first_line
from captioning.jsonfile import read_json

# What a hub encoder's cached features are, bumped when that changes: 2, CLIP's and SigLIP's
# pooled vector is their own (it was the tokens' mean).
FEATURES_VERSION = 2


def label(name: str) -> str:
    """A short name for files and trial names: `hub:/models/dinov2_base` -> `hub-dinov2_base`."""
    if not is_hub(name):
        return name
    preset = preset_of(name).rstrip("/")
    return "hub-" + re.sub(r"[^\w.-]+", "_", Path(preset).name if is_local(preset) else preset)


def identity(name: str) -> object:
    """What the features of a hub encoder depend on: a local preset by the content of its
    files (a copy elsewhere still finds its features), a named one by its name."""
    preset = preset_of(name)
    if not is_local(preset):
        return {"preset": preset, "features": FEATURES_VERSION}
    digest = hashlib.sha256()
    root = Path(preset).expanduser()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return {"preset_sha256": digest.hexdigest(), "features": FEATURES_VERSION}


def _keras_hub() -> Any:
    try:
        import keras_hub
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise ConfigError(f"encoder.name: hub: needs keras-hub ({first_line(error)}); "
                          "pip install keras-hub") from None
    return keras_hub


def _from_preset(load: Callable[[], Any], preset: str, what: str) -> Any:
    try:
        return load()
    except Exception as error:  # noqa: BLE001 - KerasHub raises many types for a bad preset
        raise ConfigError(f"encoder.name: hub:{preset}: its {what} cannot be loaded "
                          f"({first_line(error, 240)})") from None


def check_known(preset: str) -> None:
    """Refuse a preset name KerasHub does not list, before anything is downloaded."""
    if is_local(preset):
        return
    known = _keras_hub().models.Backbone.presets
    if preset not in known:
        vision = [name for name in sorted(known) if name.startswith(VISION_FAMILIES)]
        raise ConfigError(f"encoder.name: hub:{preset}: no such KerasHub preset; vision "
                          f"backbones include {', '.join(vision[:12])}, ... (or give a preset "
                          "directory: hub:/path/to/preset)")


VISION_FAMILIES = ("clip_vit_base", "dinov2_", "siglip_base", "siglip2_base", "vit_base")


@functools.cache
def image_converter(preset: str) -> Any:
    """The preset's ImageConverter (resizing and pixel scaling)."""
    import keras

    keras_hub = _keras_hub()
    if not is_local(preset):
        check_known(preset)
        return _from_preset(lambda: keras_hub.layers.ImageConverter.from_preset(preset),
                            preset, "image converter")
    path = Path(preset).expanduser() / "image_converter.json"
    if not path.is_file():
        raise ConfigError(f"encoder.name: hub:{preset}: the preset has no image converter "
                          "(image_converter.json), so how its pixels are scaled is unknown; "
                          "save one with converter.save_to_preset")
    # Read as the file says, whatever backbone class it was saved beside (KerasHub's own
    # from_preset matches a converter to the backbone's class, which a vision tower saved
    # alone has none of). Keras' deserialisation builds registered classes only.
    config = read_json(path, ConfigError, max_bytes=1 << 20)
    return _from_preset(lambda: keras.saving.deserialize_keras_object(config), preset,
                        "image converter")


def image_size(preset: str) -> int:
    """The side of the square images the preset's backbone reads."""
    size = image_converter(preset).image_size
    if not size or size[0] != size[1]:
        raise ConfigError(f"encoder.name: hub:{preset}: its image converter gives "
                          f"{size} images; a square size is needed")
    return int(size[0])


def preprocess(preset: str) -> Callable[[Any], Any]:
    """uint8-valued float32 pixels (already at `image_size`) -> the backbone's input."""
    import keras

    converter = image_converter(preset)
    return lambda pixels: keras.ops.convert_to_numpy(converter(pixels))


def build(preset: str, random_weights: bool, size: int, seed: int) -> Any:
    """A Keras model from (batch, size, size, 3) preprocessed images to the backbone's patch
    tokens as a (batch, h, w, channels) map, and for CLIP and SigLIP towers their own pooled
    (batch, channels) vector as a second output: the vision tower of a CLIP or SigLIP
    backbone, any other backbone itself. `random_weights`: the preset's architecture, seeded."""
    import keras

    keras_hub = _keras_hub()
    if random_weights:
        keras.utils.set_random_seed(seed)
    backbone = _from_preset(lambda: keras_hub.models.Backbone.from_preset(
        preset, load_weights=not random_weights), preset, "backbone")
    tower = getattr(backbone, "vision_encoder", None) or backbone
    tower, pooling = _with_pooled(tower, keras_hub)
    images = keras.Input((size, size, 3), name="images")
    feed = {next(iter(tower.input)): images} if isinstance(tower.input, dict) else images
    try:
        outputs = tower(feed)
    except Exception as error:  # noqa: BLE001 - a backbone built for another size or input
        raise ConfigError(f"encoder.name: hub:{preset}: {type(tower).__name__} cannot read "
                          f"{size}x{size} images ({first_line(error, 240)})") from None
    vector = None
    if pooling == "attention pool":
        outputs, vector = outputs
    if isinstance(outputs, dict):
        outputs = next((value for key, value in outputs.items() if "sequence" in key
                        or "hidden" in key), next(iter(outputs.values())))
    if pooling == "class token":
        vector = outputs[:, 0, :]
    if len(outputs.shape) == 3:
        outputs = _token_map(outputs, preset)
    elif len(outputs.shape) != 4:
        raise ConfigError(f"encoder.name: hub:{preset}: {type(tower).__name__} gives "
                          f"outputs of shape {tuple(outputs.shape)}, neither tokens nor a map")
    name = label(PREFIX + preset).replace("-", "_")
    if vector is not None:
        return keras.Model(images, [outputs, vector], name=name)
    return keras.Model(images, outputs, name=name)


def _with_pooled(tower: Any, keras_hub: Any) -> tuple[Any, str | None]:
    """The tower, and how its own pooled vector is had: a SigLIP tower, whose output is its
    attention pool, becomes (tokens before the pool, the pool) ("attention pool"); a CLIP tower
    gives its tokens, of which the first, the class token, is the pooled vector ("class
    token"); any other tower is itself, pooled by the mean of its map (None)."""
    import keras

    if isinstance(tower, keras_hub.models.SigLIPVisionEncoder):
        tokens = tower.post_layer_norm.output  # the input of its pool, tower.head
        return keras.Model(tower.input, [tokens, tower.output]), "attention pool"
    if isinstance(tower, keras_hub.models.CLIPVisionEncoder):
        return tower, "class token"
    return tower, None


def _token_map(tokens: Any, preset: str) -> Any:
    """(batch, extra + side**2, channels) tokens -> (batch, side, side, channels) of the patch
    tokens: the leading class and register tokens (fewer than 2 * side + 1) dropped."""
    import keras

    count, channels = int(tokens.shape[1]), int(tokens.shape[2])
    side = math.isqrt(count)
    if side < 1:
        raise ConfigError(f"encoder.name: hub:{preset}: the backbone gives no patch tokens")
    # The last side**2 tokens, counted from the end: SigLIP's embedding claims one token more
    # (a class token it does not have) in its symbolic shape than it gives when run.
    patches = tokens[:, -side * side:, :]
    return keras.layers.Reshape((side, side, channels), name="token_map")(patches)

