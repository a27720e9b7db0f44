"""Shared fixtures: sample data drawn by the project's own generator, a private feature cache,
and a spaCy pipeline with a few vectors written to a temp dir (no downloads anywhere)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from captioning.config.schema import parse_config
from captioning.data.sample import draw_sample_dataset

REPO = Path(__file__).resolve().parents[1]
# Files that share a costly session fixture run on one worker (`make test` runs two):
# the smoke sweep below serves the sweep tests and the promotion tests.
SHARED_WORKER = {"test_registry": "smoke-sweep", "test_sweep": "smoke-sweep"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that train sweeps (marked slow) first, so that on two workers the quick
    ones fill in at the end; each file keeps its own order."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (`make test`: -n 2), each file is one unit of work on one worker,
    so that its module fixtures are made once; the files of SHARED_WORKER are one unit."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # hand the files out in collection order (above)

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_WORKER.get(Path(path).stem, path)

    return ByFile(config, log)


@pytest.fixture(scope="session", autouse=True)
def private_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test caches features under a temp dir, never in the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("feature-cache")
    os.environ["CAPTIONING_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic images in the Kaggle Flickr8k layout."""
    return draw_sample_dataset(tmp_path_factory.mktemp("sample") / "data", images=300, seed=0)


@pytest.fixture(scope="session")
def spacy_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A blank English spaCy pipeline with 8-d vectors for a few sample-data words, on disk."""
    import spacy

    nlp = spacy.blank("en")
    rng = np.random.default_rng(0)
    for word in ["red", "green", "blue", "circle", "square", "triangle", "star", "and", "on"]:
        nlp.vocab.set_vector(word, rng.normal(size=8).astype("float32"))
    path = tmp_path_factory.mktemp("spacy") / "tiny_vectors"
    nlp.to_disk(path)
    return path


QUICK_SPACE = REPO / "tests" / "spaces" / "merge.yaml"


def small_overrides(root: Path) -> list[str]:
    """Overrides that make any experiment quick on sample data: random weights, small input,
    and for sweeps a space of the merge decoder on one encoder (tests/spaces/merge.yaml)."""
    return [f"data.root={root}", "encoder.weights=none", "encoder.image_size=75",
            "encoder.batch_size=64", f"sweep.search_space={QUICK_SPACE}"]


def quick_config(root: Path, **train):
    """A small, fast config on sample data: random encoder weights, a narrow LSTM."""
    return parse_config({
        "data": {"root": str(root)},
        "encoder": {"name": "inception_v3", "weights": "none", "image_size": 75},
        "model": {"lstm_units": 32, "embedding_dim": 16, "dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 64, "learning_rate": 0.003, "score_images": 20,
                  **train},
    })


def cli(*args: str) -> list[str]:
    """The `captioning` command with `args`, as this checkout's Python runs it."""
    return [sys.executable, "-m", "captioning.cli", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `captioning` subprocess: this one's (with the tests' feature
    cache) without a TensorFlow log level (the command's own, as a user who sets none has
    it), this checkout importable, and `extra`."""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "PYTHONPATH": str(REPO), **extra}


# What TensorFlow writes as it starts (captioning/log.py keeps it out of a command's output).
START_UP_NOISE = ("absl::InitializeLog", "cuInit", "oneDNN", "cudart_stub")


def start_up_noise(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of TensorFlow's start-up noise in a command's output, stdout and stderr."""
    return [line for line in (result.stdout + result.stderr).splitlines()
            if any(noise in line for noise in START_UP_NOISE)]


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `captioning *args` to the end, its output captured as text."""
    return subprocess.run(cli(*args), cwd=cwd, env=cli_env(**(env or {})), capture_output=True,
                          text=True, timeout=timeout)


def trial_runs(url: str, experiment: str, parent: str | None = None) -> list:
    """The trial runs of MLflow experiment `experiment` at `url` (of one sweep, if `parent`
    names its parent run)."""
    from mlflow import MlflowClient

    from captioning.tracking.runs import TRIAL_TAG

    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    where = f"tags.`{TRIAL_TAG}` != ''"
    if parent is not None:
        where += f" and tags.`mlflow.parentRunId` = '{parent}'"
    return client.search_runs([found.experiment_id], filter_string=where)


def metric_steps(url: str, run_id: str, key: str = "val_loss") -> list[int]:
    """The steps (epochs) at which run `run_id` logged `key`, in logged order."""
    from mlflow import MlflowClient

    return [m.step for m in MlflowClient(url).get_metric_history(run_id, key)]


def flat_png(width: int, height: int) -> bytes:
    """A valid black 1-bit PNG of any size, written without holding its pixels in memory:
    a 20000 x 20000 one is about 50 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(command: list[str], url: str, log: Path, *, env: dict | None = None,
                  timeout: float = 120) -> subprocess.Popen:
    """Start `command` in a process group of its own, its output in `log`, and return once
    `url` answers; fail the test with the log's tail if it dies or stays silent."""
    # MLflow 3's server also starts a job runner (seven huey consumer processes) for GenAI
    # jobs no test uses: off, so each server started here costs one process, not eight.
    env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                stop_service(process)
                pytest.fail(f"{' '.join(command[:3])} did not start:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)


def stop_service(process: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a service started by `start_service`, with every process it started."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def mlflow_server_command(store: Path, port: int) -> list[str]:
    """`mlflow server` on 127.0.0.1:`port`, its SQLite store and artifacts under `store`."""
    return [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
            "--port", str(port), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"), "--workers", "1"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend store; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_service(mlflow_server_command(root, port), f"{url}/health",
                            root / "server.log", timeout=90)
    yield url
    stop_service(process)


def start_local_ray() -> None:
    """A Ray of this test's own on this machine (2 CPUs). Not a bare ray.init(): that joins the
    newest local cluster, which a `Cluster` test on the other worker may have started."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def smoke_sweep(sample_root, tmp_path_factory, mlflow_server):
    """One finished smoke sweep of the quickstart's space (4 trials, MLflow experiment "smoke";
    small images, a few scored), run once for the tests of the sweep and of promotion;
    returns (SweepResult, its folder)."""
    import ray

    from captioning.config.loading import load_experiment
    from captioning.tune.launcher import run_sweep

    tmp = tmp_path_factory.mktemp("smoke")
    path = REPO / "experiments" / "quickstart.yaml"
    config = load_experiment(path, [
        "name=smoke", f"data.root={sample_root}", f"sweep.tracking_uri={mlflow_server}",
        f"sweep.storage_path={tmp / 'ray_results'}", "encoder.image_size=75",
        "train.score_images=10",
        # All four trials drawn at random from the seed: which decoders and encoders run must
        # not depend on which trial finishes first (TPE's later draws would).
        "sweep.startup_trials=4"])
    started = not ray.is_initialized()
    if started:
        start_local_ray()
    try:
        result = run_sweep(config, experiment_path=path, smoke_test=True, num_samples=4,
                           say=lambda _: None)
    finally:
        if started:
            ray.shutdown()
    return result, tmp


@pytest.fixture(scope="module")
def two_node_cluster():
    """A Ray cluster of two nodes (one CPU each) on this machine, connected to."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
