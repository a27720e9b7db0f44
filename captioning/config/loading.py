"""Reading an experiment: a built-in's name or a YAML file, `--set` overrides, path rules.

Paths that an experiment file names are relative to that file (as Docker Compose resolves a
compose file's); data and output paths (data.root, output_dir, sweep.storage_path,
encoder.cache_dir) and everything given with --set are relative to the working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from captioning.config.schema import NAMED_WEIGHTS, ExperimentConfig, parse_config
from captioning.config.shipped import (
    DEFAULT_EXPERIMENT,
    builtin_dir,
    builtin_names,
    builtin_path,
    is_name,
)
from captioning.errors import ConfigError

FILE_RELATIVE_KEYS = (("sweep", "search_space"), ("encoder", "weights"), ("encoder", "model"))


def read_yaml(path: Path, what: str) -> Any:
    """The data of YAML file `path` (a `what`: "experiment file", "search space file"), or a
    one-line ConfigError naming the file and the line at fault."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested mapping copy."""
    result = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. model.lstm_units=128")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return result


def experiment_file(experiment: Path | str | None) -> Path:
    """The file of `experiment`: a built-in's name (`quickstart`), or a path."""
    experiment = experiment if experiment is not None else DEFAULT_EXPERIMENT
    if is_name(experiment):
        if str(experiment) not in builtin_names():
            raise ConfigError(f"--experiment {experiment}: no such built-in experiment (there "
                              f"are: {', '.join(builtin_names())}); give a path to a YAML "
                              "file for one of your own")
        return builtin_path(str(experiment))
    return Path(experiment)


def _relative_to_file(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The FILE_RELATIVE_KEYS of an experiment file's data, made absolute from its folder."""
    for section, key in FILE_RELATIVE_KEYS:
        node = data.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value not in NAMED_WEIGHTS \
                and not Path(value).expanduser().is_absolute():
            node[key] = os.path.normpath(folder / value)
    return data


def load_experiment(experiment: Path | str | None = None, overrides: list[str] | None = None
                    ) -> ExperimentConfig:
    """Read an experiment (a built-in's name or a YAML path; default: quickstart), apply
    overrides, validate. Paths the file names are relative to it (FILE_RELATIVE_KEYS)."""
    path = experiment_file(experiment)
    data = read_yaml(path, "experiment file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data = _relative_to_file(data, path.resolve().parent)
    data = apply_overrides(data, overrides or [])
    name = experiment if experiment is not None else DEFAULT_EXPERIMENT
    return parse_config(data, source=f"{name} (built-in experiment)" if is_name(name)
                        else str(path))


def save_config(config: ExperimentConfig, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


def copy_experiment(name: str, to: Path, *, force: bool = False) -> dict[Path, Path]:
    """Copy built-in experiment `name`, and its search space if that is a built-in too, into
    `to`/experiments/ and `to`/search_spaces/ (where the experiment's relative path finds it);
    returns source -> copy, the experiment first. Refuses to overwrite unless `force`."""
    source = experiment_file(name)
    # The experiment's own space, as it resolves it (relative to the file; else the default).
    space = Path(load_experiment(name).sweep.search_space).resolve()
    copies = {source: to / "experiments" / source.name}
    if space.parent == builtin_dir("search_spaces").resolve():
        copies[space] = to / "search_spaces" / space.name
    existing = [str(dest) for dest in copies.values() if dest.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    for origin, dest in copies.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(origin.read_text(encoding="utf-8"), encoding="utf-8")
    return copies
