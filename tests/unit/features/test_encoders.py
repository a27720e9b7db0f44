"""The encoder registry, read from keras.applications: every family by name, with its own
preprocessing, sizes and width multiplier; weights files checked against the architecture;
a Keras model of one's own. Weights files are made here (random weights saved by Keras)."""

from __future__ import annotations

import socket

import keras
import numpy as np
import pytest

from captioning.config.encoder import EncoderConfig
from captioning.config.schema import parse_config
from captioning.errors import ConfigError
from captioning.features.cache import load_or_extract
from captioning.features.encoders import (
    build_encoder,
    check_encoder,
    encoders,
    input_size,
    preprocessing,
    snake_name,
)
from conftest import run_cli, start_up_noise

FAMILIES = ["mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
            *[f"efficientnet_b{i}" for i in range(8)], "efficientnet_v2_b0", "efficientnet_v2_s",
            "efficientnet_v2_m", "efficientnet_v2_l", "convnext_tiny", "convnext_xlarge",
            "densenet121", "densenet201", "resnet50", "resnet101", "resnet152", "resnet50_v2",
            "resnet152_v2", "xception", "inception_v3", "inception_resnet_v2", "vgg16", "vgg19"]


def test_every_keras_applications_family_is_an_encoder_by_name():
    known = encoders()
    assert set(FAMILIES) <= set(known)
    assert len(known) == len({spec.constructor for spec in known.values()})


@pytest.mark.parametrize(("constructor", "name"), [
    ("MobileNet", "mobilenet"), ("MobileNetV3Large", "mobilenet_v3_large"),
    ("EfficientNetV2S", "efficientnet_v2_s"), ("EfficientNetB7", "efficientnet_b7"),
    ("ResNet50V2", "resnet50_v2"), ("InceptionResNetV2", "inception_resnet_v2"),
    ("ConvNeXtTiny", "convnext_tiny"), ("DenseNet121", "densenet121"), ("VGG16", "vgg16"),
    ("NASNetMobile", "nasnet_mobile"), ("Xception", "xception")])
def test_keras_names_become_snake_case(constructor, name):
    assert snake_name(constructor) == name


@pytest.mark.parametrize(("name", "native", "smallest"), [
    ("inception_v3", 299, 75), ("xception", 299, 71), ("resnet50", 224, 32),
    ("mobilenet", 224, 32), ("efficientnet_b7", 600, 32), ("efficientnet_v2_s", 384, 32),
    ("nasnet_large", 331, 32)])
def test_native_and_smallest_sizes_come_from_the_constructors_own_check(name, native, smallest):
    spec = encoders()[name]
    assert (spec.image_size, spec.min_size) == (native, smallest)


def test_each_family_preprocesses_with_its_own_modules_preprocess_input():
    pixels = np.full((1, 4, 4, 3), 255.0, "float32")
    assert preprocessing(EncoderConfig(name="mobilenet"))(pixels.copy()).max() == 1.0  # tf mode
    assert preprocessing(EncoderConfig(name="resnet50"))(pixels.copy()).max() < 160  # caffe
    assert encoders()["vgg19"].preprocess() is keras.applications.vgg19.preprocess_input


def test_unknown_encoder_names_it_and_lists_the_choices():
    with pytest.raises(ConfigError) as caught:
        check_encoder(parse_config({"encoder": {"name": "vgg99"}}).encoder)
    message = str(caught.value)
    assert "encoder.name:" in message
    assert "vgg99" in message
    for name in encoders():
        assert name in message


def test_an_encoder_below_its_smallest_input_is_refused_naming_the_size():
    config = parse_config({"encoder": {"name": "inception_v3", "image_size": 64}}).encoder
    with pytest.raises(ConfigError, match="encoder.image_size: 64 is below inception_v3's "
                                          "smallest input, 75"):
        check_encoder(config)


def test_alpha_is_taken_only_by_the_families_that_have_a_width_multiplier():
    assert {name for name, spec in encoders().items() if spec.has_alpha} == {
        "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"}
    assert parse_config({"encoder": {"name": "mobilenet", "alpha": 0.25}}).encoder.alpha == 0.25
    with pytest.raises(ConfigError) as caught:
        check_encoder(parse_config({"encoder": {"name": "resnet50", "alpha": 0.25}}).encoder,
                      source="config")
    assert str(caught.value).startswith("config: encoder.alpha: resnet50 has no width "
                                        "multiplier; only mobilenet")
    assert "\n" not in str(caught.value)


def test_mobilenet_alpha_quarter_makes_256_wide_features_at_224(tmp_path):
    config = EncoderConfig(name="mobilenet", alpha=0.25, weights="none")
    model = build_encoder(config)
    assert model.output_shape == (None, 7, 7, 256)
    assert input_size(config) == 224


def test_a_weights_file_for_another_alpha_or_family_stops_before_any_image(tmp_path):
    quarter = tmp_path / "mobilenet_2_5.weights.h5"
    build_encoder(EncoderConfig(name="mobilenet", alpha=0.25, weights="none")).save_weights(quarter)
    loaded = build_encoder(EncoderConfig(name="mobilenet", alpha=0.25, weights=str(quarter)))
    assert loaded.output_shape[-1] == 256
    for wrong in ({"name": "mobilenet", "alpha": 0.5}, {"name": "mobilenet_v2", "alpha": 0.35}):
        with pytest.raises(ConfigError) as caught:
            build_encoder(EncoderConfig(**wrong, weights=str(quarter)))
        message = str(caught.value)
        assert message.startswith(f"encoder.weights: {quarter} does not fit {wrong['name']}")
        assert "expected the weights of keras.applications." in message
        assert "\n" not in message


def test_a_keras_model_of_ones_own_is_an_encoder(tmp_path, sample_root):
    inputs = keras.Input((48, 48, 3))
    features = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(
        keras.layers.Rescaling(1 / 255)(inputs))
    path = tmp_path / "mine.keras"
    keras.Model(inputs, features).save(path)
    config = EncoderConfig(name="mine", model=str(path), preprocess="none",
                           cache_dir=tmp_path / "cache")
    assert input_size(config) == 48
    names = sorted(p.name for p in (sample_root / "Images").glob("*.jpg"))[:6]
    found = load_or_extract(config, sample_root / "Images", names, progress=False)
    assert found.array.shape == (6, 8) and found.extracted
    with pytest.raises(ConfigError, match="encoder.preprocess: None: with encoder.model"):
        parse_config({"encoder": {"name": "mine", "model": str(path)}})


def test_a_model_file_carrying_code_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((32, 32, 3))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)
    with pytest.raises(ConfigError, match="cannot be loaded as a Keras model in safe mode"):
        build_encoder(EncoderConfig(name="x", model=str(path), preprocess="tf",
                                    image_size=32))


@pytest.mark.slow
def test_imagenet_weights_that_cannot_be_downloaded_are_one_line_saying_what_to_give(
        tmp_path, sample_root):
    # No weights cached (an empty KERAS_HOME), and every download goes through a proxy on a
    # port that refuses connections: the fetch fails at once, network or not.
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        env = {"KERAS_HOME": str(tmp_path / "keras"), "CAPTIONING_CACHE_DIR": str(tmp_path),
               "NO_PROXY": "", "no_proxy": "",
               **{name: proxy for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                                           "http_proxy")}}
        result = run_cli("prepare", "--set", f"data.root={sample_root}",
                         "--set", "encoder.weights=imagenet", "--set", "encoder.image_size=75",
                         env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: encoder.weights: imagenet: the ImageNet weights of "
        "keras.applications.InceptionV3 could not be downloaded (URL fetch failure on https://")
    assert last.endswith("); without the network, give a local weights file "
                         "(encoder.weights: /path/to.h5) or random weights (encoder.weights: "
                         "none)")
    assert "Traceback" not in result.stderr
    assert start_up_noise(result) == []
