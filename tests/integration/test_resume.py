"""A sweep whose driver is killed at any moment and resumed ends with every trial finished
exactly once, in Ray Tune and in MLflow, and trains no epoch it had already checkpointed.

One sweep of two trials, killed four times at chosen points (tests/integration/kill_points.py
says how each point is reached without depending on timing), then resumed with the user's
command."""

from __future__ import annotations

import json
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest
from kill_points import whole_histories
from mlflow import MlflowClient

from captioning.training.checkpoints import folders, storage, whole_epoch
from conftest import REPO, cli_env, metric_steps, run_cli, small_overrides, trial_runs

pytestmark = pytest.mark.slow
EPOCHS = 4


def test_a_sweep_killed_at_each_point_and_resumed_loses_no_trial_and_repeats_no_epoch(
        sample_root, tmp_path, mlflow_server):
    name, storage_path = "killed", tmp_path / "runs"
    sweep_dir = storage_path / name
    overrides = [f"name={name}", f"sweep.tracking_uri={mlflow_server}",
                 f"sweep.storage_path={storage_path}", *small_overrides(sample_root),
                 "train.score_images=5", f"train.epochs={EPOCHS}",
                 f"sweep.grace_period={EPOCHS}", "sweep.num_samples=2",
                 "sweep.max_concurrent_trials=1", "sweep.max_failures=0"]
    acks = tmp_path / "acks"
    acks.mkdir()
    seen: dict[str, list[list[dict]]] = {}

    def session(stage: str, resume: bool) -> None:
        command = [sys.executable, str(REPO / "tests" / "integration" / "kill_points.py"), stage,
                   *(["--resume"] if resume else []), *[f"--set={o}" for o in overrides]]
        done = subprocess.run(command, cwd=REPO, env=cli_env(KILL_POINTS_DIR=str(acks)),
                              capture_output=True, text=True, timeout=600,
                              start_new_session=True)  # it kills its own process group
        assert done.returncode == -9, f"stage {stage}: exit {done.returncode}\n" \
                                      f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        for trial, histories in whole_histories(sweep_dir).items():
            seen.setdefault(trial, []).extend(histories)

    # 1. Killed as the driver registers a trial's second checkpoint: the saved state still
    # points at the first, which must still be there (Ray Tune's retention deleted it).
    session("registered", resume=False)
    assert any(sorted(len(h) for h in histories) == [1, 2]
               for histories in whole_histories(sweep_dir).values())

    # 2. Killed with a checkpoint on storage that the state does not know yet; then the
    # checkpoint the state points at is lost too: the trial must go on from the newest.
    session("result", resume=True)
    filesystem, _ = storage(str(sweep_dir))
    trial_dir = max(sweep_dir.glob("trial_*"), key=lambda d: max(
        (whole_epoch(filesystem, f) or 0) for f in folders(filesystem, d.as_posix())))
    kept = max(folders(filesystem, trial_dir.as_posix()),
               key=lambda f: whole_epoch(filesystem, f) or 0)
    for folder in folders(filesystem, trial_dir.as_posix()):
        if folder != kept:
            filesystem.delete_dir(folder)

    # 3. Killed as the first trial finishes (its MLflow run is FINISHED already).
    session("complete", resume=True)
    # 4. Killed while a checkpoint is copied to storage: that copy is not whole.
    session("copy", resume=True)
    assert any(whole_epoch(filesystem, f) is None
               for d in sweep_dir.glob("trial_*") for f in folders(filesystem, d.as_posix()))

    resumed = run_cli("sweep", "--resume", *[f"--set={o}" for o in overrides], timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sweep finished: 2 trials (0 failed)" in resumed.stdout

    from ray import tune

    assert sorted(t.status for t in tune.ExperimentAnalysis(str(sweep_dir)).trials) == [
        "TERMINATED", "TERMINATED"]
    client = MlflowClient(mlflow_server)
    [parent] = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                  filter_string=f"tags.`captioning.sweep` = '{name}'")
    assert parent.info.status == "FINISHED"
    runs = trial_runs(mlflow_server, name)
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    for run in runs:
        trial = run.data.tags["captioning.trial_id"]
        [final] = folders(filesystem, (sweep_dir / f"trial_{trial}").as_posix())
        history = json.loads(Path(final, "history.json").read_text())
        assert [m["epoch"] for m in history] == list(range(1, EPOCHS + 1))
        # Every epoch in MLflow once, with the values of the trained model's own history.
        assert metric_steps(mlflow_server, run.info.run_id) == list(range(1, EPOCHS + 1))
        logged = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.value for m in logged] == pytest.approx([m["val_loss"] for m in history])
        # An epoch trained again would differ (another shuffle, other dropout masks).
        for earlier in seen.get(trial, []):
            assert history[:len(earlier)] == earlier, "a checkpointed epoch was trained again"
        assert posixpath.basename(final).startswith("checkpoint_")
