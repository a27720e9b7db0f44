"""The recipe levers of cross-entropy training: the learning-rate schedule, label smoothing,
gradient clipping; and the config keys that set them and SCST."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning.config.schema import TrainConfig, parse_config
from captioning.errors import ConfigError
from captioning.models.build import MaskedLoss, compile_model, learning_rate, masked_loss


def rates(config: TrainConfig, total: int, steps: list[int]) -> list[float]:
    schedule = learning_rate(config, total)
    return [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]


def test_a_constant_schedule_is_the_seeds_learning_rate():
    assert learning_rate(TrainConfig(learning_rate=0.002), 1000) == 0.002


@pytest.mark.parametrize("schedule", ["warmup_cosine", "warmup_linear"])
def test_warmup_schedules_rise_to_the_learning_rate_then_fall_to_zero(schedule):
    config = TrainConfig(learning_rate=0.01, schedule=schedule, warmup=0.1)
    start, mid_warmup, peak, middle, end = rates(config, 1000, [0, 50, 100, 550, 1000])
    assert start == pytest.approx(0.0, abs=1e-9)
    assert mid_warmup == pytest.approx(0.005, rel=1e-3)
    assert peak == pytest.approx(0.01, rel=1e-3)
    assert middle == pytest.approx(0.005, rel=1e-2)  # half way down, on a line or a cosine
    assert end == pytest.approx(0.0, abs=1e-6)
    quarter = rates(config, 1000, [325])[0]
    # Past the peak a cosine stays higher than a line for the first half of the decay.
    assert quarter == pytest.approx(0.0075 if schedule == "warmup_linear" else 0.00854,
                                    rel=1e-2)


def test_warmup_is_a_fraction_of_the_steps_below_one_and_a_step_count_from_one():
    assert TrainConfig(warmup=0.05).warmup_steps(2000) == 100
    assert TrainConfig(warmup=300).warmup_steps(2000) == 300
    assert TrainConfig(warmup=5000).warmup_steps(2000) == 2000
    with pytest.raises(ConfigError, match=r"train\.warmup: 2\.5: .*whole number of steps"):
        parse_config({"train": {"warmup": 2.5}})


def test_label_smoothing_moves_mass_from_the_target_to_every_word_of_real_tokens_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype("float32")
    targets = np.array([[1, 4, 0], [2, 0, 0]], "int32")
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(0, 0), (0, 1), (1, 0)]
    smoothing = 0.2
    expected = np.mean([-(1 - smoothing) * log_p[b, t, targets[b, t]]
                        - smoothing * log_p[b, t].mean() for b, t in real])
    assert float(MaskedLoss(smoothing)(targets, logits)) == pytest.approx(expected, rel=1e-5)
    # Without smoothing it is the masked cross-entropy saved models were trained with.
    assert float(MaskedLoss()(targets, logits)) == pytest.approx(
        float(masked_loss(targets, logits)), rel=1e-6)


def test_compiling_sets_the_schedule_smoothing_and_clipping_and_they_survive_saving(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    config = TrainConfig(schedule="warmup_linear", warmup=10, label_smoothing=0.1,
                         clip_norm=1.5)
    compile_model(model, config, total_steps=100)
    model.train_on_batch(np.ones((2, 3), "float32"), np.array([1, 2]))
    model.save(tmp_path / "last.keras")
    loaded = keras.saving.load_model(tmp_path / "last.keras", safe_mode=True)
    assert loaded.optimizer.global_clipnorm == 1.5
    assert loaded.loss.label_smoothing == 0.1
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.0012 / 10, rel=1e-5)


def test_scst_settings_are_checked_by_name():
    config = parse_config({"train": {"scst": {"epochs": 3, "baseline": "greedy",
                                              "samples": 1}}})
    assert config.train.total_epochs == config.train.epochs + 3
    with pytest.raises(ConfigError, match=r"train\.scst\.samples: .*at least 2 samples"):
        parse_config({"train": {"scst": {"epochs": 3, "samples": 1}}})
    with pytest.raises(ConfigError, match=r"train\.scst\.baseline: Input should be 'mean' or "
                                          r"'greedy'"):
        parse_config({"train": {"scst": {"baseline": "best"}}})
