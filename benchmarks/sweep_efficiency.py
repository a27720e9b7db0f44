"""Sweep efficiency: how much of a sweep's time and work goes into training useful trials.

Runs the quickstart sweep on the sample data with a private MLflow store and storage path,
then prints, against the goals of the sweep issue:

  feature extractions per encoder          goal: exactly 1, however many trials used it
  epochs run with ASHA / trials x max      goal: at most half
  share of wall time with a trial running  goal: at least 80% after start-up

    .venv/bin/python benchmarks/sweep_efficiency.py                # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/sweep_efficiency.py --num-samples 12 --epochs 12
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import machine_info

from captioning.config.loading import load_experiment
from captioning.tune.launcher import run_sweep

REPO = Path(__file__).resolve().parents[1]


def covered(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None,
                        help="ASHA's maximum (default: the quickstart's train.epochs)")
    parser.add_argument("--images", type=int, default=400, help="sample-data images")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sweep-efficiency-"))
    config = load_experiment(REPO / "experiments" / "quickstart.yaml", [
        "name=efficiency", f"data.root={work / 'data'}", f"data.sample_images={args.images}",
        f"sweep.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"sweep.storage_path={work / 'ray_results'}", f"sweep.num_samples={args.num_samples}",
        "train.score_images=50", *([f"train.epochs={args.epochs}"] if args.epochs else [])])
    args.epochs = config.train.epochs
    print("== sweep efficiency ==")
    for line in machine_info():
        print(line)
    print(f"sweep: {args.num_samples} trials, up to {args.epochs} epochs, ASHA grace "
          f"{config.sweep.grace_period}, reduction {config.sweep.reduction_factor}, "
          f"{config.sweep.max_concurrent_trials} at a time, {args.images} sample images")
    started = time.time()
    result = run_sweep(config, say=lambda _: None)
    finished = time.time()

    used: Counter[str] = Counter()
    extractions: Counter[str] = Counter()
    for trial in result.timeline:
        encoder = trial["config"].get("encoder.name", config.encoder.name)
        used[encoder] += 1
        extractions[encoder] += trial["features_extracted"]
    print()
    print(f"{'encoder':<16} {'trials':>6} {'feature extractions':>20}")
    for encoder, trials in sorted(used.items()):
        print(f"{encoder:<16} {trials:>6} {extractions[encoder]:>20}")

    epochs = sum(t["epochs"] for t in result.timeline)
    budget = len(result.timeline) * args.epochs
    print(f"\nepochs run: {epochs} of {budget} (trials x max epochs): {epochs / budget:.0%}"
          " (goal: at most 50%)")

    first_start = min(t["start"] for t in result.timeline)
    last_end = max(t["end"] for t in result.timeline)
    busy = covered([(t["start"], t["end"]) for t in result.timeline])
    print(f"wall time: {finished - started:.0f} s in all; start-up before the first trial "
          f"{first_start - started:.0f} s; wrap-up after the last {finished - last_end:.0f} s")
    print(f"a trial was running for {busy:.0f} s of the {last_end - first_start:.0f} s between "
          f"the first trial's start and the last one's end: {busy / (last_end - first_start):.0%}"
          " (goal: at least 80%)")
    print(f"best {config.sweep.metric}: {result.best['metrics'][config.sweep.metric]:.4f} "
          f"(trial {result.best['trial_id']})" if result.best else "no best trial")
    print(f"(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
