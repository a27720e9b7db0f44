"""Every decoder of the registry through the same contract, so a new decoder is tested by
adding it to models/registry.py: the config knows its name and what it reads, it builds from
its config section (the defaults), its model is recognised as its own and no other's, it saves
and loads in safe mode with identical outputs, and its stepper gives one row of logits per
image (and says where it looked exactly when the decoder attends)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import captioning.models
from captioning.config.schema import READS_GRID, ModelConfig
from captioning.models.build import build_model, captioner_problem, load_keras_model, step_decoder
from captioning.models.protocol import model_name
from captioning.models.registry import DECODERS, decoder_of

VOCAB, DIM, POSITIONS, BATCH = 40, 24, 5, 3


def features_for(name: str, rng: np.random.Generator) -> np.ndarray:
    shape = (BATCH, POSITIONS, DIM) if READS_GRID[name] else (BATCH, DIM)
    return rng.normal(size=shape).astype("float32")


@pytest.fixture(scope="module", params=sorted(DECODERS))
def built(request):
    name = request.param
    rng = np.random.default_rng(7)
    mean, var = rng.normal(size=DIM).astype("float32"), rng.uniform(0.5, 2, DIM).astype("float32")
    config = ModelConfig(decoder=name, lstm_units=16, embedding_dim=12)
    model = build_model(config, VOCAB, mean, var, positions=POSITIONS, max_length=12)
    tokens = rng.integers(4, VOCAB, size=(BATCH, 6)).astype("int32")
    return name, model, features_for(name, rng), tokens


def test_the_registry_and_the_config_name_the_same_decoders():
    assert set(DECODERS) == set(READS_GRID)
    for name, decoder in DECODERS.items():
        assert decoder.name == name
        assert decoder.grid == READS_GRID[name] == ModelConfig(decoder=name).grid


def test_every_decoder_file_is_in_the_registry():
    found = {}
    for module in pkgutil.iter_modules(captioning.models.__path__):
        loaded = importlib.import_module(f"captioning.models.{module.name}")
        for _, member in inspect.getmembers(loaded, inspect.isclass):
            if member.__module__ == loaded.__name__ and all(
                    hasattr(member, attr) for attr in ("name", "grid", "build", "stepper")):
                found[member.name] = member
    assert found == DECODERS


def test_its_model_is_recognised_as_its_own_and_no_others(built):
    name, model, _, _ = built
    assert model.name == model_name(name)
    assert decoder_of(model) is DECODERS[name]
    assert captioner_problem(model, name) is None
    for other in set(DECODERS) - {name}:
        assert captioner_problem(model, other) is not None


def test_it_saves_and_loads_in_safe_mode_with_identical_outputs(built, tmp_path):
    name, model, features, tokens = built
    model.save(tmp_path / "model.keras")
    loaded = load_keras_model(tmp_path / "model.keras")
    assert captioner_problem(loaded, name) is None
    np.testing.assert_allclose(loaded.predict_on_batch([features, tokens]),
                               model.predict_on_batch([features, tokens]), atol=1e-6)


def test_its_stepper_gives_a_row_of_logits_per_image_and_attention_if_it_attends(built):
    name, model, features, tokens = built
    stepper = step_decoder(model)
    context, state = stepper.start(features)
    logits, state = stepper.step(context, tokens[:, 0], state)
    assert np.asarray(logits).shape == (BATCH, VOCAB)
    assert np.isfinite(logits).all()
    if DECODERS[name].attends:
        assert np.asarray(stepper.attention).shape == (BATCH, POSITIONS)
    else:
        assert stepper.attention is None
