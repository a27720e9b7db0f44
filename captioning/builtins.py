"""The experiments and search spaces that ship with `captioning`, found by name.

They are the repository's `experiments/*.yaml` and `search_spaces/*.yaml`, which the wheel
carries as `captioning/experiments/` and `captioning/search_spaces/` (pyproject.toml), so
`captioning sweep --experiment quickstart` works from any folder once the package is
installed, and from a checkout too.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(kind: str) -> Path:
    """The folder of built-in `experiments` or `search_spaces`: in the installed package, else
    in the checkout this package was imported from."""
    for folder in (_PACKAGE / kind, _PACKAGE.parent / kind):
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
