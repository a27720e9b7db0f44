"""The package's shape: its folders are its architecture, in a layer order (each folder imports
only the ones below it), so no two modules import each other (lazy imports inside functions
count too), no module outgrows one concern, and errors, metric names and the config's section
base are leaves any module can import."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "captioning"
MAX_LINES = 400
LEAVES = ("captioning.errors", "captioning.log", "captioning.config.metrics",
          "captioning.config.section")
# The layers, bottom first: a folder (or a module directly in captioning/) may import its own
# layer and those below it, never one above. The leaves, what a user writes (config: no Keras),
# datasets, image features, decoders, scores, training one model, using a trained one,
# MLflow, sweeps; the commands on top. Learn the package in this order.
LAYERS = (
    ("errors", "log", "atomic", "jsonfile"),
    ("config",),
    ("data",),
    ("features",),
    ("models",),
    ("evaluation",),
    ("training",),
    ("inference",),
    ("tracking",),
    ("tune",),
    ("arguments", "cli", "mlflow_model"),
)
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The package's own modules that module `name` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `from pkg import module`, or a name
                target = target.rpartition(".")[0]
            if target.startswith("captioning") and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def unit_of(name: str) -> str:
    """The folder of captioning/ a module is in, or the module's own name directly in it."""
    return name.split(".")[1] if "." in name else "__init__"


def test_every_folder_and_top_level_module_has_a_layer():
    units = {unit_of(name) for name in MODULES} - {"__init__"}
    assert units - set(LAYER_OF) == set(), "add it to LAYERS"
    assert set(LAYER_OF) - units == set(), "a layer names what is gone"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} ({unit_of(name)}) imports {target} ({unit_of(target)})"
                  for name, targets in graph.items() if unit_of(name) != "__init__"
                  for target in targets if unit_of(target) != "__init__"
                  and LAYER_OF[unit_of(target)] > LAYER_OF[unit_of(name)])


def test_no_folder_imports_one_above_it():
    assert upward_imports(GRAPH) == []


def test_a_settings_class_that_imported_a_decoder_would_be_caught():
    graph = {**GRAPH, "captioning.config.schema": GRAPH["captioning.config.schema"]
             | {"captioning.models.attention"}}
    assert upward_imports(graph) == ["captioning.config.schema (config) imports "
                                     "captioning.models.attention (models)"]


def test_loading_a_config_imports_no_keras():
    code = ("import sys; from captioning.config.loading import load_experiment; "
            "from captioning.config.schema import parse_config; "
            "config = load_experiment('quickstart', ['model.decoder=attention']); "
            "parse_config({'encoder': {'name': 'hub:clip_vit_base_patch16'}}); "
            "heavy = {'keras', 'tensorflow', 'jax', 'keras_hub', 'ray', 'mlflow'}; "
            "print(sorted(heavy & set(sys.modules)))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=REPO).stdout.strip()
    assert shown == "[]"


def test_no_two_modules_of_the_package_import_each_other():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")
    assert set(order) == set(MODULES)


def test_imports_inside_functions_count_as_imports():
    # The CLI imports each command's library lazily, so that --help loads no TensorFlow.
    assert {"captioning.tune.launcher", "captioning.errors"} <= GRAPH["captioning.cli"]
    circle = {**GRAPH, "captioning.errors": {"captioning.cli"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(circle).static_order())


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_ours(leaf):
    assert GRAPH[leaf] == set()


def test_no_module_is_over_400_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in MODULES.items()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring, f"{init.relative_to(REPO)} has no docstring"
