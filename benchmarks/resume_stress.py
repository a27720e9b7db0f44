"""Kill a sweep's driver at random moments and resume it, N times in a row; count what is lost.

Each round starts `captioning sweep` (the user's command, on the built-in sample data), sends
SIGKILL to its whole process group (the driver and its local Ray) after a random delay, then
runs the same command with --resume, again and again. When a sweep has finished, the next
round starts a new one. At the end every sweep is checked:

  lost trials         trials that are not TERMINATED in Ray Tune and FINISHED in MLflow once
  failed trials       trials Ray Tune ended in ERROR (before the fix: "Could not recover from
                      checkpoint as it does not exist on storage anymore")
  epochs twice/gap    MLflow runs whose epochs are not exactly 1..n, each once
  trained again       epochs that were in a whole checkpoint on storage at a kill and whose
                      values changed afterwards (trained a second time)

    .venv/bin/python benchmarks/resume_stress.py                   # 10 kills, ~15 min on 2 cores
    .venv/bin/python benchmarks/resume_stress.py --kills 20 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's captioning, as its sweeps use
# What a resumed sweep must not train again: the same reading the resume test makes.
sys.path.insert(0, str(REPO / "tests" / "integration"))
from kill_points import whole_histories  # noqa: E402


def sweep_command(name: str, work: Path, data: Path, resume: bool) -> list[str]:
    overrides = [f"name={name}", f"data.root={data}",
                 f"sweep.tracking_uri=sqlite:///{work}/mlflow.db", "encoder.weights=none",
                 "encoder.image_size=75", "train.score_images=10", "train.epochs=5",
                 "sweep.grace_period=2", "sweep.num_samples=5", "sweep.max_concurrent_trials=2",
                 "sweep.max_failures=2"]
    return [sys.executable, "-m", "captioning.cli", "sweep", "--storage", str(work / "runs"),
            *[f"--set={o}" for o in overrides], *(["--resume"] if resume else [])]


def check(name: str, work: Path, seen: dict[str, list[list[dict]]]) -> dict[str, int]:
    from mlflow import MlflowClient
    from ray import tune

    from captioning.training.checkpoints import folders, storage

    sweep_dir = work / "runs" / name
    trials = tune.ExperimentAnalysis(str(sweep_dir)).trials
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`captioning.trial_id` != ''")
    by_trial: dict[str, list] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["captioning.trial_id"], []).append(run)
    counts = {"trials": len(trials), "lost": 0, "failed": 0, "epochs twice/gap": 0,
              "trained again": 0}
    filesystem, _ = storage(str(sweep_dir))
    for trial in trials:
        mine = by_trial.get(trial.trial_id, [])
        if trial.status != "TERMINATED" or len(mine) != 1 or mine[0].info.status != "FINISHED":
            counts["lost"] += 1
        counts["failed"] += trial.status == "ERROR"
        for run in mine:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
            if steps != list(range(1, len(steps) + 1)):
                counts["epochs twice/gap"] += 1
        kept = folders(filesystem, (sweep_dir / f"trial_{trial.trial_id}").as_posix())
        if kept:
            final = json.loads(Path(kept[-1], "history.json").read_text())
            counts["trained again"] += sum(
                any(a != b for a, b in zip(final, earlier, strict=False))
                for earlier in seen.get(trial.trial_id, []))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills in all (default 10)")
    parser.add_argument("--min-delay", type=float, default=8.0,
                        help="shortest run before a kill, seconds (default 8)")
    parser.add_argument("--max-delay", type=float, default=45.0,
                        help="longest run before a kill, seconds (default 45)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temp dir)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="resume-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "sample"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CAPTIONING_CACHE_DIR": str(work / "cache")}
    if not data.exists():
        subprocess.run([sys.executable, "-m", "captioning.cli", "sample-data", str(data),
                        "--images", "300"], env=env, check=True, capture_output=True)
    print(f"work folder {work}; {args.kills} kills, delays {args.min_delay:g}-"
          f"{args.max_delay:g} s (seed {args.seed})")

    sweeps: list[str] = []
    seen: dict[str, dict[str, list[list[dict]]]] = {}
    kills, resume, logs = 0, False, work / "logs"
    logs.mkdir(exist_ok=True)
    while kills < args.kills or resume:
        if not resume:
            sweeps.append(f"stress-{len(sweeps) + 1}")
        name = sweeps[-1]
        killing = kills < args.kills
        delay = rng.uniform(args.min_delay, args.max_delay) if killing else None
        log = logs / f"{name}-{kills:02d}.log"
        with log.open("w") as out:
            process = subprocess.Popen(sweep_command(name, work, data, resume), cwd=work,
                                       env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        if code is None:
            kills += 1
            for trial, histories in whole_histories(work / "runs" / name).items():
                seen.setdefault(name, {}).setdefault(trial, []).extend(histories)
            print(f"kill {kills:2d}: {name} after {delay:5.1f} s")
            resume = True
        elif code == 0:
            print(f"{name} finished{' (resumed)' if resume else ''}")
            resume = False
        else:
            print(f"{name}: exit code {code}, see {log}")
            return 1

    totals = {"trials": 0, "lost": 0, "failed": 0, "epochs twice/gap": 0, "trained again": 0}
    print(f"\n{'sweep':<10} " + " ".join(f"{k:>16}" for k in totals))
    for name in sweeps:
        counts = check(name, work, seen.get(name, {}))
        print(f"{name:<10} " + " ".join(f"{counts[k]:>16}" for k in totals))
        for key in totals:
            totals[key] += counts[key]
    print(f"{'total':<10} " + " ".join(f"{totals[k]:>16}" for k in totals))
    print(f"\ntrials lost: {totals['lost']} of {totals['trials']} in {len(sweeps)} sweep(s), "
          f"after {kills} kills")
    return 0 if not any(totals[k] for k in ("lost", "failed", "epochs twice/gap",
                                            "trained again")) else 1


if __name__ == "__main__":
    sys.exit(main())
