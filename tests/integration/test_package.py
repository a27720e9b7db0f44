"""The package as users get it: the wheel, installed into a fresh virtual environment, run from
an empty folder. Built-in experiments come from inside the package, sample data and the MLflow
store land in that folder, and promote needs no experiment file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel of this checkout. Its dependencies are this environment's
    (a .pth line after its own site-packages), so nothing is downloaded; `captioning` itself
    comes only from the wheel (the line adds no .pth file of this environment's, so not its
    editable install either)."""
    tmp = tmp_path_factory.mktemp("package")
    # Built from a copy: setuptools leaves build/ and *.egg-info in the tree it builds.
    source = tmp / "source"
    local_state = shutil.ignore_patterns(  # at the checkout's top only: captioning/data stays
        ".git", ".venv", "build", "dist", "data", "runs", "ray_results", "mlruns", "mlartifacts",
        "mlflow.db")
    anywhere = shutil.ignore_patterns("*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, ignore=lambda folder, names: anywhere(folder, names) | (
        local_state(folder, names) if Path(folder) == REPO else set()))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp / "dist"), str(source)], check=True)
    [wheel] = (tmp / "dist").glob("captioning-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    return venv


def bare_env() -> dict[str, str]:
    """A user's shell: no virtualenv activated, none of this checkout's settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, env=bare_env(),
                          capture_output=True, text=True, timeout=900)


def test_the_wheel_holds_every_module_of_the_checkout(installed):
    site = Path(subprocess.run([str(installed / "bin" / "python"), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    checkout = {p.relative_to(REPO).as_posix() for p in (REPO / "captioning").rglob("*.py")}
    wheel = {p.relative_to(site).as_posix() for p in (site / "captioning").rglob("*.py")}
    assert checkout - wheel == set(), "modules missing from the wheel (pyproject's packages)"


def test_captioning_is_imported_from_the_wheel_not_the_checkout(installed, tmp_path):
    where = run(installed, "python", "-c", "import captioning; print(captioning.__file__)",
                cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed)), where.stdout


def test_the_built_in_experiments_are_listed_and_copied_to_edit(installed, tmp_path):
    listed = run(installed, "captioning", "experiments", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()[:3]} == {
        "flickr30k", "flickr8k", "quickstart"}
    copied = run(installed, "captioning", "experiments", "copy", "quickstart", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "experiments" / "quickstart.yaml").is_file()
    assert (tmp_path / "search_spaces" / "quickstart.yaml").is_file()
    # The copy's search space is its own copy, found relative to the experiment file.
    check = run(installed, "python", "-c", "from captioning.config.loading import load_experiment; "
                "print(load_experiment('experiments/quickstart.yaml').sweep.search_space)",
                cwd=tmp_path)
    assert check.stdout.strip() == str(tmp_path / "search_spaces" / "quickstart.yaml")
    again = run(installed, "captioning", "experiments", "copy", "quickstart", cwd=tmp_path)
    assert again.returncode == 2 and "already exist" in again.stderr


def test_the_quickstart_runs_by_name_from_an_empty_folder_and_promote_needs_no_file(
        installed, tmp_path):
    # The built-in experiment and its space as packaged, on fewer and smaller sample images:
    # what this shows is that the wheel runs it (make demo runs it at full size).
    swept = run(installed, "captioning", "sweep", "--experiment", "quickstart", "--smoke-test",
                "--num-samples", "2", "--set", "data.sample_images=120",
                "--set", "encoder.image_size=75", "--set", "train.score_images=10",
                cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "sweep finished: 2 trials (0 failed)" in swept.stdout
    assert "then open http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning" \
        in swept.stdout
    assert (tmp_path / "data" / "sample" / "captions.txt").is_file()
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "ray_results").is_dir()
    # The next steps it prints run as printed, with the virtualenv not activated (make demo).
    [promote] = [line.split(": ", 1)[1] for line in swept.stdout.splitlines()
                 if line.startswith("promote it to the model registry: ")]
    [browse] = [line.split(": ", 1)[1] for line in swept.stdout.splitlines()
                if line.startswith("browse the runs: ")]
    assert promote.startswith(f"{installed}/bin/captioning promote --sweep-run ")
    program, options = browse.split(" ui ", 1)
    assert options.startswith("--backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 ")
    version = subprocess.run(["bash", "-c", f"{program} --version"], cwd=tmp_path,
                             env=bare_env(), capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "version" in version.stdout, version.stderr[-2000:]
    promoted = subprocess.run(["bash", "-c", promote], cwd=tmp_path, env=bare_env(),
                              capture_output=True, text=True, timeout=900)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "scored by val_cider" in promoted.stdout
    assert "registered captioner version 1" in promoted.stdout
    # The sweep's experiment holds its trials' models, each linked to its run, and each run's
    # best_val_cider is its kept epoch's: what promote ranked by.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    models = client.search_logged_models([experiment.experiment_id])
    runs = {r.info.run_id: r for r in client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")}
    assert len(models) == len(runs) == 2
    assert {m.source_run_id for m in models} == set(runs)
    for model in models:
        kept = {m.key: m for m in model.metrics}["val_cider"]
        metrics = runs[model.source_run_id].data.metrics
        assert metrics["best_val_cider"] == kept.value
        assert metrics["best_epoch"] == kept.step
    best = max(runs.values(), key=lambda r: r.data.metrics["best_val_cider"])
    assert f"(run {best.info.run_id}), val_cider " \
           f"{best.data.metrics['best_val_cider']:.4f}" in promoted.stdout
