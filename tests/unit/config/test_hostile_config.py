"""Hostile and careless configs: every one is refused by one line naming the file, line or key,
before it costs more than reading it (issue 23: bounded, refused by name)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from captioning.config.loading import MAX_YAML_BYTES, load_experiment
from captioning.config.schema import ExperimentConfig
from captioning.errors import ConfigError
from captioning.inference.captioner import read_model_config
from captioning.tune.search_space import load_search_space


def refused(call, *args) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def alias_bomb(levels: int) -> str:
    """`levels` levels of nine aliases each of the level below: 9**levels values once built,
    in about 60 bytes a level."""
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"  a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "unknown:\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 10, 30])
def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels), encoding="utf-8")
    assert path.stat().st_size < 2000
    tracemalloc.start()
    try:
        message = refused(load_experiment, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Nine levels built took 5.5 GB before this check; refused, the file costs kilobytes.
    assert message == (f"{path}: its aliases expand to more than 100,000 values (a YAML alias "
                       "bomb?); an experiment has a few hundred")
    assert peak < 5_000_000


def test_aliases_that_expand_to_a_little_are_still_read(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("model: &m {lstm_units: 64}\ndecode: {max_length: 30}\n"
                    "train: {batch_size: 16}\n", encoding="utf-8")
    assert load_experiment(path).model.lstm_units == 64


def test_a_recursive_alias_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("name: x\nmodel: &a [*a]\n", encoding="utf-8")
    assert refused(load_experiment, path) == (
        f"{path} line 2: an alias refers to the value it is in (a recursive YAML alias)")


def test_deep_nesting_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    assert refused(load_experiment, path).startswith(f"{path}")
    path.write_text("x: " + "[" * 60 + "]" * 60 + "\n", encoding="utf-8")
    assert refused(load_experiment, path) == (
        f"{path} line 1: nested more than 50 levels deep; an experiment needs 3")


def test_a_file_larger_than_any_experiment_is_refused_unread(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("# " + "x" * MAX_YAML_BYTES + "\n", encoding="utf-8")
    assert refused(load_experiment, path) == (
        f"{path}: {path.stat().st_size:,} bytes, more than the 1,000,000 allowed for an "
        "experiment file")


def test_a_key_set_twice_is_refused_naming_the_key_and_both_lines(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n", encoding="utf-8")
    assert refused(load_experiment, path) == (
        f"{path} line 4: key 'epochs' is set twice (lines 2 and 4); keep one")


def test_a_key_set_twice_in_a_search_space_is_refused_too(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model.dropout: {uniform: [0.1, 0.5]}\nmodel.dropout: {uniform: [0.2, 0.3]}\n",
                    encoding="utf-8")
    assert refused(load_search_space, path, ExperimentConfig()) == (
        f"{path} line 2: key 'model.dropout' is set twice (lines 1 and 2); keep one")


def test_a_non_utf8_experiment_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_bytes(b"name: ok\ntrain:\n  epochs: 3  # caf\xe9\n")
    assert refused(load_experiment, path) == (
        f"{path} line 3: not valid UTF-8 (byte 0xe9); re-save the file as UTF-8")


def test_a_set_value_that_is_not_yaml_names_the_override():
    assert refused(load_experiment, None, ["model.lstm_units=[1"]) == (
        "--set 'model.lstm_units=[1' line 1: not valid YAML (expected ',' or ']', but got "
        "'<stream end>')")


@pytest.mark.parametrize(("key", "what"), [
    ("model..lstm_units", "has two dots with nothing between them"),
    (".model.lstm_units", "starts with a dot"),
    ("model.lstm_units.", "ends with a dot"),
])
def test_a_set_key_with_an_empty_name_between_its_dots_names_the_whole_key(key, what):
    # Before: `model.: unknown key`, `(top level): unknown key`, `lstm_units is not a section`.
    assert refused(load_experiment, None, [f"{key}=3"]) == (
        f"--set '{key}=3': the key {key} {what}; a key is names joined by single dots, e.g. "
        "model.lstm_units=128")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_number_that_is_not_finite_is_refused(value):
    assert refused(load_experiment, None, [f"train.learning_rate={value}"]).endswith(
        "train.learning_rate: Input should be a finite number")


@pytest.mark.parametrize(("override", "limit"), [
    ("encoder.image_size=40000", "1,024"),
    ("decode.max_length=10000000", "200"),
    ("decode.beam_width=200000", "20"),
    ("train.max_caption_length=100000", "200"),
    ("train.scst.samples=5000", "100"),
    ("model.lstm_units=1000000", "8,192"),
    ("model.transformer.layers=1000", "64"),
    ("sweep.num_samples=10000000", "100,000"),
    ("sweep.resources.cpu=100000", "1,024"),
])
def test_every_size_and_count_has_an_upper_bound_that_says_why(override, limit):
    key, value = override.split("=")
    message = refused(load_experiment, None, [override])
    assert f": {key}: {value}" in message
    head, _, why = message.partition(f"is above the limit of {limit}: ")
    assert head and why  # the bound, then the reason for it


def test_a_model_directory_whose_config_asks_for_an_endless_caption_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"decode": {"max_length": 10_000_000}}),
                                          encoding="utf-8")
    assert refused(read_model_config, tmp_path).startswith(
        f"{tmp_path / 'config.json'}: decode.max_length: 10000000 is above the limit of 200")


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_negative_step_in_a_search_space_names_the_key(tmp_path):
    path = space_file(tmp_path, "model.lstm_units: {int: [32, 64], step: -16}\n")
    assert refused(load_search_space, path, ExperimentConfig()) == (
        f"{path}: model.lstm_units.step: Input should be greater than or equal to 1")


def test_a_when_condition_no_trial_can_meet_names_the_key_and_its_values(tmp_path):
    path = space_file(tmp_path, "model.decoder: {choice: [merge, attention]}\n"
                                "model.attention.units:\n  int: [64, 256]\n"
                                "  when: {model.decoder: atention}\n")
    assert refused(load_search_space, path, ExperimentConfig()) == (
        f"{path}: model.attention.units: 'when' asks for model.decoder = 'atention', which "
        "model.decoder never draws (it draws one of 'merge', 'attention'), so "
        "model.attention.units would never be drawn")


def test_a_when_condition_on_a_range_accepts_a_value_inside_it(tmp_path):
    path = space_file(tmp_path, "train.epochs: {int: [2, 8], step: 2}\n"
                                "train.patience:\n  int: [1, 3]\n  when: {train.epochs: [4, 8]}\n")
    assert list(load_search_space(path, ExperimentConfig()).params) == ["train.epochs",
                                                                         "train.patience"]
    path = space_file(tmp_path, "train.epochs: {int: [2, 8], step: 2}\n"
                                "train.patience:\n  int: [1, 3]\n  when: {train.epochs: 5}\n")
    assert "which train.epochs never draws (it draws from 2 to 8)" in refused(
        load_search_space, path, ExperimentConfig())
