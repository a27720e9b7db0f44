"""Does the search beat the default? Real-photo sweeps of the merge decoder at equal budget.

On the project's real-photo development set (benchmarks/experiments/flickr8k-dev.yaml:
3000 Flickr8k photos, MobileNet v1 alpha 0.25 with ImageNet weights, spaCy en_core_web_md),
over benchmarks/search_spaces/flickr8k-dev-merge.yaml (learning rate, batch, LSTM width,
dropout, schedule, label smoothing), with these rows:

  TPE + ASHA      sweep.searcher tpe, sweep.scheduler asha (grace 2, halving at each rung)
  random + FIFO   sweep.searcher random, sweep.scheduler fifo (every trial to its end)
  PBT             sweep.scheduler pbt: a random population, every --pbt-interval epochs the
                  bottom quarter continues from the top quarter with learning rate, batch,
                  dropout and smoothing perturbed (every trial to its end)
  seed recipe     the merge model of the seed (lr 0.0012, batch 32, LSTM 256, dropout 0.5),
                  trained alone, for the same epochs and early stopping

Each sweep runs once per search seed (train.seed), with as many trials as fill about
--budget trial-epochs (FIFO, PBT: budget / epochs; ASHA: budget / the epochs a trial runs on
average when half go on at each rung). Its best trial by validation CIDEr-D at the kept
epoch is promoted and fetched from MLflow as a user would (`captioning promote`), and only
then scored on the test split, greedy and beam 3, beside the most frequent caption and
nearest-neighbour retrieval. The table says the trial-epochs and minutes each sweep used.

    .venv/bin/python benchmarks/sweep_quality.py --output sweep_quality.json
    # about 70 minutes on 2 CPU cores (three strategies, two seeds); run from the
    # repository root (data.root is relative)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from common import machine_info  # noqa: E402
from quality import most_frequent, nearest_neighbour, references, scored, test_rows  # noqa: E402

from captioning.config.loading import apply_overrides, load_experiment  # noqa: E402
from captioning.config.schema import ExperimentConfig, parse_config  # noqa: E402
from captioning.tracking.model_registry import fetch, promote  # noqa: E402
from captioning.training.prepare import prepare  # noqa: E402
from captioning.training.train import train_captioner  # noqa: E402
from captioning.tune.launcher import run_sweep  # noqa: E402

HERE = Path(__file__).resolve().parent
STRATEGIES = {"tpe+asha": ("tpe", "asha"), "random+fifo": ("random", "fifo"),
              "pbt": ("random", "pbt")}


def asha_epochs(epochs: int, grace: int, reduction: int) -> float:
    """Epochs an ASHA trial runs on average when 1/reduction of the trials pass each rung."""
    total, reached, share = 0.0, 0, 1.0
    rung = grace
    while reached < epochs:
        top = min(rung, epochs)
        total += (top - reached) * share
        reached, share, rung = top, share / reduction, rung * reduction
    return total


def trials_for(scheduler: str, budget: int, epochs: int, grace: int, reduction: int) -> int:
    per_trial = asha_epochs(epochs, grace, reduction) if scheduler == "asha" else epochs
    return max(2, round(budget / per_trial))


def recipe(args: argparse.Namespace) -> list[str]:
    """What every row shares: the merge decoder, its epochs and early stopping, no SCST."""
    return ["model.decoder=merge", "encoder.keep_grid=false", f"train.epochs={args.epochs}",
            "train.patience=3", "train.scst.epochs=0"]


def sweep_config(args: argparse.Namespace, strategy: str, seed: int, work: Path
                 ) -> ExperimentConfig:
    searcher, scheduler = STRATEGIES[strategy]
    trials = trials_for(scheduler, args.budget, args.epochs, args.grace, 2)
    return load_experiment(args.experiment, [
        f"name=sweep-{strategy.replace('+', '-')}-{seed}", *recipe(args),
        f"train.backend={args.backend}", f"train.seed={seed}",
        f"sweep.search_space={args.space.resolve()}", f"sweep.searcher={searcher}",
        f"sweep.scheduler={scheduler}", f"sweep.num_samples={trials}",
        f"sweep.grace_period={args.grace}", "sweep.reduction_factor=2",
        f"sweep.startup_trials={min(args.startup, trials)}",
        f"sweep.pbt.interval={args.pbt_interval}",
        f"sweep.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"sweep.storage_path={work / 'ray_results'}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path,
                        default=HERE / "experiments" / "flickr8k-dev.yaml")
    parser.add_argument("--space", type=Path,
                        default=HERE / "search_spaces" / "flickr8k-dev-merge.yaml")
    parser.add_argument("--budget", type=int, default=42, help="trial-epochs per sweep")
    parser.add_argument("--epochs", type=int, default=6, help="at most, per trial")
    parser.add_argument("--grace", type=int, default=2, help="ASHA's first rung")
    parser.add_argument("--startup", type=int, default=4,
                        help="random trials before TPE models the results")
    parser.add_argument("--pbt-interval", type=int, default=2, help="epochs between clones")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        choices=list(STRATEGIES))
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow"])
    parser.add_argument("--output", type=Path, default=None, help="JSON file for every figure")
    args = parser.parse_args()

    print("\n".join(machine_info()))
    work = Path(tempfile.mkdtemp(prefix="captioning-sweep-quality-"))
    base = load_experiment(args.experiment, recipe(args))
    prepared = prepare(base, progress=False)
    summary = prepared.summary()
    print(f"data: {summary['train']} / {summary['val']} / {summary['test']} train / val / test "
          f"images, vocabulary {summary['vocabulary']}; at most {args.epochs} epochs a trial, "
          f"patience 3; budget {args.budget} trial-epochs a sweep")
    refs = references(prepared, "test")
    predictions, _ = most_frequent(prepared)
    rows = [("most frequent caption", "-", scored(refs, predictions)),
            ("nearest neighbour (cosine)", "-", scored(refs, nearest_neighbour(prepared)))]
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}

    for seed in args.seeds:  # the seed recipe, alone
        run = parse_config(apply_overrides(base.to_dict(), [f"train.seed={seed}"]))
        started = time.perf_counter()
        trained = train_captioner(run, model_dir=work / f"seed-recipe-{seed}",
                                  prepared=prepared, verbose=0)
        minutes = (time.perf_counter() - started) / 60
        kept = int(trained.best["epoch"])
        label = f"seed recipe (seed {seed}, epoch {kept})"
        scores = test_rows(label, work / f"seed-recipe-{seed}", prepared, False, refs)
        rows += scores
        report["runs"].append({"row": "seed recipe", "seed": seed, "trial_epochs":
                               len(trained.history), "minutes": minutes, "kept_epoch": kept,
                               "val_cider": trained.best.get("val_cider"),
                               "test": {d: s for _, d, s in scores}})
        print(f"{label}: val CIDEr-D {trained.best.get('val_cider', float('nan')):.4f}, "
              f"{len(trained.history)} epochs, {minutes:.1f} min", flush=True)

    for strategy in args.strategies:
        for seed in args.seeds:
            folder = work / f"{strategy}-{seed}"
            config = sweep_config(args, strategy, seed, folder)
            started = time.perf_counter()
            result = run_sweep(config, say=lambda _: None)
            minutes = (time.perf_counter() - started) / 60
            trial_epochs = sum(t["epochs"] for t in result.timeline)
            name = f"{strategy.replace('+', '-')}-{seed}"
            chosen = promote(result.tracking_uri, sweep_run=result.parent_run_id,
                             model_name=name)
            model_dir = fetch(f"models:/{name}@champion", result.tracking_uri,
                              folder / "promoted")
            # The promoted trial's draw (promote ranks by the kept epoch, as Ray's best may not).
            drawn = next((t["config"] for t in result.timeline
                          if t["trial_id"] == chosen.trial_id), {})
            label = f"{strategy} (seed {seed}, trial {chosen.trial_id})"
            scores = test_rows(label, model_dir, prepared, False, refs)
            rows += scores
            report["runs"].append({"row": strategy, "seed": seed, "trials": result.trials,
                                   "errors": result.errors, "trial_epochs": trial_epochs,
                                   "minutes": minutes, "val_cider": chosen.value,
                                   "chosen": chosen.trial_id, "config": drawn,
                                   "test": {d: s for _, d, s in scores}})
            print(f"{label}: {result.trials} trials, {trial_epochs} trial-epochs, "
                  f"{minutes:.1f} min; promoted val CIDEr-D {chosen.value:.4f}; "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in sorted(drawn.items())), flush=True)

    header = (f"{'row':<44} {'decode':<7} {'BLEU-4':>7} {'CIDEr-D':>7} {'ROUGE-L':>7} "
              f"{'distinct':>8}")
    print("\ntest split, " + f"{summary['test']} images:\n{header}\n" + "-" * len(header))
    for label, decode, s in rows:
        print(f"{label:<44} {decode:<7} {s['bleu4']:>7.4f} {s['cider']:>7.4f} "
              f"{s['rouge_l']:>7.4f} {s['distinct']:>8d}")
    print()
    for what in ("seed recipe", *args.strategies):
        runs = [r for r in report["runs"] if r["row"] == what]
        for decode in ("greedy", "beam 3"):
            values = [r["test"][decode]["cider"] for r in runs]
            print(f"{what:<12} {decode:<7} test CIDEr-D mean {np.mean(values):.4f} "
                  f"(seeds: {' '.join(f'{v:.4f}' for v in values)}); trial-epochs "
                  f"{' '.join(str(r['trial_epochs']) for r in runs)}; minutes "
                  + " ".join(f"{r['minutes']:.1f}" for r in runs))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n", "utf-8")
    print(f"(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
