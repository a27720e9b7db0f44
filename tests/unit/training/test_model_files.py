"""A model directory's files: named in one place, its JSON read with errors naming the file."""

from __future__ import annotations

import pytest

from captioning.errors import ModelDirError
from captioning.training import model_files
from conftest import REPO

LEGACY = REPO / "tests" / "fixtures" / "v0.1.0" / "model"


def test_a_written_history_reads_back_as_written(tmp_path):
    history = [{"epoch": 1, "val_cider": 0.25}, {"epoch": 2, "val_cider": 0.5}]
    model_files.write_json(tmp_path / model_files.HISTORY, history)
    assert model_files.read_history(tmp_path) == history
    assert (tmp_path / "history.json").read_text(encoding="utf-8").endswith("]\n")


def test_a_history_that_is_not_a_list_of_epochs_names_the_file(tmp_path):
    (tmp_path / "history.json").write_text('{"epoch": 1}', encoding="utf-8")
    with pytest.raises(ModelDirError, match="history.json: expected a list"):
        model_files.read_history(tmp_path)


def test_a_config_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelDirError, match=r"config\.json line 1: not valid JSON"):
        model_files.read_config(tmp_path)


def test_the_missing_files_are_named_in_the_order_captioning_needs_them(tmp_path):
    assert model_files.missing_files(tmp_path) == ["model.keras", "vocab.json", "config.json"]
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    assert model_files.missing_files(tmp_path) == ["model.keras", "config.json"]


def test_the_names_are_those_of_models_saved_by_0_1_0():
    assert model_files.missing_files(LEGACY) == []
    assert all((LEGACY / name).is_file() for name in model_files.PACKAGED)
