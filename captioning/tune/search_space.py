"""Search spaces: what a sweep varies, read from `search_spaces/*.yaml` and validated up front.

A space maps experiment keys (the dotted keys of `--set`) to one distribution each:

    train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
    model.lstm_units:    {int: [128, 512], step: 64}
    model.dropout:       {uniform: [0.1, 0.6]}
    encoder.name:        {choice: [inception_v3, resnet50]}
    model.train_embedding:                       # conditional (Optuna's define-by-run form)
      choice: [true, false]
      when: {embedding: "spacy:en_core_web_md"}
    model.attention.units:                       # only for trials that drew one of these
      int: [128, 512]
      when: {model.decoder: [attention]}

Every key and every value a key can take is checked against the experiment config before Ray
starts, so an unknown encoder or a bound the wrong way round is a one-line error naming it. A
spaCy model that a trial may use but this machine does not have is a warning, not an error: on
a cluster, the workers that train may have it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from captioning.config.loading import apply_overrides, read_yaml
from captioning.config.schema import ExperimentConfig, parse_config
from captioning.errors import ConfigError
from captioning.features.encoders import check_encoder

log = logging.getLogger(__name__)


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")  # bounds included
    step: int | None = Field(None, ge=1)
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_distribution(self) -> Param:
        kinds = [k for k in ("choice", "uniform", "loguniform", "integer") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, int")
        bounds = self.uniform or self.loguniform or self.integer
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low bound {bounds[0]} is not below high bound {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        if self.step is not None and self.integer is None:
            raise ValueError("step goes with int")
        return self

    def can_draw(self, value: Any) -> bool:
        """Whether a trial can draw `value` here (a `when` condition that names it can hold)."""
        if self.choice is not None:
            return value in self.choice
        low, high = self.uniform or self.loguniform or self.integer
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer is not None:
            step = self.step or 1
            return value == int(value) and low <= value <= high and (value - low) % step == 0
        return low <= value <= high

    def describe(self) -> str:
        if self.choice is not None:
            return "it draws one of " + ", ".join(repr(c) for c in self.choice)
        low, high = self.uniform or self.loguniform or self.integer
        return f"it draws from {low} to {high}"

    def edge_values(self) -> list[Any]:
        """Values that must all be valid config values (every choice, or both bounds)."""
        if self.choice is not None:
            return list(self.choice)
        return list(self.uniform or self.loguniform or self.integer)


class SearchSpace:
    """A validated space: `suggest(trial)` draws one configuration from an Optuna trial."""

    def __init__(self, params: dict[str, Param], source: str):
        self.params = params
        self.source = source

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: sample each key in order, skipping unmet `when` conditions."""
        drawn: dict[str, Any] = {}
        for key, param in self.params.items():
            if param.when and not all(_meets(drawn.get(k, _MISSING), v)
                                      for k, v in param.when.items()):
                continue
            if param.choice is not None:
                drawn[key] = trial.suggest_categorical(key, param.choice)
            elif param.integer is not None:
                drawn[key] = trial.suggest_int(key, *param.integer, step=param.step or 1)
            elif param.loguniform is not None:
                drawn[key] = trial.suggest_float(key, *param.loguniform, log=True)
            else:
                drawn[key] = trial.suggest_float(key, *param.uniform)
        return drawn

    def define_by_run(self, trial: Any) -> None:
        """The form Ray's OptunaSearch takes: draw through `trial`, return no constants."""
        self.suggest(trial)

    def encoders(self, base: ExperimentConfig) -> list[Any]:
        """The encoder configs the space can give a trial: the base encoder with each value
        (every choice, or both bounds) of the encoder keys it varies, in every combination
        (but for a key whose `when` another encoder key's value rules out)."""
        keys = [key for key in self.params if key.startswith("encoder.")]
        combinations: list[dict[str, Any]] = [{}]
        for key in keys:
            when = (self.params[key].when or {}).items()
            combinations = [
                combination for c in combinations for combination in (
                    [c] if any(other in c and not _meets(c[other], wanted)
                               for other, wanted in when)
                    else [{**c, key: v} for v in self.params[key].edge_values()])]
        base_dict = base.to_dict()
        found = []
        for drawn in combinations:
            encoder = apply(base_dict, drawn, source=self.source).encoder
            if encoder not in found:
                found.append(encoder)
        return found

    def values(self, key: str, base: Any) -> list[Any]:
        """What a trial may have at `key`: the values the space gives it, else the base's."""
        return self.params[key].edge_values() if key in self.params else [base]

    def to_dict(self) -> dict[str, Any]:
        return {k: p.model_dump(exclude_none=True, by_alias=True) for k, p in self.params.items()}


_MISSING = object()


def _meets(drawn: Any, wanted: Any) -> bool:
    """A `when` condition: the key drew this value, or one of these values (a list)."""
    return drawn in wanted if isinstance(wanted, list) else drawn == wanted


# The value of a key a trial did not draw (its `when` did not hold), where Ray needs every
# trial to name every key: PBT's population (tune/strategy.py).
NOT_DRAWN = "<not drawn>"


# A confirmation trial's config as Ray holds it (tune/confirm.py): {CONFIRM: {the search
# trial's draw, train.seed, CONFIRMS: that trial's id}}.
CONFIRM = "confirm"
CONFIRMS = "confirms"


def drawn_values(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as Ray holds it -> the keys it drew and their values (a confirmation
    trial's: the draw it confirms, with its own train.seed)."""
    if isinstance(config.get(CONFIRM), dict):
        config = {k: v for k, v in config[CONFIRM].items() if k != CONFIRMS}
    return {key: value for key, value in config.items() if value != NOT_DRAWN}


def apply(base: dict[str, Any], drawn: dict[str, Any], source: str = "trial"
          ) -> ExperimentConfig:
    """The experiment config of one trial: the base experiment with the drawn values set."""
    data = apply_overrides(base, [])
    for key, value in drawn_values(drawn).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:  # an optional section that is unset (encoder.fine_tune)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key}: {part} is not a section of the experiment")
        node[leaf] = value
    return parse_config(data, source=source)


def load_search_space(path: Path | str, base: ExperimentConfig) -> SearchSpace:
    """Read and validate a space against `base`; raises a one-line ConfigError naming the key."""
    path = Path(path)
    raw = read_yaml(path, "search space file") or {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of experiment keys to distributions")
    params: dict[str, Param] = {}
    base_dict = base.to_dict()
    for key, spec in raw.items():
        where = f"{path}: {key}"
        try:
            params[key] = Param.model_validate(spec)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{where}{'.' + field if field else ''}: {message}") from None
        for value in params[key].edge_values():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: {value} is not a finite number")
            try:
                drawn = apply(base_dict, {key: value}, source=str(path))
                if key.startswith("encoder"):
                    check_encoder(drawn.encoder, source=str(path))
            except ConfigError as error:
                # parse_config names the key; keep the message to one line about this space.
                raise ConfigError(f"{error} (value {value!r} of the search space)") from None
        for other, wanted in (params[key].when or {}).items():
            if other not in params:
                raise ConfigError(f"{where}: 'when' names {other}, which is not drawn before it")
            never = [v for v in (wanted if isinstance(wanted, list) else [wanted])
                     if not params[other].can_draw(v)]
            if never:
                raise ConfigError(f"{where}: 'when' asks for {other} = {never[0]!r}, which "
                                  f"{other} never draws ({params[other].describe()}), so "
                                  f"{key} would never be drawn")
    embeddings = params["embedding"].edge_values() if "embedding" in params else [base.embedding]
    for model in missing_spacy_models(embeddings):
        log.warning("%s: embedding: spaCy model %r is not installed here; trials that use it "
                    "will fail unless the machines that train have it (python -m spacy download "
                    "%s)", path, model, model)
    return SearchSpace(params, str(path))


def missing_spacy_models(embeddings: list[Any]) -> list[str]:
    """The spaCy models named by `embeddings` ("spacy:<name or path>") that this machine has
    neither as an installed package nor as a directory; found without loading them."""
    names = [str(e).removeprefix("spacy:") for e in embeddings if str(e).startswith("spacy:")]
    if not names:
        return []
    import spacy.util

    return [name for name in dict.fromkeys(names)
            if not spacy.util.is_package(name) and not Path(name).expanduser().is_dir()]
