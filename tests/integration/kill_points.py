"""Runs (or resumes) a sweep that kills itself, driver and local Ray together, at one chosen
point: tests/integration/test_resume.py and benchmarks/resume_stress.py drive it, one session
per point.

    python tests/integration/kill_points.py STAGE [--resume] [--set KEY=VALUE ...]

STAGE is where this session dies (`none`: it runs to the end):
  registered  the driver has just registered a trial's second checkpoint of the session, while
              the sweep state on storage still points at the first (Ray Tune's own retention
              deleted that first one here: the bug of issue 11);
  result      the driver has a trial's result whose checkpoint is on storage but not yet
              registered, the state pointing at the one before;
  complete    a trial has just finished, and its MLflow run too;
  copy        a trial's second checkpoint of the session is being copied to storage: the copy
              is cut off (its last.keras half written), then everything is killed.

So that each point is reached deterministically rather than by timing, the sweep state is
saved every second (TUNE_GLOBAL_CHECKPOINT_S=1) and a trial reports a checkpoint only once the
whole state kept on storage points at its previous one (the driver acknowledges it in
KILL_POINTS_DIR). The callback and the trainable below are saved with the sweep (tuner.pkl)
and come back on resume; with KILL_POINTS_STAGE unset, as in `captioning sweep --resume`, they
do nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from ray import tune

from captioning.training.checkpoints import folders, storage, whole_epoch
from captioning.tune.resume import whole_state

STAGES = ("registered", "result", "complete", "copy", "none")


def whole_histories(sweep_dir: Path, prefix: str = "trial_") -> dict[str, list[list[dict]]]:
    """Trial id -> the history.json of each whole checkpoint its folder (`prefix` + id) has,
    in a sweep's folder on local storage: what a resumed sweep must not train again."""
    filesystem, _ = storage(str(sweep_dir))
    found: dict[str, list[list[dict]]] = {}
    for trial_dir in sorted(Path(sweep_dir).glob(f"{prefix}*")):
        for folder in folders(filesystem, trial_dir.as_posix()):
            if whole_epoch(filesystem, folder) is not None:
                history = Path(folder, "history.json").read_text(encoding="utf-8")
                found.setdefault(trial_dir.name.removeprefix(prefix), []).append(
                    json.loads(history))
    return found


def kill_everything() -> None:
    """SIGKILL the driver's process group (the driver and the Ray it started: its workers die
    with it), from the driver or from a worker (which runs in a group of its own)."""
    os.killpg(int(os.environ["KILL_POINTS_PGID"]), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class KillPoint(tune.Callback):
    """Driver side: acknowledges durable checkpoints, and kills at the stage's point."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir
        self.registered: dict[str, list[tuple[int, int]]] = {}  # trial -> (iteration, epoch)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.registered = {}  # counted per session

    @staticmethod
    def stage() -> str:
        return os.environ.get("KILL_POINTS_STAGE", "none")

    def durable(self, trial_id: str) -> list[int]:
        """Epochs of this session's checkpoints of the trial that the saved state has seen."""
        snapshot = whole_state(self.sweep_dir)  # what a resume restores at the oldest
        saved = snapshot.iteration if snapshot else None
        return [epoch for iteration, epoch in self.registered.get(trial_id, [])
                if saved is not None and iteration <= saved]

    def on_step_end(self, iteration, trials, **info) -> None:
        folder = os.environ.get("KILL_POINTS_DIR")
        if not folder or not self.registered:
            return
        for trial_id in self.registered:
            epochs = self.durable(trial_id)
            if epochs:
                ack = Path(folder, f"ack-{trial_id}")
                tmp = ack.with_suffix(".tmp")
                tmp.write_text(str(max(epochs)))
                tmp.replace(ack)

    def on_trial_save(self, iteration, trials, trial, **info) -> None:
        epoch = int(trial.last_result.get("epoch", 0))
        self.registered.setdefault(trial.trial_id, []).append((iteration, epoch))
        if self.stage() == "registered" and len(self.registered[trial.trial_id]) == 2:
            kill_everything()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if (self.stage() == "result" and result.get("should_checkpoint")
                and self.durable(trial.trial_id)):
            kill_everything()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.stage() == "complete":
            kill_everything()


def train_trial(drawn, base):
    """Worker side: `captioning.tune.trainable.train_trial`, reporting a checkpoint only once
    the state on storage points at the trial's previous one; at stage `copy`, the second copy is
    cut."""
    import ray.train._internal.storage as ray_storage
    import ray.tune

    from captioning.tune import trainable

    folder = os.environ.get("KILL_POINTS_DIR")
    real_report, real_copy = ray.tune.report, ray_storage._pyarrow_fs_copy_files
    trial_id = ray.tune.get_context().get_trial_id()
    sent: list[int] = []  # epochs this session reported with a checkpoint

    def acknowledged() -> int:
        try:
            return int(Path(folder, f"ack-{trial_id}").read_text())
        except (OSError, ValueError):
            return 0

    def cut_copy(source, destination, source_filesystem=None, destination_filesystem=None):
        real_copy(source, destination, source_filesystem=source_filesystem,
                  destination_filesystem=destination_filesystem)
        last = Path(destination, "last.keras")
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        kill_everything()

    def report(metrics, *, checkpoint=None):
        if checkpoint is not None and folder:
            deadline = time.monotonic() + 300
            while sent and acknowledged() < sent[-1]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the driver never acknowledged epoch {sent[-1]}")
                time.sleep(0.05)
            sent.append(int(metrics["epoch"]))
            if KillPoint.stage() == "copy" and len(sent) == 2:
                ray_storage._pyarrow_fs_copy_files = cut_copy
        real_report(metrics, checkpoint=checkpoint)

    ray.tune.report = report
    trainable.train_trial(drawn, base)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    os.environ["KILL_POINTS_STAGE"] = args.stage
    os.environ["KILL_POINTS_PGID"] = str(os.getpgid(0))  # Ray's workers inherit it
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    if os.environ.get("KILL_POINTS_DIR"):  # acknowledgements are per session
        for ack in Path(os.environ["KILL_POINTS_DIR"]).glob("ack-*"):
            ack.unlink()

    from captioning.config.loading import load_experiment
    from captioning.tune.launcher import _storage, run_sweep
    from captioning.tune.resume import CheckpointKeeper

    CheckpointKeeper.CHECK_EVERY_S = 0.5  # the acknowledgements above wait for its copies

    config = load_experiment(args.experiment, args.overrides)
    sweep_dir = f"{_storage(config, None)}/{config.name}"
    result = run_sweep(config, resume=args.resume, trainable=train_trial,
                       callbacks=[KillPoint(sweep_dir)], say=print)
    print(f"sweep finished: {result.trials} trials ({result.errors} failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
