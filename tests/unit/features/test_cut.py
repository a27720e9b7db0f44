"""An encoder cut for fine-tuning (encoder.fine_tune.from_layer) and read early
(encoder.grid_layer): the head and the rebuilt tail together are the encoder, a cut is refused
where a skip connection crosses it, and each cut has features cached apart from the others."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from captioning.config.encoder import EncoderConfig
from captioning.errors import ConfigError
from captioning.features.cache import cache_key
from captioning.features.cut import build_head, build_tail

SIZE = 64  # mobilenet alpha 0.25 at 64 px: a 4x4x128 map at the last two blocks' cut


def mobilenet(**keys) -> EncoderConfig:
    return EncoderConfig(name="mobilenet", alpha=0.25, weights="none", image_size=SIZE, **keys)


def pixels(count: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (count, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("layer, cut_shape", [("conv_pad_12", (4, 4, 128)),
                                              ("conv_dw_13", (2, 2, 256))])
def test_the_head_then_the_rebuilt_tail_is_the_whole_encoder(layer, cut_shape):
    config = mobilenet(fine_tune={"from_layer": layer})
    head, tail = build_head(config), build_tail(config)
    assert head.output_shape[1:] == cut_shape
    whole = build_head(mobilenet())
    images = pixels()
    np.testing.assert_allclose(tail.predict(head.predict(images, verbose=0), verbose=0),
                               whole.predict(images, verbose=0), atol=1e-5)
    # Rebuilt, not shared: training the tail leaves the encoder as it was.
    assert not {id(v) for v in tail.weights} & {id(v) for v in whole.weights}
    frozen = [layer for layer in tail.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert frozen and not any(layer.trainable for layer in frozen)
    assert tail.trainable_weights  # the convolutions train


def test_a_grid_layer_gives_the_earlier_finer_map_and_the_tail_ends_there():
    head = build_head(mobilenet(grid_layer="conv_pw_11_relu"))
    assert head.output_shape[1:] == (4, 4, 128)  # 14x14x128 at 224 px
    tail = build_tail(mobilenet(grid_layer="conv_pw_11_relu",
                                fine_tune={"from_layer": "conv_dw_11"}))
    assert tail.output_shape[1:] == (4, 4, 128)


def test_an_unknown_layer_is_refused_with_the_valid_cuts_listed():
    with pytest.raises(ConfigError, match=r"encoder.fine_tune.from_layer: 'conv_dw_99' is no "
                                          r"layer.*valid cuts, last first: conv_pw_13_relu"):
        build_head(mobilenet(fine_tune={"from_layer": "conv_dw_99"}))
    with pytest.raises(ConfigError, match=r"encoder.grid_layer: 'nope' is no layer.*"
                                          r"conv_pw_13_relu"):
        build_head(mobilenet(grid_layer="nope"))
    with pytest.raises(ConfigError, match="comes after the feature map"):
        build_head(mobilenet(grid_layer="conv_pw_11_relu",
                             fine_tune={"from_layer": "conv_dw_13"}))


def residual_model(path: Path) -> Path:
    """A model of one's own with a skip connection over two convolutions."""
    image = keras.Input((16, 16, 3))
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(image)
    inner = keras.layers.Conv2D(4, 3, padding="same", name="inner_a")(stem)
    inner = keras.layers.Conv2D(4, 3, padding="same", name="inner_b")(inner)
    out = keras.layers.Add(name="add")([stem, inner])
    out = keras.layers.Conv2D(8, 1, name="top")(out)
    keras.Model(image, out).save(path)
    return path


def test_a_cut_inside_a_residual_block_is_refused_and_one_before_it_rebuilds_the_block(tmp_path):
    own = {"name": "own", "model": residual_model(tmp_path / "own.keras"), "preprocess": "none"}
    with pytest.raises(ConfigError, match=r"'inner_b' is not a place where the encoder can be "
                                          r"cut.*valid cuts, last first: top, inner_a, stem"):
        build_tail(EncoderConfig(**own, fine_tune={"from_layer": "inner_b"}))
    config = EncoderConfig(**own, fine_tune={"from_layer": "inner_a"})
    head, tail = build_head(config), build_tail(config)
    images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    whole = keras.saving.load_model(own["model"], safe_mode=True)
    np.testing.assert_allclose(tail.predict(head.predict(images, verbose=0), verbose=0),
                               whole.predict(images, verbose=0), atol=1e-5)


def test_every_cut_and_grid_layer_is_cached_apart_and_no_cut_is_the_frozen_entry(tmp_path):
    names = ["a.jpg"]
    keys = {cache_key(config, tmp_path, names) for config in (
        mobilenet(), mobilenet(fine_tune={"from_layer": "conv_dw_13"}),
        mobilenet(fine_tune={"from_layer": "conv_pad_12"}),
        mobilenet(grid_layer="conv_pw_11_relu"))}
    assert len(keys) == 4
    # A space's frozen choice (from_layer: null) is the frozen encoder, cache entry included;
    # the learning-rate scale trains the tail and does not change what is cached.
    assert mobilenet(fine_tune={"from_layer": None}) == mobilenet()
    assert cache_key(mobilenet(fine_tune={"from_layer": "conv_dw_13", "learning_rate_scale": 1.0}),
                     tmp_path, names) == cache_key(
        mobilenet(fine_tune={"from_layer": "conv_dw_13"}), tmp_path, names)


def test_a_hub_preset_cannot_be_cut():
    from captioning.config.schema import parse_config

    with pytest.raises(ConfigError, match=r"encoder.fine_tune: only for keras.applications"):
        parse_config({"encoder": {"name": "hub:clip_vit_base_patch16",
                                  "fine_tune": {"from_layer": "x"}}})


def test_a_sweep_refuses_a_cut_its_encoder_lacks_before_ray_but_not_one_its_when_rules_out(
        tmp_path):
    from captioning.config.schema import parse_config
    from captioning.tune.preflight import check_encoder_files
    from captioning.tune.search_space import load_search_space

    base = parse_config({"encoder": {"name": "mobilenet", "alpha": 0.25, "weights": "imagenet",
                                     "image_size": SIZE}})
    space = tmp_path / "space.yaml"
    space.write_text("encoder.name: {choice: [mobilenet, mobilenet_v2]}\n"
                     "encoder.fine_tune.from_layer:\n  choice: [null, conv_dw_13]\n"
                     "  when: {encoder.name: mobilenet}\n")
    encoders = load_search_space(space, base).encoders(base)
    assert {(e.name, e.fine_tune and e.fine_tune.from_layer) for e in encoders} == {
        ("mobilenet", None), ("mobilenet", "conv_dw_13"), ("mobilenet_v2", None)}
    check_encoder_files(encoders)  # every cut is there: no ImageNet download, no error
    bad = base.encoder.model_copy(update={"fine_tune": mobilenet(
        fine_tune={"from_layer": "conv_dw_99"}).fine_tune})
    with pytest.raises(ConfigError, match="encoder.fine_tune.from_layer: 'conv_dw_99'"):
        check_encoder_files([bad])
