"""KerasHub backbones as encoders (`encoder.name: hub:<preset>`): the patch tokens are the
feature map, the preset's own converter scales the pixels, a local preset directory needs no
network and its features are cached by its content; CLIP and SigLIP give the merge decoder
their own pooled vector. Tiny backbones with random weights, saved with save_to_preset into a
temp dir, stand in for CLIP, SigLIP, DINOv2 and ViT."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from captioning.config.encoder import EncoderConfig
from captioning.config.schema import parse_config
from captioning.data.images import load_image
from captioning.errors import ConfigError
from captioning.features import hub
from captioning.features.cache import cache_key, load_or_extract
from captioning.features.encoders import build_encoder, input_size, preprocessing
from captioning.features.extract import encode_images, map_shape

SIZE, PATCH, WIDTH = 32, 8, 16  # a 4 x 4 grid of 16-d tokens
KINDS = ["vit", "clip", "siglip", "dinov2"]


def tiny_preset(path: Path, kind: str = "vit", seed: int = 0, converter: bool = True) -> Path:
    """A 2-layer backbone of `kind` at 32 px with random weights (drawn from `seed`) and its
    image converter, written as a KerasHub preset directory at `path`."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    common = {"patch_size": PATCH, "num_layers": 2, "num_heads": 2, "hidden_dim": WIDTH,
              "image_shape": (SIZE, SIZE, 3)}
    if kind == "vit":  # a class token
        backbone = keras_hub.models.ViTBackbone(mlp_dim=32, **common)
        scaling = keras_hub.layers.ViTImageConverter
    elif kind == "clip":  # CLIP's vision tower: a class token, images given as a dict
        backbone = keras_hub.models.CLIPVisionEncoder(intermediate_dim=32, **common)
        scaling = keras_hub.layers.CLIPImageConverter
    elif kind == "siglip":  # no class token; its output is an attention pool of the tokens
        backbone = keras_hub.models.SigLIPVisionEncoder(intermediate_dim=32, **common)
        scaling = keras_hub.layers.SigLIPImageConverter
    else:  # DINOv2 with two register tokens beside its class token
        backbone = keras_hub.models.DINOV2Backbone(
            intermediate_dim=32, num_register_tokens=2, position_embedding_shape=(SIZE, SIZE, 3),
            **common)
        scaling = keras_hub.layers.DINOV2ImageConverter
    backbone.save_to_preset(str(path))
    if converter:
        scaling(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1).save_to_preset(str(path))
    return path


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    return {kind: tiny_preset(root / kind, kind) for kind in KINDS}


def hub_config(preset: Path, **keys) -> EncoderConfig:
    return EncoderConfig(name=f"hub:{preset}", **keys)


def tokens_and_pool(preset: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The preset's backbone run by KerasHub itself: its tokens, and its attention pool where
    its output is one (SigLIP's, whose tokens are the input of its last layer, the pool)."""
    import keras
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    feed = {"images": pixels} if isinstance(backbone.input, dict) else pixels
    if not isinstance(backbone, keras_hub.models.SigLIPVisionEncoder):
        return np.asarray(backbone.predict_on_batch(feed)), None
    norm, head = backbone.layers[-2:]  # ... -> post_layer_norm -> head (the pool)
    assert isinstance(norm, keras.layers.LayerNormalization) and head.output is backbone.output
    tokens = keras.Model(backbone.input, norm.output)
    return np.asarray(tokens.predict_on_batch(feed)), np.asarray(backbone.predict_on_batch(feed))


@pytest.mark.parametrize("kind", KINDS)
def test_the_patch_tokens_are_the_feature_map_and_leading_tokens_are_dropped(presets, kind):
    config = hub_config(presets[kind])
    encoder = build_encoder(config)
    assert input_size(config) == SIZE
    assert map_shape(encoder) == (SIZE // PATCH, SIZE // PATCH, WIDTH)
    pixels = preprocessing(config)(
        np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32"))
    tokens, _ = tokens_and_pool(presets[kind], pixels)
    leading = {"vit": 1, "clip": 1, "siglip": 0, "dinov2": 3}[kind]  # class, register tokens
    assert tokens.shape[1] == leading + 16
    outputs = encoder.predict_on_batch(pixels)
    grid = outputs[0] if kind in ("clip", "siglip") else outputs
    np.testing.assert_allclose(np.asarray(grid), tokens[:, leading:].reshape(2, 4, 4, WIDTH),
                               atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_the_merge_vector_is_the_backbones_own_pooled_output_else_the_tokens_mean(
        presets, kind, sample_root):
    config = hub_config(presets[kind])
    images = sorted((sample_root / "Images").glob("*.jpg"))[:3]
    vectors, kept, errors = encode_images(build_encoder(config), config, images)
    assert kept == [0, 1, 2] and not errors and vectors.shape == (3, WIDTH)
    maps, _, _ = encode_images(build_encoder(config), config, images, grid=True)
    pixels = preprocessing(config)(np.stack([load_image(image, SIZE) for image in images])
                                   .astype("float32"))
    tokens, pool = tokens_and_pool(presets[kind], pixels)
    own = {"clip": tokens[:, 0], "siglip": pool}.get(kind)  # CLIP's class token, SigLIP's pool
    np.testing.assert_allclose(vectors, maps.mean(1) if own is None else own, atol=1e-4)
    if own is not None:
        assert np.abs(vectors - maps.mean(1)).max() > 1e-3  # not the mean, which it differs from


def test_pixels_are_scaled_by_the_presets_own_image_converter(presets):
    pixels = np.full((1, SIZE, SIZE, 3), 255, "float32")
    np.testing.assert_allclose(preprocessing(hub_config(presets["vit"]))(pixels), 1.0)
    np.testing.assert_allclose(preprocessing(hub_config(presets["vit"]))(pixels * 0), -1.0)


def test_random_weights_are_the_presets_architecture_drawn_the_same_every_time(presets):
    pixels = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    random = [build_encoder(hub_config(presets["vit"], weights="none")).predict_on_batch(pixels)
              for _ in range(2)]
    own = build_encoder(hub_config(presets["vit"])).predict_on_batch(pixels)
    np.testing.assert_array_equal(random[0], random[1])
    assert np.abs(np.asarray(random[0]) - np.asarray(own)).max() > 1e-2


def test_features_are_cached_by_the_presets_content_not_its_path(presets, sample_root,
                                                                  tmp_path):
    names = sorted(path.name for path in (sample_root / "Images").glob("*.jpg"))[:6]
    config = hub_config(presets["vit"], cache_dir=tmp_path / "cache")
    first = load_or_extract(config, sample_root / "Images", names, progress=False, grid=True)
    again = load_or_extract(config, sample_root / "Images", names, progress=False, grid=True)
    assert first.extracted and not again.extracted
    assert first.array.shape == (6, WIDTH) and first.grid.shape == (6, 16, WIDTH)
    np.testing.assert_allclose(first.array, np.asarray(first.grid, "float32").mean(1),
                               atol=2e-3)  # the grid is float16
    assert first.path.name.startswith("hub-vit-")
    copy = shutil.copytree(presets["vit"], tmp_path / "elsewhere" / "vit")
    assert cache_key(hub_config(copy), sample_root, names) == \
        cache_key(config, sample_root, names)
    other = tiny_preset(tmp_path / "retrained", seed=5)
    assert cache_key(hub_config(other), sample_root, names) != \
        cache_key(config, sample_root, names)
    assert cache_key(hub_config(presets["vit"], weights="none"), sample_root, names) != \
        cache_key(config, sample_root, names)


def test_a_local_preset_is_made_absolute_and_named_shortly(presets, monkeypatch):
    monkeypatch.chdir(presets["vit"].parent)
    config = EncoderConfig(name="hub:./vit")
    assert config.name == f"hub:{presets['vit']}"
    assert hub.label(config.name) == "hub-vit"
    assert hub.label("hub:clip_vit_base_patch16") == "hub-clip_vit_base_patch16"
    assert EncoderConfig(name="hub:clip_vit_base_patch16").name == "hub:clip_vit_base_patch16"


@pytest.mark.parametrize(("keys", "message"), [
    ({"name": "hub:/no/such/preset"}, "encoder.name: .*/no/such/preset: no such preset "
                                      "directory"),
    ({"name": "hub:"}, "encoder.name: .*hub: names no preset"),
    ({"alpha": 0.5}, "encoder.alpha: a KerasHub preset .* sets its own width multiplier"),
    ({"preprocess": "tf"}, "encoder.preprocess: a KerasHub preset"),
])
def test_settings_a_preset_makes_for_itself_are_refused_naming_the_key(presets, keys, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"encoder": {"name": f"hub:{presets['vit']}", **keys}})


def test_a_weights_file_for_a_preset_is_refused_saying_what_to_give(presets, tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="encoder.weights: a KerasHub preset .* carries its "
                                          r"weights: imagenet \(the preset's own"):
        parse_config({"encoder": {"name": f"hub:{presets['vit']}", "weights": str(weights)}})


def test_a_folder_that_is_not_a_preset_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}: not a KerasHub preset directory "
                                          r"\(no config.json"):
        parse_config({"encoder": {"name": f"hub:{tmp_path}"}})


def test_a_preset_without_an_image_converter_is_one_line_naming_it(tmp_path):
    preset = tiny_preset(tmp_path / "bare", converter=False)
    with pytest.raises(ConfigError, match=f"hub:{preset}: the preset has no image converter"):
        build_encoder(hub_config(preset))


def test_a_preset_name_keras_hub_does_not_list_is_refused_before_any_download():
    with pytest.raises(ConfigError, match="hub:clip_vit_bsae_patch16: no such KerasHub preset; "
                                          "vision backbones include clip_vit_base_patch16, "):
        build_encoder(EncoderConfig(name="hub:clip_vit_bsae_patch16"))
