"""A decoder behind the encoder's tail (models/tuned.py): the tail learns at its scaled rate,
the model saves and loads in safe mode with the tail inside, and its stepper runs the tail
once per image and decodes exactly what the teacher-forced model predicts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning.config.encoder import EncoderConfig
from captioning.config.schema import ModelConfig, TrainConfig
from captioning.features.cut import build_head, build_tail
from captioning.models.build import (
    build_model,
    captioner_problem,
    compile_model,
    load_keras_model,
    step_decoder,
)
from captioning.models.tuned import TAIL, parts, tail_features, with_tail

VOCAB = 12
ENCODER = EncoderConfig(name="mobilenet", alpha=0.25, weights="none", image_size=64,
                        fine_tune={"from_layer": "conv_dw_13"})


@pytest.fixture(scope="module")
def maps() -> np.ndarray:
    """Cut maps of 4 images, of the head's shape, in ReLU6's range (a random-weight head's
    own maps all but vanish)."""
    shape = build_head(ENCODER).output_shape[1:]  # (2, 2, 256)
    rng = np.random.default_rng(0)
    return rng.uniform(0, 6, (4, shape[0] * shape[1], shape[2])).astype("float32")


def tuned(decoder: str, maps: np.ndarray) -> keras.Model:
    tail = build_tail(ENCODER)
    grid = decoder != "merge"
    features = tail_features(tail, maps, grid)
    flat = features.reshape(-1, features.shape[-1])
    config = ModelConfig(decoder=decoder, lstm_units=8, embedding_dim=8, dropout=0.0,
                         attention={"units": 8},
                         transformer={"layers": 1, "units": 8, "heads": 2, "ff_units": 16})
    core = build_model(config, VOCAB, flat.mean(0), flat.var(0) + 1e-3,
                       positions=features.shape[1] if grid else None, max_length=8)
    return with_tail(core, tail, grid)


def test_the_tail_learns_at_its_scaled_rate_and_the_decoder_at_the_full_one(maps):
    model = tuned("merge", maps)
    compile_model(model, TrainConfig(learning_rate=0.01, schedule="constant", clip_norm=None),
                  tail_scale=0.1)
    tail = model.get_layer(TAIL)
    kernels = {"tail": tail.get_layer("conv_pw_13").kernel,
               "decoder": parts(model)[1].get_layer("image_dense").kernel}
    before = {name: np.array(v) for name, v in kernels.items()}
    tokens = np.random.default_rng(1).integers(1, VOCAB, (4, 5))
    model.train_on_batch([maps, tokens[:, :-1]], tokens[:, 1:])
    # Adam's first step moves every weight with a gradient by about its learning rate.
    moved = {name: np.abs(np.array(v) - before[name]) for name, v in kernels.items()}
    assert np.median(moved["decoder"][moved["decoder"] > 0]) == pytest.approx(0.01, rel=0.05)
    assert np.median(moved["tail"][moved["tail"] > 0]) == pytest.approx(0.001, rel=0.05)


@pytest.mark.parametrize("decoder", ["merge", "attention", "transformer"])
def test_a_tuned_model_loads_in_safe_mode_and_steps_as_it_predicts(decoder, maps, tmp_path):
    model = tuned(decoder, maps)
    model.save(tmp_path / "model.keras")
    loaded = load_keras_model(tmp_path / "model.keras")
    assert captioner_problem(loaded, decoder) is None
    assert TAIL in [layer.name for layer in loaded.layers]
    tokens = np.random.default_rng(2).integers(1, VOCAB, (4, 3))
    forced = np.asarray(loaded.predict([maps, tokens], verbose=0))
    stepper = step_decoder(loaded)
    context, state = stepper.start(maps)
    for t in range(tokens.shape[1]):
        logits, state = stepper.step(context, tokens[:, t], state)
        np.testing.assert_allclose(logits, forced[:, t], atol=1e-4)
