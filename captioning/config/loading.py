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

from captioning.config.encoder import NAMED_WEIGHTS
from captioning.config.schema import ExperimentConfig, parse_config
from captioning.config.shipped import (
    DEFAULT_EXPERIMENT,
    builtin_dir,
    builtin_names,
    builtin_path,
    is_name,
)
from captioning.errors import ConfigError

FILE_RELATIVE_KEYS = (("sweep", "search_space"), ("encoder", "weights"), ("encoder", "model"))


# An experiment or a search space is a few KB of YAML. The bounds below refuse what no config
# needs, before it costs anything: a YAML alias bomb (nine levels of `aN: &aN [*aN-1, ...]`,
# 500 bytes) stays small as nodes and explodes only when built, so it is measured as nodes.
MAX_YAML_BYTES = 1_000_000
MAX_YAML_VALUES = 100_000  # values in the file with every alias expanded
MAX_YAML_DEPTH = 50        # nesting of mappings and lists, aliases expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_yaml_nodes(root: yaml.Node, where: str) -> None:
    """Refuse, before a value is built, a document whose aliases expand past MAX_YAML_VALUES,
    that nests past MAX_YAML_DEPTH or refers to itself, or that sets a key twice in a mapping."""
    sizes: dict[int, int] = {}  # a shared (aliased) node is measured once
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where} line {node.start_mark.line + 1}: nested more than "
                              f"{MAX_YAML_DEPTH} levels deep; an experiment needs 3")
        if id(node) in open_nodes:
            raise ConfigError(f"{where} line {node.start_mark.line + 1}: an alias refers to "
                              "the value it is in (a recursive YAML alias)")
        total = 1
        if isinstance(node, yaml.MappingNode):
            _refuse_repeated_keys(node, where)
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        open_nodes.add(id(node))
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_VALUES:
                raise ConfigError(f"{where}: its aliases expand to more than {MAX_YAML_VALUES:,}"
                                  " values (a YAML alias bomb?); an experiment has a few hundred")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def _refuse_repeated_keys(node: yaml.MappingNode, where: str) -> None:
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise ConfigError(f"{where} line {line}: key {key.value!r} is set twice (lines "
                              f"{seen[key.value]} and {line}); keep one")
        seen[key.value] = line


def parse_yaml(text: str, where: str) -> Any:
    """The data of YAML `text` (from `where`: a file, or a --set value), checked by
    _check_yaml_nodes before it is built; a one-line ConfigError naming the line at fault."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_nodes(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}{at}: not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read (an experiment needs 3 "
                          "levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def read_yaml(path: Path, what: str) -> Any:
    """The data of YAML file `path` (a `what`: "experiment file", "search space file"), or a
    one-line ConfigError naming the file and the line at fault."""
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: no such {what}")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes, more than the "
                              f"{MAX_YAML_BYTES:,} allowed for {_article(what)} {what}")
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read this {what} ({error.strerror or error})"
                          ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not valid UTF-8 (byte "
                          f"0x{data[error.start]:02x}); re-save the file as UTF-8") from None
    return parse_yaml(text, str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested mapping copy."""
    result = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. model.lstm_units=128")
        node = result
        parts = key.split(".")
        if "" in parts:
            what = ("starts with a dot" if not parts[0] else "ends with a dot" if not parts[-1]
                    else "has two dots with nothing between them")
            raise ConfigError(f"--set {item!r}: the key {key} {what}; a key is names joined "
                              "by single dots, e.g. model.lstm_units=128")
        for part in parts[:-1]:
            if node.get(part) is None:  # an optional section that is unset (encoder.fine_tune)
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = parse_yaml(raw, f"--set {item!r}") if raw != "" else ""
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
