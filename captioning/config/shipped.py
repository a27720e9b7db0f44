"""The experiments and search spaces that ship with `captioning`, found by name.

They are the repository's `experiments/*.yaml` and `search_spaces/*.yaml`, which the wheel
carries as `captioning/config/experiments/` and `captioning/config/search_spaces/`
(pyproject.toml), so `captioning sweep --experiment quickstart` works from any folder once the
package is installed, and from a checkout too.
"""

from __future__ import annotations

import itertools
from pathlib import Path

DEFAULT_EXPERIMENT = "quickstart"  # what every command reads without --experiment
_PACKAGE = Path(__file__).resolve().parents[1]  # captioning/


def builtin_dir(kind: str) -> Path:
    """The folder of built-in `experiments` or `search_spaces`: in the installed package, else
    in the checkout this package was imported from."""
    for folder in (_PACKAGE / "config" / kind, _PACKAGE.parent / kind):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"no built-in {kind} folder next to {_PACKAGE}")


def builtin_names(kind: str = "experiments") -> list[str]:
    return sorted(path.stem for path in builtin_dir(kind).glob("*.yaml"))


def is_name(value: str | Path) -> bool:
    """Whether `value` names a built-in (`quickstart`) rather than a file (`a/b.yaml`)."""
    text = str(value)
    return "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml"))


def builtin_path(name: str, kind: str = "experiments") -> Path:
    return builtin_dir(kind) / f"{name}.yaml"


def describe(name: str) -> str:
    """The first sentence of a built-in experiment's leading comment: what it is for."""
    lines = builtin_path(name).read_text(encoding="utf-8").splitlines()
    header = " ".join(line.lstrip("# ").strip() for line in
                      itertools.takewhile(lambda line: line.startswith("#"), lines))
    return header.split(". ")[0].split(": ")[0].rstrip(".")
