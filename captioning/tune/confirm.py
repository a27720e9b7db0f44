"""sweep.confirm: the search's best configurations trained again with new seeds.

One validation number on a few hundred photos moves by a few hundredths of CIDEr-D between
seeds, so the search's best trial is partly luck. When the search ends, its `top` best
distinct configurations (each trial at its kept epoch) are trained again, `seeds` times each
with train.seed + 1, ..., + seeds, as trials of a second Ray Tune experiment beside the
search's (`<name>-confirm` in the sweep's storage: parallel, retried, resumable like any
other), each an MLflow run nested under the sweep's parent run and tagged with the search
trial it confirms (tracking/runs.py: CONFIRMS_TAG). The configurations are then ranked by the
mean of their confirmation runs' kept scores (the search's own run, chosen because it scored
high, is left out of the mean: it would lift it); the parent run gets confirm/confirm.json and
confirm/confirm.md, and `captioning promote` ranks by the means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from captioning.config.schema import ExperimentConfig
from captioning.evaluation.spread import spread
from captioning.tune import search_space as spaces
from captioning.tune.mlflow_callback import finished, trial_epochs
from captioning.tune.resume import CheckpointKeeper
from captioning.tune.trainable import kept_row, trial_dirname, trial_name

SUFFIX = "-confirm"  # the confirmation's Ray experiment: <sweep name>-confirm


@dataclass
class Confirmation:
    rows: list[dict[str, Any]]  # per configuration, best mean first (confirm.json)
    unfinished: int  # confirmation trials left to run (Ctrl-C)


def kept(frame: Any, metric: str, mode: str) -> dict[str, float] | None:
    """A trial's scores at its kept epoch (the best by `metric`) from its results, or None."""
    row = kept_row(frame, metric, mode)
    if row is None:
        return None
    return {k: float(row[k]) for k in row.index
            if (k == "epoch" or k.startswith("val_")) and row[k] == row[k]}


def top_configurations(results: Any, metric: str, mode: str, top: int) -> list[dict[str, Any]]:
    """The `top` best distinct draws of the search, each at its best trial's kept epoch:
    [{trial_id, draw, value}], best first (of equal values, the earlier trial)."""
    scored = []
    for index, result in enumerate(results):
        if result.error is not None:
            continue
        scores = kept(result.metrics_dataframe, metric, mode)
        if scores is None or not math.isfinite(scores.get(metric, math.nan)):
            continue
        scored.append((scores[metric], index, result))
    sign = -1 if mode == "max" else 1
    scored.sort(key=lambda s: (sign * s[0], s[1]))
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    for value, _, result in scored:
        draw = spaces.drawn_values(result.config)
        key = json.dumps(draw, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        chosen.append({"trial_id": result.metrics["trial_id"], "draw": draw, "value": value})
        if len(chosen) == top:
            break
    return chosen


def points(chosen: list[dict[str, Any]], seed: int, seeds: int) -> list[dict[str, Any]]:
    """One confirmation trial per configuration and new seed."""
    return [{**c["draw"], "train.seed": seed + i, spaces.CONFIRMS: c["trial_id"]}
            for c in chosen for i in range(1, seeds + 1)]


def run(function: Any, config: ExperimentConfig, search: Any, storage_path: str,
        callbacks: list[tune.Callback], base: dict[str, Any],
        fit: Callable[[tune.Tuner], Any], say: Callable[[str], None]) -> Confirmation:
    """Train the confirmation trials of the finished search's results `search` (or continue
    them: a confirmation Ray saved is resumed) and rank the configurations by their mean."""
    confirm = config.sweep.confirm
    chosen = top_configurations(search, config.sweep.metric, config.sweep.mode, confirm.top)
    folder = f"{storage_path}/{config.name}{SUFFIX}"
    todo = points(chosen, config.train.seed, confirm.seeds)
    if tune.Tuner.can_restore(folder):
        say(f"resuming the confirmation in {folder}")
        tuner = tune.Tuner.restore(folder, function, resume_errored=True)
    else:
        say(f"confirming the {len(chosen)} best configuration(s) with {confirm.seeds} new "
            f"seeds each: {len(todo)} trials in {folder}")
        tuner = tune.Tuner(
            function, param_space={spaces.CONFIRM: tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                metric=config.sweep.metric, mode=config.sweep.mode,
                max_concurrent_trials=config.sweep.max_concurrent_trials,
                trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=f"{config.name}{SUFFIX}", storage_path=storage_path,
                callbacks=[*callbacks, CheckpointKeeper(folder)],
                failure_config=tune.FailureConfig(max_failures=config.sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    results = fit(tuner)
    unfinished = len(todo) - sum(
        finished(r.metrics, r.error is not None, trial_epochs(base, r.config)) for r in results)
    return Confirmation(rank(chosen, results, config.sweep.metric, config.sweep.mode),
                        max(unfinished, 0))


def rank(chosen: list[dict[str, Any]], results: Any, metric: str, mode: str
         ) -> list[dict[str, Any]]:
    """Per configuration: each seed's kept scores, and the mean and spread of every score all
    its seeds have; best mean of `metric` first."""
    runs: dict[str, dict[int, dict[str, float]]] = {c["trial_id"]: {} for c in chosen}
    for result in results:
        confirm = (result.config or {}).get(spaces.CONFIRM) or {}
        scores = None if result.error is not None else kept(result.metrics_dataframe, metric,
                                                             mode)
        if scores is not None and confirm.get(spaces.CONFIRMS) in runs:
            runs[confirm[spaces.CONFIRMS]][int(confirm["train.seed"])] = scores
    rows = []
    for c in chosen:
        seeds = dict(sorted(runs[c["trial_id"]].items()))
        names = set.intersection(*(set(s) for s in seeds.values())) if seeds else set()
        means = {name: spread([s[name] for s in seeds.values()]).to_dict()
                 for name in sorted(names - {"epoch"})}
        rows.append({"trial_id": c["trial_id"], "name": trial_name(c["draw"]),
                     "draw": c["draw"], "search": c["value"],
                     "seeds": {str(k): v for k, v in seeds.items()}, "spread": means})
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r["spread"].get(metric) is None,
                                       sign * r["spread"].get(metric, {}).get("mean", 0.0)))


def table(rows: list[dict[str, Any]], metric: str) -> str:
    """confirm.md: the configurations ranked by their mean `metric` over the new seeds."""
    lines = [f"| rank | configuration (search trial) | search {metric} | {metric} per seed | "
             "mean | std | 95% interval |", "| ---: | --- | ---: | --- | ---: | ---: | --- |"]
    for number, row in enumerate(rows, 1):
        per_seed = ", ".join(f"{s}: {v[metric]:.4f}" for s, v in row["seeds"].items()
                             if metric in v) or "none finished"
        stats = row["spread"].get(metric)
        figures = ("- | - | -" if stats is None else
                   f"{stats['mean']:.4f} | {stats['std']:.4f} | "
                   f"{stats['low']:.4f} .. {stats['high']:.4f}")
        lines.append(f"| {number} | {row['name']} ({row['trial_id']}) | {row['search']:.4f} | "
                     f"{per_seed} | {figures} |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], metric: str, folder: Path) -> dict[str, Path]:
    """confirm.json and confirm.md in `folder`, for the parent run's confirm/ artifacts."""
    files = {"confirm.json": folder / "confirm.json", "confirm.md": folder / "confirm.md"}
    files["confirm.json"].write_text(json.dumps(
        {"metric": metric, "configurations": rows}, indent=2, default=str), encoding="utf-8")
    files["confirm.md"].write_text(table(rows, metric), encoding="utf-8")
    return files
