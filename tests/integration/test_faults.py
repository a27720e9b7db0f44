"""Faults a long sweep must survive, each made real: a Ray node killed, the driver stopped
with Ctrl-C, the tracking server restarted, a trial running out of memory. Nothing finished
is lost or counted twice. (The driver killed with SIGKILL at chosen points:
tests/integration/test_resume.py; the disk filling up: tests/integration/test_disk_full.py;
docs/reliability.md has the whole table.)"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from captioning.config.loading import load_experiment
from captioning.tracking.runs import MODEL_TAG, TRIAL_TAG
from captioning.tune.launcher import run_sweep
from captioning.tune.trainable import train_trial
from conftest import (
    REPO,
    cli,
    cli_env,
    free_port,
    metric_steps,
    mlflow_server_command,
    run_cli,
    small_overrides,
    start_local_ray,
    start_service,
    stop_service,
    trial_runs,
)

pytestmark = pytest.mark.slow
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def sweep_overrides(sample_root: Path, name: str, url: str, *extra: str) -> list[str]:
    return [f"name={name}", f"sweep.tracking_uri={url}", *small_overrides(sample_root),
            "train.score_images=10", *extra]


def wait_for_an_epoch(url: str, experiment: str, process: subprocess.Popen,
                      timeout: float = 300) -> None:
    """Until some trial of `experiment` has logged an epoch to MLflow."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(run.data.metrics.get("val_loss") is not None
               for run in trial_runs(url, experiment)):
            return
        time.sleep(1)
    pytest.fail(f"no epoch of {experiment} reached MLflow (sweep exit code {process.poll()})")


def test_ctrl_c_stops_the_sweep_and_the_command_it_prints_resumes_it(sample_root, tmp_path,
                                                                      mlflow_server):
    # Both trials exist and run when Ctrl-C comes: Ray ends them as it stops.
    args = ["sweep", "--smoke-test", "--num-samples", "2", "--storage", str(tmp_path / "runs"),
            *[f"--set={item}" for item in sweep_overrides(
                sample_root, "interrupted", mlflow_server, "sweep.max_concurrent_trials=2")]]
    process = subprocess.Popen(cli(*args), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_an_epoch(mlflow_server, "interrupted", process)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    out, err = process.communicate(timeout=180)

    assert process.returncode == 130, err[-3000:]
    # Counted from the sweep's own saved state: MLflow may still hear of a trial's end later.
    from ray import tune

    trials = tune.ExperimentAnalysis(str(tmp_path / "runs" / "interrupted")).trials
    done = sum(bool(t.last_result.get("done")) or t.status == "ERROR"
               or t.last_result.get("epoch", 0) >= 3 for t in trials)  # smoke: 3 epochs
    assert f"sweep interrupted: {2 - done} trial(s) left to run" in out
    [line] = [line for line in out.splitlines() if line.startswith("resume it: ")]
    cd, command = line.removeprefix("resume it: ").split(" && ")
    assert shlex.split(cd) == ["cd", str(REPO)]
    command = shlex.split(command)
    # The program as the shell here runs it: on PATH, or this checkout's .venv/bin/captioning.
    assert command[0] == "captioning" or (REPO / command[0]).is_file()
    assert Path(command[0]).name == "captioning" and command[-1] == "--resume"
    client = MlflowClient(mlflow_server)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("interrupted").experiment_id],
        filter_string="tags.`captioning.sweep` = 'interrupted'")
    assert parent.info.status == "KILLED"
    before = {run.data.tags[TRIAL_TAG]: metric_steps(mlflow_server, run.info.run_id)
              for run in trial_runs(mlflow_server, "interrupted")}
    assert all(run.info.status in ("FINISHED", "KILLED")
               for run in trial_runs(mlflow_server, "interrupted"))

    resumed = run_cli(*command[1:], timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "sweep finished: 2 trials (0 failed)" in resumed.stdout
    runs = trial_runs(mlflow_server, "interrupted")
    assert sorted(run.data.tags[TRIAL_TAG] for run in runs) == sorted(
        {run.data.tags[TRIAL_TAG] for run in runs})
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    for run in runs:
        after = metric_steps(mlflow_server, run.info.run_id)
        assert after == sorted(set(after)), "an epoch was trained twice"
        assert after[:len(before.get(run.data.tags[TRIAL_TAG], []))] == before.get(
            run.data.tags[TRIAL_TAG], [])


def test_results_reach_a_tracking_server_restarted_mid_sweep(sample_root, tmp_path):
    store = tmp_path / "mlflow"
    store.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_command = mlflow_server_command(store, port)
    server = start_service(server_command, f"{url}/health", store / "first.log")
    args = ["sweep", "--num-samples", "2", "--storage", str(tmp_path / "runs"),
            *[f"--set={item}" for item in sweep_overrides(
                sample_root, "flaky-server", url, "sweep.max_concurrent_trials=1",
                "train.epochs=3", "sweep.grace_period=3", "sweep.max_failures=0")]]
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen(cli(*args), cwd=REPO, env=cli_env(), stdout=out,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_an_epoch(url, "flaky-server", sweep)
        stop_service(server)
        # Away until the sweep has found it gone (however fast or slow its trials are), and
        # 5 s more: trials go on training meanwhile.
        deadline = time.time() + 600
        while f"MLflow tracking server {url} cannot be reached" not in log.read_text():
            assert sweep.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(5)
        server = start_service(server_command, f"{url}/health", store / "second.log")
        assert sweep.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        stop_service(server)
        server = start_service(server_command, f"{url}/health", store / "third.log")

    try:
        output = log.read_text()
        assert f"MLflow tracking server {url} cannot be reached" in output
        assert f"MLflow tracking server {url} is back after" in output
        assert "sweep finished: 2 trials (0 failed)" in output
        runs = trial_runs(url, "flaky-server")
        assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
        for run in runs:
            assert metric_steps(url, run.info.run_id) == list(
                range(1, int(run.data.tags["epochs_run"]) + 1))
            assert MODEL_TAG in run.data.tags
    finally:
        stop_service(server)


def test_a_trial_out_of_memory_is_retried_then_failed_and_the_best_of_the_rest_wins(
        sample_root, tmp_path, mlflow_server):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    roles = ["always", "once", "never"]  # how a trial behaves, claimed in start order

    def hungry(drawn, base):
        import numpy as np
        from ray import tune

        trial = tune.get_context().get_trial_id()
        role_file = attempts / f"{trial}.role"
        if not role_file.exists():
            for role in roles:
                try:
                    os.close(os.open(attempts / role, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                role_file.write_text(role)
                break
        role = role_file.read_text()
        tried = len(list(attempts.glob(f"{trial}.attempt-*")))
        (attempts / f"{trial}.attempt-{tried}").touch()
        if role == "always" or (role == "once" and tried == 0):
            np.ones(1 << 50, dtype=np.uint8)  # 1 PiB: the allocation fails, MemoryError
        train_trial(drawn, base)

    config = load_experiment(QUICKSTART, [
        *sweep_overrides(sample_root, "out-of-memory", mlflow_server, "sweep.max_failures=1",
                         "sweep.max_concurrent_trials=2"),
        f"sweep.storage_path={tmp_path / 'runs'}"])
    start_local_ray()
    try:
        result = run_sweep(config, smoke_test=True, num_samples=3, trainable=hungry,
                           say=lambda _: None)
    finally:
        ray.shutdown()

    role_of = {path.stem: path.read_text() for path in attempts.glob("*.role")}
    tries = {trial: len(list(attempts.glob(f"{trial}.attempt-*"))) for trial in role_of}
    assert sorted(role_of.values()) == sorted(roles)
    assert {role_of[t]: n for t, n in tries.items()} == {"always": 2, "once": 2, "never": 1}
    assert result.trials == 3 and result.errors == 1
    assert result.best is not None and role_of[result.best["trial_id"]] != "always"
    for run in trial_runs(mlflow_server, "out-of-memory"):
        if role_of[run.data.tags[TRIAL_TAG]] == "always":
            assert run.info.status == "FAILED"
            assert "Unable to allocate" in run.data.tags["error"]
        else:
            assert run.info.status == "FINISHED"


def test_a_trial_on_a_node_that_dies_resumes_from_its_checkpoint_on_another(sample_root,
                                                                            tmp_path,
                                                                            mlflow_server):
    from ray import tune
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    storage = tmp_path / "runs"
    killed = threading.Event()
    doomed = worker.node_id

    def train_until_the_node_dies(drawn, base):
        """`train_trial`; on the node the test kills, it waits to be killed after its first
        epoch, so that it cannot finish first, however fast it trains (no timing involved)."""
        import ray
        from ray import tune

        if ray.get_runtime_context().get_node_id() == doomed:
            report = tune.report

            def report_then_wait(metrics, *, checkpoint=None):
                report(metrics, checkpoint=checkpoint)
                time.sleep(600)  # the node, and this process with it, is killed long before

            tune.report = report_then_wait
        train_trial(drawn, base)

    def kill_the_worker_node_once_both_trials_have_an_epoch():
        deadline = time.time() + 400
        while time.time() < deadline:
            progress = list(storage.glob("node-dies/*/progress.csv"))
            if len(progress) == 2 and all(
                    len(path.read_text().splitlines()) >= 2 for path in progress):
                cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: raylet, workers
                killed.set()
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_the_worker_node_once_both_trials_have_an_epoch,
                              daemon=True)
    killer.start()
    try:
        config = load_experiment(QUICKSTART, [
            *sweep_overrides(sample_root, "node-dies", mlflow_server, "train.epochs=5",
                             "sweep.grace_period=5", "sweep.max_concurrent_trials=2",
                             "sweep.max_failures=2"),
            f"sweep.storage_path={storage}"])
        result = run_sweep(config, num_samples=2, address=cluster.address,
                           trainable=train_until_the_node_dies, say=lambda _: None)
    finally:
        killer.join(timeout=1)
        ray.shutdown()
        cluster.shutdown()

    assert killed.is_set(), "both trials never reported an epoch"
    assert result.trials == 2 and result.errors == 0
    failures = {trial.trial_id: trial.num_failures
                for trial in tune.ExperimentAnalysis(result.sweep_dir).trials}
    assert sorted(failures.values()) == [0, 1]  # the trial on the killed node, restarted once
    runs = trial_runs(mlflow_server, "node-dies")
    assert sorted(run.data.tags[TRIAL_TAG] for run in runs) == sorted(failures)
    for run in runs:
        assert run.info.status == "FINISHED"
        # Restarted from scratch, its first epochs would be logged twice.
        assert metric_steps(mlflow_server, run.info.run_id) == [1, 2, 3, 4, 5]
