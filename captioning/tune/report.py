"""A sweep's report, read back from MLflow alone: what mattered, what was tried, what won.

The finished trials of a sweep's parent run, each at its kept epoch (its best sweep.metric),
become an Optuna study over the sweep's own search space (the parent run's `search_space`
param), so Optuna's own code does the rest: parameter importances (its default evaluator,
fANOVA, over the keys every trial drew), the parallel coordinates of the searched keys against
the metric, and the metric over the trials in the order they started (the optimisation
history). Beside them, a table of the top trials with sample captions of their kept epoch.
Files go to the parent run under report/ (PNG, and report.md), so they show in MLflow's
artifact viewer; `captioning report` and the end of `captioning sweep` print the summary.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from captioning.tracking.model_registry import find_sweep
from captioning.tracking.runs import (
    CLONES_TAG,
    finished_trials,
    param_text,
    recorded_search_space,
)
from captioning.tune.search_space import Param, _meets

log = logging.getLogger(__name__)

TOP = 5  # trials in the table


@dataclass
class Trial:
    run_id: str
    name: str
    started: int  # ms since the epoch
    params: dict[str, Any]  # the searched keys this trial drew
    value: float  # sweep.metric at its kept epoch
    epoch: int
    samples: list[str] = field(default_factory=list)  # predicted captions, kept epoch


def _typed(value: str, param: Param) -> Any:
    """An MLflow param (a string, as runs.param_text wrote it) as the space's distribution
    gives it."""
    if param.choice is not None:
        return next((c for c in param.choice if param_text(c) == value), value)
    if param.integer is not None:
        return int(float(value))
    return float(value)


def _drawn(params: dict[str, str], space: dict[str, Param]) -> dict[str, Any]:
    """The keys of `space` a trial drew: a `when` key only where its condition held."""
    drawn: dict[str, Any] = {}
    for key, param in space.items():
        if key not in params:
            continue
        if all(_meets(drawn.get(other), wanted) for other, wanted in (param.when or {}).items()):
            drawn[key] = _typed(params[key], param)
    return drawn


def _ended_with(run: Any, space: dict[str, Param]) -> dict[str, str]:
    """The searched values a trial's run ended with: its params (its first draw), or where
    PBT cloned another trial into it, the draw of its last clone (run.data.tags[CLONES_TAG])."""
    params = dict(run.data.params)
    try:
        last = json.loads(run.data.tags.get(CLONES_TAG, "[]"))[-1]["draw"]
    except (ValueError, IndexError, KeyError, TypeError):
        return params
    return {**{k: v for k, v in params.items() if k not in space},
            **{k: param_text(v) for k, v in last.items() if k in space}}


def _samples(client: MlflowClient, run_id: str, folder: Path) -> list[str]:
    try:
        path = client.download_artifacts(run_id, "val_samples.json", str(folder))
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        column = table["columns"].index("prediction")
        return [row[column] for row in table["data"][:3]]
    except Exception:  # noqa: BLE001 - a trial without samples still has its row
        return []


def trials(client: MlflowClient, sweep: Any, space: dict[str, Param], metric: str, mode: str
           ) -> list[Trial]:
    """Every finished trial of `sweep` that logged `metric`, at its kept epoch."""
    found = []
    with tempfile.TemporaryDirectory(prefix="captioning-report-") as folder:
        for run in finished_trials(client, sweep):
            history = [m for m in client.get_metric_history(run.info.run_id, metric)
                       if math.isfinite(m.value)]
            if not history:
                continue
            kept = (max if mode == "max" else min)(history, key=lambda m: m.value)
            found.append(Trial(run.info.run_id, run.info.run_name or run.info.run_id,
                               run.info.start_time, _drawn(_ended_with(run, space), space),
                               kept.value, kept.step,
                               _samples(client, run.info.run_id, Path(folder))))
    return sorted(found, key=lambda t: t.started)


def _distribution(param: Param) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if param.choice is not None:
        return CategoricalDistribution(param.choice)
    if param.integer is not None:
        return IntDistribution(*param.integer, step=param.step or 1)
    low, high = param.uniform or param.loguniform
    return FloatDistribution(low, high, log=param.loguniform is not None)


def study_of(found: list[Trial], space: dict[str, Param], mode: str) -> Any:
    """The finished trials as an Optuna study (in the order they started)."""
    import optuna

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for trial in found:
        study.add_trial(optuna.trial.create_trial(
            params=trial.params, value=trial.value,
            distributions={k: _distribution(space[k]) for k in trial.params}))
    return study


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA, seeded), over the keys every trial drew; empty
    with fewer than two trials or no such key."""
    import optuna

    if len(study.trials) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError) as error:  # e.g. no key common to all trials
        log.info("no parameter importances: %s", error)
        return {}


def _figures(study: Any, folder: Path, metric: str, weights: dict[str, float]
             ) -> dict[str, Path]:
    """Optuna's own matplotlib figures of `study`, as PNG files, and its plotly ones in
    report.html."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    made = {}
    charts = {"history.png": lambda: plots.plot_optimization_history(
        study, target_name=metric),
              "parallel_coordinates.png": lambda: plots.plot_parallel_coordinate(
                  study, target_name=metric)}
    if weights:
        charts["importances.png"] = lambda: plots.plot_param_importances(
            study, evaluator=_seeded(), target_name=metric)
    for name, chart in charts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = chart()
        figure = axes.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=90)
        matplotlib.pyplot.close(figure)
        made[name] = folder / name
    made["report.html"] = _interactive(study, folder / "report.html", metric, weights)
    return made


def _interactive(study: Any, path: Path, metric: str, weights: dict[str, float]) -> Path:
    """The same three figures by Optuna's plotly code, interactive (hover a point for its
    trial and values), in one self-contained HTML file: plotly.js inside it once, so it
    opens in a browser with no network (MLflow 3.17's inline viewer showed its headings but
    not its plots in headless Chromium: download it from there; the PNGs show inline)."""
    from optuna import visualization as plots

    figures = [("Optimisation history", plots.plot_optimization_history(
        study, target_name=metric)), ("Parallel coordinates", plots.plot_parallel_coordinate(
            study, target_name=metric))]
    if weights:
        figures.append(("Parameter importances", plots.plot_param_importances(
            study, evaluator=_seeded(), target_name=metric)))
    parts = [f"<h2>{title}</h2>" + figure.to_html(full_html=False,
                                                   include_plotlyjs=index == 0)
             for index, (title, figure) in enumerate(figures)]
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep report"
                    "</title></head><body style='font-family:sans-serif'>"
                    + "".join(parts) + "</body></html>", "utf-8")
    return path


def _seeded() -> Any:
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def markdown(found: list[Trial], weights: dict[str, float], metric: str, mode: str) -> str:
    best = sorted(found, key=lambda t: t.value, reverse=mode == "max")[:TOP]
    lines = [f"# Sweep report: {len(found)} finished trials, ranked by {metric} ({mode})", ""]
    if weights:
        lines += ["## Parameter importances (Optuna, fANOVA)", "", "| key | importance |",
                  "| --- | ---: |", *(f"| {k} | {v:.3f} |" for k, v in weights.items()), ""]
    lines += [f"## Top {len(best)} trials", "", f"| trial | {metric} | epoch | drawn | "
              "sample captions (kept epoch) |", "| --- | ---: | ---: | --- | --- |"]
    for trial in best:
        drawn = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        lines.append(f"| {trial.name} | {trial.value:.4f} | {trial.epoch} | {drawn} | "
                     + " / ".join(s.replace("|", "/") for s in trial.samples) + " |")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass
class Report:
    sweep_run_id: str
    trials: list[Trial]
    importances: dict[str, float]
    files: list[str]  # under report/ in the parent run
    summary: list[str]  # what the command prints


def make_report(tracking_uri: str, *, sweep_run: str | None = None,
                experiment: str | None = None) -> Report:
    """Read a sweep's trials back from MLflow, write its report to the parent run's report/
    folder (replacing one written before), and say what it found."""
    client = MlflowClient(tracking_uri)
    sweep = find_sweep(client, experiment, sweep_run)
    params = sweep.data.params
    metric, mode = params.get("metric", "val_cider"), params.get("mode", "max")
    space = {key: Param.model_validate(spec)
             for key, spec in recorded_search_space(sweep).items()}
    found = trials(client, sweep, space, metric, mode)
    study = study_of(found, space, mode) if found else None
    weights = importances(study) if study is not None else {}
    with tempfile.TemporaryDirectory(prefix="captioning-report-") as tmp:
        folder = Path(tmp)
        files = _figures(study, folder, metric, weights) if study is not None else {}
        (folder / "report.md").write_text(markdown(found, weights, metric, mode), "utf-8")
        files["report.md"] = folder / "report.md"
        for path in files.values():
            client.log_artifact(sweep.info.run_id, str(path), "report")
    summary = [f"sweep run {sweep.info.run_id}: {len(found)} finished trial(s) ranked by "
               f"{metric}"]
    if found:
        best = (max if mode == "max" else min)(found, key=lambda t: t.value)
        summary.append(f"best: {best.name}, {metric} {best.value:.4f} at epoch {best.epoch} ("
                       + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()) + ")")
    if weights:
        summary.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()))
    summary.append(f"report files: {', '.join(sorted(files))} (the parent run's report/ "
                   "folder in the MLflow UI)")
    return Report(sweep.info.run_id, found, weights, sorted(files), summary)
