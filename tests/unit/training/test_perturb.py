"""A model continued with perturbed hyperparameters (a PBT clone, training/perturb.py): the
loaded model trains at the new rate and dropout, and keeps the Adam state it had."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning.config.schema import parse_config
from captioning.models.build import build_model, compile_model
from captioning.training.perturb import changes, continue_with

VOCAB, DIM = 30, 10


def trained_model(tmp_path, config):
    rng = np.random.default_rng(0)
    model = build_model(config.model, VOCAB, np.zeros(DIM, "float32"), np.ones(DIM, "float32"))
    compile_model(model, config.train, total_steps=10)
    features = rng.normal(size=(4, DIM)).astype("float32")
    tokens = rng.integers(4, VOCAB, size=(4, 6)).astype("int32")
    for _ in range(3):
        model.train_on_batch({"image": features, "tokens": tokens}, np.roll(tokens, -1, 1))
    model.save(tmp_path / "last.keras")
    return keras.saving.load_model(tmp_path / "last.keras", safe_mode=True)


def dropout_rates(model) -> list[float]:
    return sorted(layer.rate for layer in model._flatten_layers()
                  if isinstance(layer, keras.layers.Dropout))


def test_a_clone_trains_on_at_its_new_rate_and_dropout_with_the_adam_state_it_had(tmp_path):
    before = parse_config({"model": {"lstm_units": 8, "embedding_dim": 6, "dropout": 0.3},
                           "train": {"learning_rate": 0.002}})
    model = trained_model(tmp_path, before)
    moments = {v.name: np.asarray(v) for v in model.optimizer.variables
               if v.name != "learning_rate"}
    assert int(model.optimizer.iterations) == 3 and dropout_rates(model) == [0.3, 0.3]

    after = parse_config({"model": {"lstm_units": 8, "embedding_dim": 6, "dropout": 0.45},
                          "train": {"learning_rate": 0.0005, "label_smoothing": 0.1}})
    changed = changes(before.to_dict(), after)
    assert changed == {"train.learning_rate": (0.002, 0.0005),
                       "train.label_smoothing": (0.0, 0.1), "model.dropout": (0.3, 0.45)}
    continue_with(model, after, changed, total_steps=10, tail_scale=None)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0005)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    assert dropout_rates(model) == [0.45, 0.45]
    carried = {v.name: np.asarray(v) for v in model.optimizer.variables
               if v.name != "learning_rate"}
    assert carried.keys() == moments.keys()
    for name, value in moments.items():
        np.testing.assert_array_equal(carried[name], value)


def test_a_model_resumed_with_its_own_config_is_left_as_it_was(tmp_path):
    config = parse_config({"model": {"lstm_units": 8, "embedding_dim": 6}})
    assert changes(config.to_dict(), config) == {}
    assert changes(None, config) == {}
