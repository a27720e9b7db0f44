"""A sweep's report, read back from MLflow alone: what mattered, what was tried, what won.

The finished trials of a sweep's parent run, each at its kept epoch (its best sweep.metric),
become an Optuna study over the sweep's own search space (the parent run's `search_space`
param), so Optuna's own code does most of the rest: parameter importances (fANOVA, over the
keys every trial drew; with a caution where fewer than ENOUGH trials trained past the first
rung), the metric over the trials in the order they started (the optimisation history); the
parallel coordinates of the searched keys against the metric are drawn here (parallel_
coordinates). Beside them, a table of the top trials with sample captions of their kept epoch.
Files go to the parent run under report/ (PNG, and report.md), so they show in MLflow's
artifact viewer; `captioning report` and the end of `captioning sweep` print the summary.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import textwrap
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
ENOUGH = 20  # trials past the first rung below which the importances get a caution


@dataclass
class Trial:
    run_id: str
    name: str
    started: int  # ms since the epoch
    params: dict[str, Any]  # the searched keys this trial drew
    value: float  # sweep.metric at its kept epoch
    epoch: int
    samples: list[str] = field(default_factory=list)  # predicted captions, kept epoch
    reported: int = 0  # the last epoch it reported sweep.metric for


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
            logged = client.get_metric_history(run.info.run_id, metric)
            history = [m for m in logged if math.isfinite(m.value)]
            if not history:
                continue
            kept = (max if mode == "max" else min)(history, key=lambda m: m.value)
            found.append(Trial(run.info.run_id, run.info.run_name or run.info.run_id,
                               run.info.start_time, _drawn(_ended_with(run, space), space),
                               kept.value, kept.step,
                               _samples(client, run.info.run_id, Path(folder)),
                               max(m.step for m in logged)))
    return sorted(found, key=lambda t: t.started)


def _distribution(param: Param) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

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
    """The figures of `study` as PNG files (Optuna's matplotlib history and importances, a
    row's height a key; our parallel coordinates), and Optuna's plotly ones in report.html."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    keys = [*weights, *sorted({k for t in study.trials for k in t.params} - set(weights))]
    charts = {"history.png": (lambda: plots.plot_optimization_history(
        study, target_name=metric).figure, 5.0),
              "parallel_coordinates.png": (lambda: parallel_coordinates(study, metric, keys),
                                           None)}
    if weights:
        charts["importances.png"] = (lambda: plots.plot_param_importances(
            study, evaluator=_seeded(), target_name=metric).figure,
            max(3.0, 1.4 + 0.35 * len(weights)))
    made = {}
    for name, (chart, height) in charts.items():
        # Optuna sets the ggplot style for good (plt.style.use): here only for its figure.
        with warnings.catch_warnings(), plt.style.context("default"):
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            figure = chart()
            if height is not None:
                figure.set_size_inches(9, height)
                figure.tight_layout()
            figure.savefig(folder / name, dpi=90)
        plt.close(figure)
        made[name] = folder / name
    made["report.html"] = _interactive(study, folder / "report.html", metric, weights)
    return made


_NOT_DRAWN, _MISSING_Y = object(), -0.12  # a `when` key a trial did not draw: under its axis


def parallel_coordinates(study: Any, metric: str, keys: list[str]) -> Any:
    """Each trial a line through its metric and each of `keys`, an axis each, coloured by the
    metric. An axis spans its key's distribution (loguniform: on a log scale), marked with
    values as drawn (0.0001, 0.001, 0.01; "not drawn" under it); axes are spaced by what their
    texts (keys wrapped at their dots) need: the figure widens with the keys, no text overlaps."""
    from matplotlib import colormaps, style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maximize = study.direction.name == "MAXIMIZE"
    trials = sorted((t for t in study.trials if t.value is not None and math.isfinite(t.value)),
                    key=lambda t: t.value if maximize else -t.value)  # the best drawn last
    columns = [_column(metric, [t.value for t in trials], None),
               *(_column(k, [t.params.get(k, _NOT_DRAWN) for t in trials],
                         next(t.distributions[k] for t in trials if k in t.params))
                 for k in keys)]
    with style.context("default"):
        figure = Figure()
        renderer, ax = FigureCanvasAgg(figure).get_renderer(), figure.add_axes((0, 0, 1, 1))
        ax.axis("off")
        labels = [ax.text(0, 0, c[0], ha="center", va="top", fontsize=8) for c in columns]
        marks = [[ax.text(0, y, text, ha="left", va="center", fontsize=7, bbox={
            "fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5}) for y, text in column]
            for _, _, column in columns]

        def inches(texts: list[Any], side: str = "width") -> float:
            return max((getattr(t.get_window_extent(renderer), side) / figure.dpi
                        for t in texts), default=0.0)
        wide = [inches(column) + 0.2 for column in marks]  # right of an axis
        half = [inches([label]) / 2 + 0.08 for label in labels]  # either side of it
        xs = [half[0] + 0.15]
        for i in range(1, len(columns)):
            xs.append(xs[-1] + max(0.9, wide[i - 1], half[i - 1] + half[i]))
        width = max(6.5, xs[-1] + max(wide[-1], half[-1]) + 0.15)  # the title's
        tall = max(3.2, 0.18 * max(len(column) for column in marks))  # inches from 0 to 1
        below = 0.25 * tall + inches(labels, "height") + 0.1  # the missing row, the labels
        figure.set_size_inches(width, below + tall + 0.45)
        ax.set_xlim(0, width)  # x in inches, y from 0 to 1 over `tall` inches
        ax.set_ylim(-below / tall, 1 + 0.45 / tall)
        for x, label, column in zip(xs, labels, marks, strict=True):
            label.set_position((x, _MISSING_Y - 0.08))
            ax.plot([x, x], [0, 1], color="0.3", lw=0.8)
            for mark in column:
                mark.set_position((x + 0.03, mark.get_position()[1]))
        for index in range(len(trials)):
            ys = [column[1][index] for column in columns]
            ax.plot(xs, ys, color=colormaps["viridis"](ys[0] if maximize else 1 - ys[0]),
                    alpha=0.8, lw=2.4 if index == len(trials) - 1 else 1.0)
        ax.text(width / 2, 1 + 0.28 / tall, f"Parallel coordinates: each trial a line, coloured"
                f" by {metric} (brighter: better; the best thickest)", ha="center", fontsize=9)
    return figure


def _column(key: str, values: list[Any], distribution: Any
            ) -> tuple[str, list[float], list[tuple[float, str]]]:
    """An axis: its label, each trial's height on it (0 to 1), its marks (height, text);
    `distribution` None: the metric's own axis, over the values it took."""
    from matplotlib.ticker import MaxNLocator
    from optuna.distributions import CategoricalDistribution, IntDistribution

    label = "\n".join(line.replace(". ", ".") for line in textwrap.wrap(
        key.replace(".", ". "), 19, break_long_words=False))  # after its dots
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        spot = {c: i / max(1, len(choices) - 1) for i, c in enumerate(choices)}
        marks, where = [(spot[c], _short(c, 20)) for c in choices], spot.__getitem__
    else:
        log = distribution is not None and distribution.log
        scale = math.log10 if log else float
        low, high = (distribution.low, distribution.high) if distribution is not None else (
            min(values), max(values))
        if low == high:  # one value of the metric: it in the middle
            low, high = low - (abs(low) * 0.05 or 0.5), high + (abs(high) * 0.05 or 0.5)

        def where(value: Any) -> float:
            return (scale(value) - scale(low)) / (scale(high) - scale(low))
        if log:  # powers of ten, and their 2x and 5x within two decades
            subs = (1, 2, 5) if high / low < 100 else (1,)
            candidates = [m * 10.0 ** k for k in range(math.floor(math.log10(low)),
                                                       math.ceil(math.log10(high)) + 1)
                          for m in subs]
        else:
            candidates = list(MaxNLocator(4, integer=isinstance(
                distribution, IntDistribution)).tick_values(low, high))
        kept = [low, high]
        for value in candidates:
            if 0 <= where(value) <= 1 and all(abs(where(value) - where(other)) > 0.08
                                              for other in kept):
                kept.append(value)
        marks = sorted((where(v), _short(int(v) if isinstance(distribution, IntDistribution)
                                           else v)) for v in kept)
        label += "\n(log scale)" if log else ""
    ys = [_MISSING_Y if v is _NOT_DRAWN else where(v) for v in values]
    if any(v is _NOT_DRAWN for v in values):
        marks.append((_MISSING_Y, "not drawn"))
    return label, ys, marks


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


def caution(found: list[Trial], params: dict[str, str]) -> str:
    """Where fewer than ENOUGH trials trained past the scheduler's first rung (ASHA's
    grace_period, read from the parent run's `scheduler` param; any other scheduler: past
    their first epoch), a sentence saying how few the importances rest on; else ""."""
    asha = re.match(r"ASHA\(.*\bgrace_period=(\d+)", params.get("scheduler", ""))
    rung = int(asha.group(1)) if asha else 1
    past = sum(t.reported > rung for t in found)
    where = f"ASHA's first rung (grace_period: {rung} epoch(s))" if asha else "their first epoch"
    return "" if past >= ENOUGH else (
        f"Caution: these importances rest on {len(found)} trial(s), {past} of them trained "
        f"past {where}: with fewer than {ENOUGH} trials past it, they are a hint, not a "
        "finding.")


def markdown(found: list[Trial], weights: dict[str, float], metric: str, mode: str,
             note: str = "") -> str:
    best = sorted(found, key=lambda t: t.value, reverse=mode == "max")[:TOP]
    lines = [f"# Sweep report: {len(found)} finished trials, ranked by {metric} ({mode})", ""]
    if weights:
        lines += ["## Parameter importances (Optuna, fANOVA)", "", *([note, ""] if note else []),
                  "| key | importance |",
                  "| --- | ---: |", *(f"| {k} | {v:.3f} |" for k, v in weights.items()), ""]
    lines += [f"## Top {len(best)} trials", "", f"| trial | {metric} | epoch | drawn | "
              "sample captions (kept epoch) |", "| --- | ---: | ---: | --- | --- |"]
    for trial in best:
        drawn = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        lines.append(f"| {trial.name} | {trial.value:.4f} | {trial.epoch} | {drawn} | "
                     + " / ".join(s.replace("|", "/") for s in trial.samples) + " |")
    return "\n".join(lines) + "\n"


def _short(value: Any, most: int = 6000) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text if len(text) <= most else text[:most - 1] + "\u2026"


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
    note = caution(found, params) if weights else ""
    with tempfile.TemporaryDirectory(prefix="captioning-report-") as tmp:
        folder = Path(tmp)
        files = _figures(study, folder, metric, weights) if study is not None else {}
        (folder / "report.md").write_text(markdown(found, weights, metric, mode, note),
                                           "utf-8")
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
    if note:
        summary.append(note)
    summary.append(f"report files: {', '.join(sorted(files))} (the parent run's report/ "
                   "folder in the MLflow UI)")
    return Report(sweep.info.run_id, found, weights, sorted(files), summary)
