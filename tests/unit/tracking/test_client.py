"""The commands that only read the tracking store (caption and evaluate of a models:/ URI,
promote): a store that is not there is refused, not created, and a server that does not answer
fails at once, as a sweep does."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from captioning.cli import main

READERS = {
    "caption": ["caption", "any.jpg", "--model", "models:/captioner@champion"],
    "evaluate": ["evaluate", "--model", "models:/captioner@champion"],
    "promote": ["promote"],
}


def last_error(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses every connection: bound here, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", READERS)
def test_a_mistyped_sqlite_store_is_an_error_and_nothing_is_created(command, tmp_path, capsys):
    db = tmp_path / "typo" / "mlflow.db"
    assert main([*READERS[command], "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert last_error(capsys) == (
        f"error: tracking store sqlite:///{db}: no such SQLite file {db}; nothing was created: "
        "pass --tracking-uri (or set MLFLOW_TRACKING_URI) the store a sweep wrote to")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("command", READERS)
def test_a_mistyped_file_store_is_an_error_and_nothing_is_created(command, tmp_path, capsys):
    folder = tmp_path / "typo" / "mlruns"
    assert main([*READERS[command], "--tracking-uri", folder.as_uri()]) == 2
    assert last_error(capsys) == (
        f"error: tracking store {folder.as_uri()}: no such folder {folder}; nothing was "
        "created: pass --tracking-uri (or set MLFLOW_TRACKING_URI) the store a sweep wrote to")
    assert not (tmp_path / "typo").exists()


def test_the_default_store_absent_from_this_folder_is_named_in_full(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(READERS["caption"]) == 2
    assert last_error(capsys).startswith(
        f"error: tracking store sqlite:///mlflow.db: no such SQLite file {tmp_path / 'mlflow.db'};")
    assert list(tmp_path.iterdir()) == []


# MLflow alone retries a dead server for minutes; the timeout only stops a regression.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", READERS)
def test_an_unreachable_tracking_server_fails_at_once(command, closed_port, capsys):
    dead = f"http://127.0.0.1:{closed_port}"
    assert main([*READERS[command], "--tracking-uri", dead]) == 2
    last = last_error(capsys)
    assert last.startswith(f"error: MLflow tracking server {dead} cannot be reached (")
    assert last.endswith("); start it (mlflow server --host 127.0.0.1 --port 5000) or set "
                         "--tracking-uri / MLFLOW_TRACKING_URI")


def test_a_model_directory_needs_no_tracking_store(tmp_path, capsys):
    # Not a models:/ URI: no store is looked for (nor created), whatever --tracking-uri says.
    db = tmp_path / "typo" / "mlflow.db"
    assert main(["caption", "any.jpg", "--model", str(tmp_path / "no-model"),
                 "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert last_error(capsys) == f"error: {tmp_path / 'no-model'}: no such model directory"
    assert not (tmp_path / "typo").exists()
