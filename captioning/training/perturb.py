"""A model continued with other hyperparameters than it was trained with: Population Based
Training (sweep.scheduler: pbt) restarts a trial from another trial's checkpoint with that
trial's draw, perturbed (config/sweep.py PERTURBABLE), so the model loaded from last.keras
must train on as the new config says.

- train.learning_rate, train.label_smoothing, train.batch_size: the model is compiled again
  from the config (the rate, its schedule over the new number of steps, the loss), and the
  Adam state it had (its step count and moments) is carried over;
- model.dropout: every Dropout layer at the old rate gets the new one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras

from captioning.config.schema import ExperimentConfig
from captioning.config.sweep import PERTURBABLE
from captioning.models.build import compile_model

log = logging.getLogger(__name__)


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def changes(before: dict[str, Any] | None, config: ExperimentConfig
            ) -> dict[str, tuple[Any, Any]]:
    """The PERTURBABLE keys whose value in `config` differs from `before` (the config.json the
    model was trained with): key -> (old, new)."""
    if not before:
        return {}
    now = config.to_dict()
    found = {}
    for key in PERTURBABLE:
        old, new = _get(before, key), _get(now, key)
        if old is not None and old != new:
            found[key] = (old, new)
    return found


def continue_with(model: keras.Model, config: ExperimentConfig,
                  changed: dict[str, tuple[Any, Any]], total_steps: int,
                  tail_scale: float | None) -> None:
    """Make the loaded `model` train on with `config`'s values of the `changed` keys."""
    if not changed:
        return
    log.info("continuing with %s", ", ".join(f"{key} {old} -> {new}"
                                             for key, (old, new) in changed.items()))
    if "model.dropout" in changed:
        old_rate, new_rate = changed["model.dropout"]
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.Dropout) and math.isclose(layer.rate, old_rate):
                layer.rate = new_rate
    if any(key.startswith("train.") for key in changed):
        before = {variable.name: variable for variable in model.optimizer.variables}
        compile_model(model, config.train, total_steps, tail_scale)
        model.optimizer.build(model.trainable_variables)
        for variable in model.optimizer.variables:
            # Its step count and moments; the rate is the new config's.
            if variable.name != "learning_rate" and variable.name in before:
                variable.assign(before[variable.name])
