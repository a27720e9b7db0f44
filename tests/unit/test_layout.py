"""The package's shape: its folders are its architecture, so no two modules import each other
(lazy imports inside functions count too), no module outgrows one concern, and errors,
metric names and the config's section base are leaves any module can import."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "captioning"
MAX_LINES = 400
LEAVES = ("captioning.errors", "captioning.log", "captioning.evaluation.metrics",
          "captioning.config.section")


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
