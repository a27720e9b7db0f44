"""The compose stack's wiring, for real but without containers: PostgreSQL (Debian's packages)
as the backend store of a real `mlflow server` with a login, serving artifacts; a two-node Ray
cluster; a smoke sweep across it; the best trial promoted and loaded by alias.

docker/compose.yaml runs the same services with the same flags (a test below holds the two
together); only the artifact store is a local folder here instead of MinIO.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import ray
import yaml
from mlflow import MlflowClient

from captioning.cli import main
from captioning.config.loading import load_experiment
from captioning.tracking.client import using
from captioning.tune.launcher import run_sweep
from conftest import REPO, free_port, small_overrides, start_service, stop_service

pytestmark = pytest.mark.slow
PASSWORD = "test-only-password"  # a throwaway cluster that lives for this test


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} not found: install Debian's postgresql package "
                    "(.ci/run does: apt-get install -y postgresql)")
    return found


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with user and database `mlflow`; yields its URI."""
    # Not under pytest's tmp folder: its parents are private to root, and the server may run
    # as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="captioning-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as `postgres`
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(root / "pw", "postgres")
    port = free_port()
    data = root / "data"

    def run(*command: str, **env: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"

    run(_postgres_bin("initdb"), "-D", str(data), "-U", "mlflow", "--pwfile", str(root / "pw"),
        "--auth-host=scram-sha-256", "--auth-local=trust")
    run(_postgres_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        run(_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
            "mlflow", PGPASSWORD=PASSWORD)
        yield f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{port}/mlflow"  # libpq's form
    finally:
        run(_postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


ADMIN = ("admin", "test-only-admin-password")


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres: str):
    """`mlflow server` as docker/compose.yaml runs it: the PostgreSQL backend store given
    through MLFLOW_BACKEND_STORE_URI, users in their own database, a login required
    (basic-auth app), artifacts served by the server. Clients log in through
    MLFLOW_TRACKING_USERNAME/PASSWORD, as the compose services do."""
    root = Path(tempfile.mkdtemp(prefix="captioning-mlflow-pg-"))
    # SQLAlchemy's form names the driver the `server` extra installs (psycopg 3).
    store = postgres.replace("postgresql://", "postgresql+psycopg://", 1)
    auth_db = store.rsplit("/", 1)[0] + "/mlflow_auth"
    subprocess.run([_postgres_bin("psql"), postgres, "-c", "create database mlflow_auth"],
                   check=True, capture_output=True, timeout=60)
    (root / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {auth_db}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A sweep logs every metric of every epoch: check each password once a minute, not
        # on every request (PBKDF2 is slow on purpose).
        "auth_cache_ttl_seconds = 60\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        server = start_service(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name",
             "basic-auth", "--host", "127.0.0.1", "--port", str(port), "--serve-artifacts",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
            f"{url}/health", root / "server.log",
            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": store,
                 "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
                 "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
                 "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
                 "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret-key"})
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME",
                                                  "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN
    yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stop_service(server)
    shutil.rmtree(root, ignore_errors=True)


def test_a_sweep_on_two_nodes_tracked_in_postgres_is_promoted_and_loads_by_alias(
        mlflow_on_postgres, postgres, two_node_cluster, sample_root, tmp_path, capsys):
    config = load_experiment(REPO / "experiments" / "quickstart.yaml", [
        "name=stack", *small_overrides(sample_root), f"sweep.tracking_uri={mlflow_on_postgres}",
        f"sweep.storage_path={tmp_path / 'shared' / 'ray_results'}",
        "sweep.max_concurrent_trials=2"])
    assert len(ray.nodes()) == 2
    result = run_sweep(config, smoke_test=True, num_samples=2, address=two_node_cluster.address,
                       say=lambda _: None)
    assert result.trials == 2 and result.errors == 0

    assert main(["promote", "--experiment", "stack", "--model-name", "stack-captioner",
                 "--tracking-uri", mlflow_on_postgres]) == 0
    assert "registered stack-captioner version 1" in capsys.readouterr().out
    version = MlflowClient(mlflow_on_postgres).get_model_version_by_alias(
        "stack-captioner", "champion")
    assert version.tags["sweep_run_id"] == result.parent_run_id

    # The registry lives in PostgreSQL itself, not in a file beside the server.
    query = subprocess.run(
        [_postgres_bin("psql"), postgres, "-tAc",
         "select name, version from model_versions where name = 'stack-captioner'"],
        capture_output=True, text=True, timeout=60)
    assert query.stdout.split() == ["stack-captioner|1"], query.stderr

    image = sorted((sample_root / "Images").glob("*.jpg"))[0].read_bytes()
    with using(mlflow_on_postgres):
        model = mlflow.pyfunc.load_model("models:/stack-captioner@champion")
    out = model.predict(pd.DataFrame({"image": [image]}))
    assert isinstance(out["caption"][0], str) and out["error"][0] is None


def test_the_server_refuses_a_client_without_a_login(mlflow_on_postgres):
    request = urllib.request.Request(f"{mlflow_on_postgres}/api/2.0/mlflow/experiments/search"
                                     "?max_results=1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_compose_runs_mlflow_with_the_flags_this_test_uses():
    mlflow = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]["mlflow"]
    script = " ".join(mlflow["command"])
    for flag in ("mlflow server", "--app-name basic-auth", "--serve-artifacts",
                 "--artifacts-destination"):
        assert flag in script, flag
    assert "--backend-store-uri" not in script
    environment = mlflow["environment"]
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    for key in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME",
                "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert key in environment, key
    assert "database_uri = postgresql+psycopg://" in script  # users in PostgreSQL too
