"""Promote and serve, against a real `mlflow server` (SQLite, 127.0.0.1) and a real local Ray:
a smoke sweep, its best trial registered under an alias, loaded by name, served over REST."""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from captioning.cli import main
from captioning.inference.captioner import Captioner
from captioning.inference.evaluate import evaluate_model
from captioning.tracking.client import using
from captioning.tracking.runs import MODEL_TAG, SWEEP_TAG
from conftest import free_port, start_service, stop_service

pytestmark = pytest.mark.slow
MODEL = "promo-captioner"


@pytest.fixture(scope="module")
def sweep(smoke_sweep):
    """The finished smoke sweep (conftest.py, MLflow experiment "smoke"), ranked by CIDEr-D."""
    result, _ = smoke_sweep
    return result


@pytest.fixture(scope="module")
def promoted(sweep, mlflow_server):
    code = main(["promote", "--experiment", "smoke", "--metric", "val_cider",
                 "--model-name", MODEL, "--tracking-uri", mlflow_server])
    assert code == 0
    return MlflowClient(mlflow_server, registry_uri=mlflow_server)


def trial_bests(client: MlflowClient, sweep) -> dict[str, float]:
    """Each finished trial's best CIDEr-D, read from its per-epoch history."""
    parent = client.get_run(sweep.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'")
    return {run.info.run_id: max(m.value for m in client.get_metric_history(run.info.run_id,
                                                                            "val_cider"))
            for run in runs if run.info.status == "FINISHED"}


def sample_images(root: Path, tmp_path: Path) -> list[Path]:
    jpegs = sorted((root / "Images").glob("*.jpg"))[:2]
    png = tmp_path / "converted.png"
    Image.open(jpegs[1]).save(png, format="PNG")
    return [jpegs[0], png]


def test_promote_registers_the_best_trial_and_points_the_alias_at_it(promoted, sweep):
    client = promoted
    bests = trial_bests(client, sweep)
    winner = max(bests, key=bests.get)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == winner == sweep.best["run_id"]
    assert float(version.tags["val_cider"]) == pytest.approx(bests[winner], rel=1e-5)
    assert version.tags["metric"] == "val_cider" and version.tags["mode"] == "max"
    assert version.tags["sweep_run_id"] == sweep.parent_run_id
    assert version.tags["source_run_id"] == winner
    assert version.tags[MODEL_TAG] == client.get_run(winner).data.tags[MODEL_TAG]
    assert version.tags["encoder.name"] == sweep.best["config"]["encoder.name"]
    assert f"`{winner}`" in version.description and "val_cider" in version.description


def test_promoting_the_same_best_trial_again_creates_no_new_version(promoted, mlflow_server,
                                                                   capsys):
    before = promoted.search_model_versions(f"name = '{MODEL}'")
    capsys.readouterr()
    assert main(["promote", "--experiment", "smoke", "--metric", "val_cider",
                 "--model-name", MODEL, "--tracking-uri", mlflow_server]) == 0
    assert "no new version" in capsys.readouterr().out
    after = promoted.search_model_versions(f"name = '{MODEL}'")
    assert len(after) == len(before) == 1
    assert promoted.get_model_version_by_alias(MODEL, "champion").version == after[0].version


def test_a_metric_no_trial_logged_fails_cleanly_and_registers_nothing(sweep, mlflow_server,
                                                                     capsys):
    code = main(["promote", "--sweep-run", sweep.parent_run_id, "--metric", "val_meteor",
                 "--model-name", "never-registered", "--tracking-uri", mlflow_server])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --metric val_meteor: no finished trial of sweep smoke")
    assert "val_bleu4" in error  # says which metrics there are
    assert MlflowClient(mlflow_server).search_registered_models(
        "name = 'never-registered'") == []


def kept_epoch_metrics(client: MlflowClient, sweep) -> dict[str, dict[str, float]]:
    """Each finished trial's logged-model metrics (those of its kept epoch), by run id."""
    parent = client.get_run(sweep.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'")
    return {run.info.run_id: {m.key: m.value for m in
                              client.get_logged_model(run.data.tags[MODEL_TAG]).metrics}
            for run in runs if run.info.status == "FINISHED" and MODEL_TAG in run.data.tags}


def test_every_trial_logs_its_cost_beside_its_scores(sweep, mlflow_server):
    kept = kept_epoch_metrics(MlflowClient(mlflow_server), sweep)
    assert kept
    for metrics in kept.values():
        assert metrics["param_count"] > 1000 and metrics["param_count"].is_integer()
        assert metrics["epoch_seconds"] > 0 and metrics["decode_ms_per_caption"] > 0


def test_promote_with_a_cost_bound_picks_the_best_trial_that_meets_it(sweep, mlflow_server,
                                                                    capsys):
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    kept = kept_epoch_metrics(client, sweep)
    # The bound the fastest trial just meets: whatever the timings, only it (or those as
    # fast) may be promoted, the best of them by CIDEr-D.
    bound = min(m["decode_ms_per_caption"] for m in kept.values())
    meets = {run: m for run, m in kept.items() if m["decode_ms_per_caption"] <= bound}
    expected = max(meets, key=lambda run: meets[run]["val_cider"])
    assert main(["promote", "--sweep-run", sweep.parent_run_id, "--model-name", "fast-captioner",
                 "--max", f"decode_ms_per_caption={bound!r}", "--min", "val_cider=-1",
                 "--tracking-uri", mlflow_server]) == 0
    version = client.get_model_version_by_alias("fast-captioner", "champion")
    assert version.tags["source_run_id"] == expected
    assert f"{len(meets)} finished trial(s)" in capsys.readouterr().out


def test_promote_with_a_bound_no_trial_meets_is_one_line_and_registers_nothing(
        sweep, mlflow_server, capsys):
    kept = kept_epoch_metrics(MlflowClient(mlflow_server), sweep)
    fastest = min(m["decode_ms_per_caption"] for m in kept.values())
    assert main(["promote", "--sweep-run", sweep.parent_run_id, "--model-name", "too-fast",
                 "--max", "decode_ms_per_caption=0", "--tracking-uri", mlflow_server]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --max decode_ms_per_caption=0: no finished trial of sweep smoke (run "
        f"{sweep.parent_run_id}) meets it; the lowest of the {len(kept)} trial(s) left is "
        f"{fastest:.4g}")
    assert MlflowClient(mlflow_server).search_registered_models("name = 'too-fast'") == []


def test_a_sweep_without_a_finished_trial_has_nothing_to_promote(mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment("promo-empty")
    run = client.create_run(experiment, tags={SWEEP_TAG: "promo-empty"})
    code = main(["promote", "--experiment", "promo-empty", "--model-name", "never-registered",
                 "--tracking-uri", mlflow_server])
    assert code == 2
    assert (f"sweep promo-empty (run {run.info.run_id}) has no finished trial with a logged "
            "model") in capsys.readouterr().err
    assert client.search_registered_models("name = 'never-registered'") == []


def test_the_champion_loads_by_alias_and_captions_a_jpeg_and_a_png(promoted, sweep,
                                                                  mlflow_server, sample_root,
                                                                  tmp_path):
    images = sample_images(sample_root, tmp_path)
    local = Captioner.load(sweep.best["checkpoint"])
    with using(mlflow_server):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    assert list(out["caption"]) == [caption for _, caption in local.caption_files(images)]
    assert list(out["error"]) == [None, None]


def test_caption_and_evaluate_take_a_models_uri(promoted, sweep, mlflow_server, sample_root,
                                                tmp_path, capsys):
    images = sample_images(sample_root, tmp_path)
    local = Captioner.load(sweep.best["checkpoint"])
    capsys.readouterr()
    assert main(["caption", *map(str, images), "--model", f"models:/{MODEL}@champion",
                 "--tracking-uri", mlflow_server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{path}\t{caption}" for path, caption in local.caption_files(images)]
    # The trial's own run names the same model.
    assert main(["caption", *map(str, images), "--model", f"runs:/{sweep.best['run_id']}/model",
                 "--tracking-uri", mlflow_server]) == 0
    assert capsys.readouterr().out.splitlines() == lines

    report = tmp_path / "report.json"
    assert main(["evaluate", "--model", f"models:/{MODEL}/1", "--tracking-uri", mlflow_server,
                 "--output", str(report)]) == 0
    scored = json.loads(report.read_text())
    assert scored["model"] == f"models:/{MODEL}/1"
    assert scored["scores"] == evaluate_model(sweep.best["checkpoint"],
                                              progress=False)["scores"]


def test_a_uri_that_names_nothing_is_a_clear_error(promoted, mlflow_server, sample_root,
                                                   capsys):
    image = str(sorted((sample_root / "Images").glob("*.jpg"))[0])
    assert main(["caption", image, "--model", f"models:/{MODEL}@nobody",
                 "--tracking-uri", mlflow_server]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: models:/{MODEL}@nobody: cannot fetch it from "
                            f"{mlflow_server}")


class Doubler(mlflow.pyfunc.PythonModel):
    """Another project's model: numbers in, numbers out."""

    def predict(self, context, model_input: list[float], params=None) -> list[float]:
        return [2 * x for x in model_input]


def test_a_registered_model_that_is_not_a_captioner_is_a_clear_error(mlflow_server, tmp_path,
                                                                     capsys):
    experiment = MlflowClient(mlflow_server).create_experiment("not-ours")
    with using(mlflow_server):
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=Doubler(),
                                    pip_requirements=["mlflow"],
                                    registered_model_name="not-a-captioner")
    image = tmp_path / "image.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    capsys.readouterr()
    assert main(["caption", str(image), "--model", "models:/not-a-captioner/1",
                 "--tracking-uri", mlflow_server]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1] == (
        "error: models:/not-a-captioner/1: not a captioning model (no model.keras in it; "
        "its MLmodel flavors: python_function)")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_captions_an_image_over_http(promoted, sweep, mlflow_server,
                                                         sample_root, tmp_path):
    port = free_port()
    bin_dir = Path(sys.executable).parent
    url = f"http://127.0.0.1:{port}"
    server = start_service(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        f"{url}/ping", tmp_path / "serve.log", timeout=240,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
             "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    try:
        images = sample_images(sample_root, tmp_path)
        rows = [{"image": base64.b64encode(p.read_bytes()).decode()} for p in images]
        rows.append({"image": base64.b64encode(b"not an image").decode()})
        answer = post(f"{url}/invocations", {"dataframe_records": rows})
        expected = [caption for _, caption in
                    Captioner.load(sweep.best["checkpoint"]).caption_files(images)]
        assert answer == {"predictions": [
            {"caption": expected[0], "error": None}, {"caption": expected[1], "error": None},
            {"caption": None, "error": "row 2: not an image file PIL can read"}]}
    finally:
        stop_service(server)
