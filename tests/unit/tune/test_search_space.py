"""Search spaces are validated against the experiment before any trial: one line naming the
file and key, or a warning for a spaCy model this machine does not have."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from captioning.config.schema import ExperimentConfig
from captioning.errors import ConfigError
from captioning.tune.search_space import load_search_space


def space_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_search_space(path, ExperimentConfig())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "train.learning_rate: {loguniform: [0.1, 0.001]}",
            "train.learning_rate: low bound 0.1 is not below high bound 0.001",
        ),
        (
            "model.dropout: {uniform: [0.5, 0.5]}",
            "model.dropout: low bound 0.5 is not below high bound 0.5",
        ),
        (
            "model.lstm_units: {int: [512, 128], step: 64}",
            "model.lstm_units: low bound 512 is not below high bound 128",
        ),
    ],
    ids=["loguniform", "uniform-equal", "int"],
)
def test_a_low_bound_not_below_its_high_bound_names_the_key(tmp_path, text, expected):
    assert space_error(tmp_path, text) == expected


def test_a_bound_outside_what_the_config_accepts_names_the_key_and_value(tmp_path):
    message = space_error(tmp_path, "train.batch_size: {int: [0, 64]}")
    assert message.startswith("train.batch_size: Input should be greater than or equal to 1")
    assert message.endswith("(value 0 of the search space)")


def test_an_unknown_encoder_choice_names_it(tmp_path):
    message = space_error(tmp_path, "encoder.name: {choice: [resnet50, vgg99]}")
    assert "encoder.name: unknown encoder 'vgg99'" in message


def test_an_unknown_key_names_it(tmp_path):
    assert "model.lstm_unitz: unknown key" in space_error(
        tmp_path, "model.lstm_unitz: {int: [64, 128]}"
    )


def write_space(tmp_path: Path, embeddings: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"embedding: {{choice: [{embeddings}]}}\n", encoding="utf-8")
    return path


def test_a_spacy_model_not_installed_here_is_a_warning_naming_it(tmp_path, caplog):
    path = write_space(tmp_path, 'learned, "spacy:en_core_web_nope"')
    with caplog.at_level(logging.WARNING, logger="captioning.tune.search_space"):
        space = load_search_space(path, ExperimentConfig())
    assert space.params["embedding"].choice == ["learned", "spacy:en_core_web_nope"]
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"{path}: embedding: spaCy model 'en_core_web_nope' is not installed here; trials that "
        "use it will fail"
    )


def test_a_spacy_model_of_the_base_experiment_is_checked_too(tmp_path, caplog):
    path = tmp_path / "space.yaml"
    path.write_text("model.dropout: {uniform: [0.1, 0.5]}\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="captioning.tune.search_space"):
        load_search_space(path, ExperimentConfig(embedding="spacy:en_core_web_nope"))
    assert "spaCy model 'en_core_web_nope' is not installed here" in caplog.text


def test_a_spacy_pipeline_directory_that_exists_gives_no_warning(tmp_path, spacy_pipeline, caplog):
    path = write_space(tmp_path, f'learned, "spacy:{spacy_pipeline}"')
    with caplog.at_level(logging.WARNING, logger="captioning.tune.search_space"):
        load_search_space(path, ExperimentConfig())
    assert caplog.records == []
