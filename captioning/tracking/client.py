"""The seam to MLflow's tracking server: which store, whether it answers, and failing fast.

MLflow moves between versions (stages became aliases, the file store is deprecated, models
became entities of their own); its calls live in this folder only (client.py, runs.py,
pyfunc.py, model_registry.py), so an upgrade touches these files. Only MLflow's public API is
used: clients are passed the URI they talk to, and the fluent API (which has no URI argument
for logging or registering a model) is pointed at one for the duration of `using`.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from captioning.errors import TrackingError, first_line

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_EXPERIMENT_VARIABLE = "MLFLOW_EXPERIMENT_ID"


def resolve_tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextmanager
def fail_fast(timeout_s: int = 5):
    """MLflow retries an HTTP call for minutes by default, blocking its caller; within this,
    a call to a dead server fails at once (and one to a hung server after `timeout_s`)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def using(uri: str, experiment_id: str | None = None):
    """MLflow's fluent API (log_model, register_model, load_model) on `uri`, tracking and model
    registry both, for the duration; then the settings there were before. With
    `experiment_id`, what the fluent API creates without an active run (a logged model) goes
    into that experiment (MLFLOW_EXPERIMENT_ID), not the Default one.

    Through MLflow's public setters only. They also export MLFLOW_*_URI to the environment
    (for subprocesses), so the environment is put back as it was; a tracking URI that came
    from the environment is left to it, not pinned. The registry URI then follows the
    tracking URI again (captioning never sets one apart from it).
    """
    environment = {key: os.environ.get(key) for key in (*_URI_VARIABLES, _EXPERIMENT_VARIABLE)}
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    if before == environment["MLFLOW_TRACKING_URI"]:
        before = None  # the environment's, restored with it
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment_id is not None:
        os.environ[_EXPERIMENT_VARIABLE] = experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        mlflow.set_registry_uri(None)
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_reachable(uri: str, setting: str = "sweep.tracking_uri") -> None:
    """Raise TrackingError now, before any work, if `uri` cannot be used; its message says to
    fix `setting` (the config key or command-line flag that named the server)."""
    try:
        with fail_fast():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises several types for a dead server
        reason = first_line(error)
        raise TrackingError(
            f"MLflow tracking server {uri} cannot be reached ({type(error).__name__}: "
            f"{reason}); start it (mlflow server --host 127.0.0.1 --port 5000) or set "
            f"{setting} / MLFLOW_TRACKING_URI") from None


def local_store(uri: str) -> tuple[str, Path] | None:
    """What a store on this machine's disk is and where: ("SQLite file", path) for
    sqlite:///path, ("folder", path) for a file: URI or a bare path (MLflow's file store);
    None for a server, or an SQLite store in memory."""
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            return None  # sqlite:// is in memory
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else ("SQLite file", Path(path))
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return "folder", Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme or uri == "databricks":
        return None
    return "folder", Path(uri)


def check_store_exists(uri: str) -> None:
    """For a command that only reads the store: raise TrackingError if `uri` names a store on
    disk that is not there, before MLflow would create it (and its folders) empty."""
    store = local_store(uri)
    if store is not None and not store[1].exists():
        kind, path = store
        raise TrackingError(
            f"tracking store {uri}: no such {kind} {path.absolute()}; nothing was created: "
            "pass --tracking-uri (or set MLFLOW_TRACKING_URI) the store a sweep wrote to")


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` says the tracking server could not be reached or was not ready (worth
    retrying later), rather than that it refused the request."""
    import requests

    seen: BaseException | None = error
    while seen is not None:
        # RetryError: the server answered 429 or 5xx (busy, starting, behind a proxy), which
        # MLflow would retry by itself with its retries on.
        if isinstance(seen, requests.ConnectionError | requests.Timeout
                      | requests.exceptions.RetryError | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def tracking_failure(uri: str, done: str):
    """Turn an MLflow failure into a TrackingError that says what was `done` already."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        reason = first_line(error)
        raise TrackingError(f"{done}, but MLflow at {uri} failed: {reason}") from None
