"""The MLflow Model Registry: promote a sweep's best trial, and fetch a model by URI.

    captioning promote [--experiment NAME | --sweep-run RUN_ID] [--metric M] [--mode max]
                       [--model-name captioner] [--alias champion]

Promotion registers the best finished trial's logged model as a version of the registered
model (once: promoting the same trial again reuses its version) and points the alias at it.
Aliases, not stages: MLflow deprecated stages.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from captioning.config.metrics import mode_of
from captioning.errors import RegistryError, first_line
from captioning.evaluation.spread import spread
from captioning.tracking.client import check_reachable, check_store_exists, using
from captioning.tracking.pyfunc import ARTIFACT
from captioning.tracking.runs import (
    CONFIRM_SEED_TAG,
    CONFIRMS_TAG,
    MODEL_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    finished_trials,
    recorded_search_space,
)
from captioning.training import model_files

log = logging.getLogger(__name__)

URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")
TRACKED_SCHEMES = URI_SCHEMES[:3]  # the URIs that the tracking server resolves


@dataclass
class Promotion:
    model_name: str
    version: str
    alias: str
    created: bool  # False when the trial was already a version of the model
    sweep: str
    sweep_run_id: str
    trial_id: str
    run_id: str
    model_id: str
    metric: str
    value: float
    metrics: dict[str, float]  # the scores of the promoted model (its kept epoch)
    candidates: int  # finished trials with a logged model and the metric
    # A sweep with sweep.confirm: the promoted configuration's mean over its confirmation
    # seeds (value and metrics are then means), its spread, seeds and search trial.
    confirmed: dict[str, Any] | None = None


def find_sweep(client: MlflowClient, experiment: str | None, sweep_run: str | None) -> Any:
    """A sweep's parent run: `sweep_run`, else the newest sweep of MLflow experiment
    `experiment` (of any, if None); RegistryError saying what is not there."""
    if sweep_run:
        try:
            run = client.get_run(sweep_run)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RegistryError(f"--sweep-run {sweep_run}: no such run") from None
        if SWEEP_TAG not in run.data.tags:
            raise RegistryError(f"--sweep-run {sweep_run}: not a sweep's parent run (it has "
                                f"no {SWEEP_TAG} tag); pass the run that `captioning sweep` "
                                "printed as the MLflow parent run")
        return run
    if experiment is None:  # the newest sweep of any experiment
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise RegistryError(f"--experiment {experiment}: no such MLflow experiment "
                                f"(there are: {', '.join(names) or 'none'})")
        ids = [found.experiment_id]
    runs = client.search_runs(ids, filter_string=f"tags.`{SWEEP_TAG}` LIKE '%'",
                              order_by=["attributes.start_time DESC"], max_results=1) \
        if ids else []
    if not runs:
        where = f"--experiment {experiment}: no sweep has run in it" if experiment else \
            "no sweep has run in this tracking store (run captioning sweep, or pass " \
            "--tracking-uri)"
        raise RegistryError(where)
    return runs[0]


def _candidates(client: MlflowClient, sweep: Any, metric: str
                ) -> tuple[list[dict], int, set[str]]:
    """Finished trials of `sweep` with a logged model: (those whose model has a finite
    `metric`, how many models there are, every metric name the models have)."""
    found, models, seen = [], 0, set()
    for run in finished_trials(client, sweep):
        model_id = run.data.tags.get(MODEL_TAG)
        if not model_id:
            continue
        try:
            model = client.get_logged_model(model_id)
        except MlflowException:  # deleted since: that trial cannot be promoted, the rest can
            log.warning("trial run %s: its model %s is gone; skipping it", run.info.run_id,
                        model_id)
            continue
        models += 1
        metrics = {m.key: m.value for m in model.metrics or []}
        seen.update(metrics)
        if metric in metrics and math.isfinite(metrics[metric]):
            found.append({"run": run, "model": model, "metrics": metrics})
    return found, models, seen


def _confirmed(found: list[dict], metric: str) -> list[dict]:
    """sweep.confirm's candidates grouped by the configuration they confirm (CONFIRMS_TAG),
    each group with the mean of every kept score all its seeds have, and the spread of
    `metric`: [{confirms, seeds: [candidate + seed], metrics: means, spread, start}]; empty
    for a sweep without confirmation runs."""
    grouped: dict[str, list[dict]] = {}
    for candidate in found:
        tags = candidate["run"].data.tags
        if CONFIRMS_TAG in tags:
            seed = int(tags.get(CONFIRM_SEED_TAG, -1))
            grouped.setdefault(tags[CONFIRMS_TAG], []).append({**candidate, "seed": seed})
    groups = []
    for confirms, seeds in grouped.items():
        seeds.sort(key=lambda c: c["seed"])
        names = set.intersection(*(set(c["metrics"]) for c in seeds))
        means = {k: spread([c["metrics"][k] for c in seeds]).mean for k in sorted(names)}
        groups.append({"confirms": confirms, "seeds": seeds, "metrics": means,
                       "spread": spread([c["metrics"][metric] for c in seeds]).to_dict(),
                       "start": min(c["run"].info.start_time for c in seeds)})
    return groups


def _meeting(found: list[dict], bounds: dict[tuple[str, str], float], sweep: str,
             what: str = "finished trial") -> list[dict]:
    """The candidates whose kept epoch meets every bound ((metric, "max"): at most the value,
    "min": at least); a RegistryError saying how near the trials came when none does. With
    sweep.confirm the candidates are configurations and their metrics the means."""
    kept = found
    for (key, side), bound in bounds.items():
        values = [c["metrics"][key] for c in kept if key in c["metrics"]]
        meets = [c for c in kept if key in c["metrics"] and math.isfinite(c["metrics"][key])
                 and (c["metrics"][key] <= bound if side == "max" else
                      c["metrics"][key] >= bound)]
        if not meets:
            flag, word = ("--max", "lowest") if side == "max" else ("--min", "highest")
            nearest = (f"the {word} of the {len(values)} {what.split()[-1]}(s) left is "
                       f"{(min if side == 'max' else max)(values):.4g}" if values
                       else f"no trial left has {key} (an older sweep?)")
            raise RegistryError(f"{flag} {key}={bound:g}: no {what} of {sweep} meets "
                                f"it{' and the bounds before it' if kept is not found else ''}"
                                f"; {nearest}")
        kept = meets
    return kept


def _describe(sweep: Any, best: dict, metric: str, mode: str, config: dict,
              confirmed: dict | None = None) -> str:
    run = best["run"]
    scores = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(best["metrics"].items()))
    if confirmed is not None:
        scores = (f"Confirmed: the configuration of search trial `{confirmed['confirms']}`, "
                  f"best of {confirmed['configurations']} by the mean {metric} over seeds "
                  f"{', '.join(str(s) for s in confirmed['seeds'])}: {confirmed['mean']:.4f} "
                  f"(std {confirmed['std']:.4f}, 95% interval {confirmed['low']:.4f} .. "
                  f"{confirmed['high']:.4f}); this version is its seed {confirmed['seed']} "
                  f"({confirmed['seed_value']:.4f}). Means over the seeds:\n\n{scores}")
    return (f"Best trial `{run.data.tags.get(TRIAL_TAG, '?')}` of sweep "
            f"`{sweep.data.tags.get(SWEEP_TAG)}` (parent run `{sweep.info.run_id}`) by "
            f"{metric} ({mode}). Source run: `{run.info.run_id}` ({run.info.run_name}).\n\n"
            f"| score | value |\n|---|---|\n{scores}\n\n"
            f"Config:\n```json\n{json.dumps(config, indent=2, sort_keys=True)}\n```\n")


def promote(tracking_uri: str, *, experiment: str | None = None, sweep_run: str | None = None,
            metric: str | None = None, mode: str | None = None, model_name: str = "captioner",
            alias: str = "champion", at_most: dict[str, float] | None = None,
            at_least: dict[str, float] | None = None) -> Promotion:
    """Register the best finished trial of a sweep and point `alias` at it (see module doc).

    The sweep is `sweep_run` (its parent run id), else the newest sweep in MLflow experiment
    `experiment`, else the newest sweep in the store. Trials are ranked by `metric` (default:
    the one the sweep ranked them by) at the epoch their model was kept; with `at_most` and
    `at_least` ({metric: bound}, e.g. {"decode_ms_per_caption": 5}), only the trials whose kept
    epoch meets every bound are.
    """
    check_store_exists(tracking_uri)
    check_reachable(tracking_uri, "--tracking-uri")
    bounds = {**{(k, "max"): v for k, v in (at_most or {}).items()},
              **{(k, "min"): v for k, v in (at_least or {}).items()}}
    try:
        return _promote(MlflowClient(tracking_uri, registry_uri=tracking_uri), tracking_uri,
                        experiment, sweep_run, metric, mode, model_name, alias, bounds)
    except MlflowException as error:  # e.g. a user without the permission, a bad alias
        reason = first_line(error)
        raise RegistryError(f"promote: {tracking_uri} refused ({reason})") from None


def _promote(client: MlflowClient, tracking_uri: str, experiment: str | None,
             sweep_run: str | None, metric: str | None, mode: str | None, model_name: str,
             alias: str, bounds: dict[tuple[str, str], float]) -> Promotion:
    sweep = find_sweep(client, experiment, sweep_run)
    if metric is None:
        metric = sweep.data.params.get("metric", "val_cider")
        mode = mode or sweep.data.params.get("mode")
    if mode is None:
        mode = mode_of(metric)
    name = sweep.data.tags.get(SWEEP_TAG)
    found, models, seen = _candidates(client, sweep, metric)
    if not found:
        if not models:
            raise RegistryError(f"sweep {name} (run {sweep.info.run_id}) has no finished trial "
                                "with a logged model: nothing to promote")
        raise RegistryError(f"--metric {metric}: no finished trial of sweep {name} (run "
                            f"{sweep.info.run_id}) has a value for it; their models have: "
                            f"{', '.join(sorted(seen)) or 'no metrics'}")
    sign = 1 if mode == "max" else -1
    groups = _confirmed(found, metric)
    if groups:  # sweep.confirm: configurations ranked by their mean over the new seeds
        groups = _meeting(groups, bounds, f"sweep {name} (run {sweep.info.run_id})",
                          "confirmed configuration")
        group = max(groups, key=lambda g: (sign * g["metrics"][metric], -g["start"]))
        best = max(group["seeds"], key=lambda c: (sign * c["metrics"][metric],
                                                  -c["run"].info.start_time))
        confirmed = {**group["spread"], "seeds": [c["seed"] for c in group["seeds"]],
                     "confirms": group["confirms"], "configurations": len(groups),
                     "seed": best["seed"], "seed_value": best["metrics"][metric]}
        best = {**best, "metrics": group["metrics"]}
        found = groups
    else:
        found = _meeting(found, bounds, f"sweep {name} (run {sweep.info.run_id})")
        # Best value; of equal ones, the trial that started first (deterministic).
        best = max(found, key=lambda c: (sign * c["metrics"][metric],
                                         -c["run"].info.start_time))
        confirmed = None
    run, model = best["run"], best["model"]

    existing = [v for v in client.search_model_versions(f"name = '{model_name}'")
                if v.tags.get(MODEL_TAG) == model.model_id]
    if existing:
        version, created = existing[0], False
    else:
        space = recorded_search_space(sweep)
        searched = {k: run.data.params[k] for k in space if k in run.data.params}
        tags = {MODEL_TAG: model.model_id, TRIAL_TAG: run.data.tags.get(TRIAL_TAG, ""),
                "sweep": name, "sweep_run_id": sweep.info.run_id,
                "source_run_id": run.info.run_id, "metric": metric, "mode": mode,
                **{k: f"{v:.6g}" for k, v in best["metrics"].items()}, **searched}
        if confirmed is not None:  # the metric values above are the means over the seeds
            tags.update({"confirm.mean": f"{confirmed['mean']:.6g}",
                         "confirm.std": f"{confirmed['std']:.6g}",
                         "confirm.ci95": f"{confirmed['ci95']:.6g}",
                         "confirm.seeds": ",".join(str(s) for s in confirmed["seeds"]),
                         "confirm.of_trial": confirmed["confirms"],
                         "confirm.seed": str(confirmed["seed"]),
                         "confirm.seed_value": f"{confirmed['seed_value']:.6g}"})
        with using(tracking_uri):
            version = mlflow.register_model(f"models:/{model.model_id}", model_name, tags=tags)
        version = client.update_model_version(
            model_name, version.version,
            description=_describe(sweep, best, metric, mode, run.data.params, confirmed))
        created = True
    if not client.get_registered_model(model_name).description:
        client.update_registered_model(
            model_name, description="An image captioner promoted from `captioning` sweeps: "
            "image bytes in, caption out.")
    client.set_registered_model_alias(model_name, alias, version.version)
    return Promotion(model_name, str(version.version), alias, created, name, sweep.info.run_id,
                     run.data.tags.get(TRIAL_TAG, ""), run.info.run_id, model.model_id, metric,
                     float(best["metrics"][metric]), best["metrics"], len(found), confirmed)


def _logged_model_uri(model: str, tracking_uri: str) -> str:
    """runs:/<run id>/<name> of a model the run logged -> models:/<model id>: MLflow 3 keeps
    logged models apart from the run's artifacts, where a plain download does not look."""
    if not model.startswith("runs:/"):
        return model
    run_id, _, name = model[len("runs:/"):].partition("/")
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    for output in run.outputs.model_outputs if run.outputs else []:
        if client.get_logged_model(output.model_id).name == name.strip("/"):
            return f"models:/{output.model_id}"
    return model


def is_uri(model: str | Path) -> bool:
    return str(model).startswith(URI_SCHEMES)


def fetch(model: str, tracking_uri: str, dest: Path) -> Path:
    """Download the model at `model` (models:/name@alias, models:/name/3, runs:/id/model, ...)
    into `dest` and return its captioning model directory.

    A models:/, runs:/ or mlflow-artifacts:/ URI needs the tracking store: one on disk that is
    not there is refused (not created), and a server that does not answer fails at once."""
    if model.startswith(TRACKED_SCHEMES):
        check_store_exists(tracking_uri)
        check_reachable(tracking_uri, "--tracking-uri")
    try:
        # Set globally too: MLflow 3.17 resolves models:/ aliases with the global registry.
        with using(tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=_logged_model_uri(model, tracking_uri), dst_path=str(dest),
                tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except MlflowException as error:
        reason = first_line(error)
        raise RegistryError(f"{model}: cannot fetch it from {tracking_uri} ({reason})") from None
    for candidate in (local, local / "artifacts" / ARTIFACT):
        if (candidate / model_files.MODEL).is_file():
            return candidate
    raise RegistryError(f"{model}: not a captioning model (no {model_files.MODEL} in it; "
                        f"{_what_it_is(local)})")


def _what_it_is(local: Path) -> str:
    """What a downloaded model that is not ours is, read from its MLmodel file (YAML only:
    nothing of it is loaded or run)."""
    try:
        meta = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "no MLmodel file either"
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    if not isinstance(flavors, dict) or not flavors:
        return "its MLmodel names no flavor"
    return f"its MLmodel flavors: {', '.join(sorted(flavors))}"
