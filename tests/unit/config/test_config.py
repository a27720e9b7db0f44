"""Experiment config: defaults, one-line errors naming the key, --set overrides, shipped files."""

import os
from pathlib import Path

import pytest
import yaml

from captioning.config.encoder import EncoderConfig
from captioning.config.loading import apply_overrides, load_experiment, save_config
from captioning.config.schema import ExperimentConfig, parse_config
from captioning.errors import ConfigError
from captioning.features.encoders import encoders
from captioning.inference.captioner import read_model_config

REPO = Path(__file__).resolve().parents[3]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def write_yaml(tmp_path: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="exp.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("exp.yaml: ")
    return message


def test_defaults_validate_and_round_trip_through_a_mapping():
    config = parse_config({})
    assert config == ExperimentConfig()
    assert config.encoder.name in encoders()
    assert config.train.learning_rate > 0
    assert parse_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"model": {"lstm_unitz": 128}}, "model.lstm_unitz"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"optimiser": "adam"}, "optimiser"),
    ],
)
def test_unknown_key_is_rejected_naming_the_dotted_key(data, key):
    message = config_error(data)
    assert f"{key}: unknown key" in message


def test_wrong_type_names_the_key():
    message = config_error({"train": {"epochs": "many"}})
    assert "train.epochs:" in message
    assert "integer" in message


def test_section_given_as_a_scalar_names_the_section():
    assert "model:" in config_error({"model": 5})


@pytest.mark.parametrize("rate", [0, 0.0, -0.001])
def test_non_positive_learning_rate_is_rejected(rate):
    message = config_error({"train": {"learning_rate": rate}})
    assert "train.learning_rate:" in message
    assert "greater than 0" in message


@pytest.mark.parametrize("section", ["train", "encoder"])
def test_zero_batch_size_is_rejected_naming_the_section(section):
    message = config_error({section: {"batch_size": 0}})
    assert f"{section}.batch_size:" in message


@pytest.mark.parametrize("count", [0, -3])
def test_sweep_num_samples_below_one_is_rejected_naming_the_key(count):
    message = config_error({"sweep": {"num_samples": count}})
    assert message == "exp.yaml: sweep.num_samples: Input should be greater than or equal to 1"


@pytest.mark.parametrize(("count", "bound"), [
    (0, "Input should be greater than or equal to 1"),
    (10_001, "10001 is above the limit of 10,000: random trials before TPE models")])
def test_tpe_startup_trials_out_of_bounds_are_rejected_naming_the_key(count, bound):
    message = config_error({"sweep": {"startup_trials": count}})
    assert message == f"exp.yaml: sweep.startup_trials: {bound}"


def test_several_problems_are_counted_in_one_line():
    message = config_error({"train": {"epochs": 0, "batch_size": 0, "learning_rate": -1}})
    assert "(and 2 more problems)" in message


@pytest.mark.parametrize("embedding", ["learned", "spacy:en_core_web_md", "spacy:/models/vec"])
def test_embedding_accepts_learned_or_spacy_model(embedding):
    assert parse_config({"embedding": embedding}).embedding == embedding


@pytest.mark.parametrize("embedding", ["glove", "spacy:", "Learned", ""])
def test_embedding_other_than_learned_or_spacy_is_rejected(embedding):
    message = config_error({"embedding": embedding})
    assert "embedding:" in message
    assert "spacy:" in message


def test_override_sets_an_int_in_a_section(tmp_path):
    path = write_yaml(tmp_path, "model:\n  lstm_units: 64\n")
    config = load_experiment(path, ["model.lstm_units=128"])
    assert config.model.lstm_units == 128
    assert type(config.model.lstm_units) is int


def test_overrides_parse_values_as_yaml_and_do_not_touch_the_input():
    data = {"model": {"lstm_units": 64}, "encoder": {"image_size": 128}}
    result = apply_overrides(
        data, ["model.dropout=0.25", "encoder.image_size=null", "train.epochs=3",
               "encoder.weights=none"]
    )
    assert result["model"] == {"lstm_units": 64, "dropout": 0.25}
    assert result["encoder"]["image_size"] is None
    assert result["encoder"]["weights"] == "none"  # "none" is a string in YAML, not null
    assert result["train"] == {"epochs": 3}
    assert data == {"model": {"lstm_units": 64}, "encoder": {"image_size": 128}}


def test_later_override_wins(tmp_path):
    path = write_yaml(tmp_path, "train:\n  epochs: 10\n")
    config = load_experiment(path, ["train.epochs=2", "train.epochs=5"])
    assert config.train.epochs == 5


@pytest.mark.parametrize("item", ["model.lstm_units", "=128", "lstm_units128"])
def test_override_without_key_and_equals_is_an_error(tmp_path, item):
    path = write_yaml(tmp_path, "name: x\n")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_experiment(path, [item])


def test_override_into_a_value_that_is_not_a_section_is_an_error(tmp_path):
    path = write_yaml(tmp_path, "model:\n  lstm_units: 64\n")
    with pytest.raises(ConfigError, match="lstm_units is not a section"):
        load_experiment(path, ["model.lstm_units.size=3"])


def test_override_of_an_unknown_key_is_rejected_naming_it(tmp_path):
    path = write_yaml(tmp_path, "name: x\n")
    with pytest.raises(ConfigError, match=r"model\.lstm_unitz: unknown key"):
        load_experiment(path, ["model.lstm_unitz=128"])


def test_override_with_a_bad_value_names_the_file_and_key(tmp_path):
    path = write_yaml(tmp_path, "name: x\n")
    with pytest.raises(ConfigError) as caught:
        load_experiment(path, ["train.learning_rate=-1"])
    assert str(path) in str(caught.value)
    assert "train.learning_rate:" in str(caught.value)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = write_yaml(tmp_path, "name: x\nmodel:\n  lstm_units: 3\n   dropout: [\n")
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert message.startswith(f"{path} line 4:")
    assert "not valid YAML" in message


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_experiment(path)


def test_missing_experiment_file_is_reported(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(path)


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_experiment(write_yaml(tmp_path, "")) == ExperimentConfig()


def test_default_experiment_is_the_quickstart(monkeypatch):
    monkeypatch.chdir(REPO)
    assert load_experiment() == load_experiment(REPO / "experiments" / "quickstart.yaml")


def leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_experiments_folder_is_not_empty():
    assert EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_experiment_validates_and_keeps_every_value(path):
    config = load_experiment(path)
    written = leaves(yaml.safe_load(path.read_text(encoding="utf-8")))
    resolved = leaves(config.to_dict())
    for key, value in written.items():
        if key == "sweep.search_space":  # written relative to the experiment file
            value = os.path.normpath(path.parent / value)
        assert resolved[key] == (str(value) if isinstance(resolved[key], str) else value), key


def test_paths_an_experiment_file_names_are_relative_to_that_file(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "experiments"
    folder.mkdir(parents=True)
    weights = tmp_path / "project" / "weights.h5"
    weights.write_bytes(b"not read here")
    (folder / "mine.yaml").write_text(
        "sweep: {search_space: ../spaces/mine.yaml}\n"
        "encoder: {weights: ../weights.h5}\n"
        "data: {root: data/flickr8k}\noutput_dir: runs\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_experiment("../project/experiments/mine.yaml")
    assert config.sweep.search_space == tmp_path / "project" / "spaces" / "mine.yaml"
    assert config.encoder.weights == str(weights)
    # Data and output paths stay relative to the working directory.
    assert config.data.root == Path("data/flickr8k") and config.output_dir == Path("runs")


def test_a_path_given_with_set_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "w.h5").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    config = load_experiment("quickstart", ["encoder.weights=w.h5",
                                            "sweep.search_space=my_space.yaml"])
    assert config.encoder.weights == str(tmp_path / "w.h5")
    assert config.sweep.search_space == Path("my_space.yaml")


def test_a_built_in_experiment_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_experiment("quickstart")
    assert config.name == "quickstart"
    assert config.sweep.search_space.is_file()
    assert load_experiment().name == "quickstart"


def test_an_unknown_built_in_name_is_an_error_listing_the_built_ins():
    with pytest.raises(ConfigError, match="no such built-in experiment .there are: "
                                          "flickr30k, flickr8k, quickstart."):
        load_experiment("quickstrat")


def test_saved_config_reads_back_equal(tmp_path):
    config = load_experiment(REPO / "experiments" / "quickstart.yaml", ["train.epochs=2"])
    save_config(config, tmp_path / "config.json")
    assert read_model_config(tmp_path) == config


def test_a_saved_config_that_is_json_but_not_a_config_is_a_config_error_naming_it(tmp_path):
    # (A config.json that is not JSON at all is the model directory's error: test_captioner.)
    path = tmp_path / "config.json"
    path.write_text('{"train": {"epochs": "many"}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}.*train.epochs"):
        read_model_config(tmp_path)


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "env-cache"))
    assert EncoderConfig().resolved_cache_dir() == tmp_path / "env-cache"
    assert EncoderConfig(cache_dir=tmp_path / "own").resolved_cache_dir() == tmp_path / "own"
