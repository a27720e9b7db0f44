"""The `captioning` command end to end, as a new user runs it on the built-in sample data."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from PIL import Image

from captioning.cli import main
from captioning.data.dataset import load_dataset
from captioning.data.sample import draw_sample_dataset
from captioning.evaluation.scores import caption_scores
from conftest import run_cli, start_up_noise

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sample data drawn and a model trained by the CLI, with the quickstart experiment."""
    work = tmp_path_factory.mktemp("cli")
    data = work / "data"
    drawn = run_cli("sample-data", str(data), "--images", "400", "--seed", "3")
    assert drawn.returncode == 0, drawn.stderr
    overrides = ["--set", f"data.root={data}", "--set", "train.epochs=25",
                 "--set", "train.patience=25"]
    trained = run_cli("train", "--experiment", "experiments/quickstart.yaml", *overrides,
                  "--output", str(work / "model"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert start_up_noise(trained) == []  # TensorFlow's and JAX's are not ours to print
    return {"data": data, "model": work / "model", "work": work, "train_out": trained.stdout}


def test_sample_data_command_draws_the_kaggle_layout(trained):
    data = trained["data"]
    assert len(list((data / "Images").glob("*.jpg"))) == 400
    header = (data / "captions.txt").read_text().splitlines()[0]
    assert header == "image,caption"


def test_prepare_prints_the_dataset_statistics_of_the_seed_slide(trained):
    result = run_cli("prepare", "--set", f"data.root={trained['data']}")
    assert result.returncode == 0, result.stderr
    assert start_up_noise(result) == []
    out = result.stdout
    for label in ("images", "captions per image", "longest caption (words)", "vocabulary",
                  "skipped: 0 image(s)"):
        assert label in out
    assert "400" in out.split("images", 1)[1].splitlines()[0]


def test_train_prints_where_the_model_went(trained):
    assert f"model saved to {trained['model']}" in trained["train_out"]
    for name in ("model.keras", "vocab.json", "config.json"):
        assert (trained["model"] / name).is_file()


def test_trained_captions_beat_the_most_frequent_caption_baseline_on_bleu4(trained):
    report_path = trained["work"] / "eval.json"
    result = run_cli("evaluate", "--model", str(trained["model"]), "--split", "test",
                 "--output", str(report_path))
    assert result.returncode == 0, result.stderr
    assert "bleu4" in result.stdout
    report = json.loads(report_path.read_text())
    dataset = load_dataset(trained["data"])
    test = dataset.splits["test"]
    assert [row["image"] for row in report["images"]] == test
    counts = collections.Counter(c for n in dataset.splits["train"] for c in dataset.captions[n])
    most_frequent = counts.most_common(1)[0][0]
    baseline = caption_scores({n: dataset.captions[n] for n in test},
                              {n: most_frequent for n in test})
    model_bleu4 = report["scores"]["bleu4"]
    print(f"BLEU-4 model {model_bleu4:.4f} vs most-frequent-caption baseline "
          f"{baseline['bleu4']:.4f} ({most_frequent!r})")
    assert model_bleu4 > baseline["bleu4"] + 0.10
    assert model_bleu4 > 3 * baseline["bleu4"]


def test_beam_search_evaluation_runs_and_scores(trained):
    result = run_cli("evaluate", "--model", str(trained["model"]), "--beam", "3")
    assert result.returncode == 0, result.stderr
    assert start_up_noise(result) == []
    assert "beam 3" in result.stdout and "cider" in result.stdout


def test_caption_handles_common_formats_and_reports_an_unreadable_file(trained, tmp_path):
    source = sorted((trained["data"] / "Images").glob("*.jpg"))[0]
    image = Image.open(source)
    png = tmp_path / "alpha.png"
    image.convert("RGBA").save(png)
    grey = tmp_path / "grey.png"
    image.convert("L").resize((3000, 2000)).save(grey)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    result = run_cli("caption", str(source), str(png), str(broken), str(grey),
                 "--model", str(trained["model"]))
    assert result.returncode == 1
    assert start_up_noise(result) == []
    lines = dict(line.split("\t") for line in result.stdout.splitlines())
    assert set(lines) == {str(source), str(png), str(grey)}
    assert all(caption.strip() for caption in lines.values())
    assert lines[str(source)] == lines[str(png)]  # same pixels, same caption
    assert str(broken) in result.stderr


def test_an_unknown_config_key_is_a_one_line_error_before_any_work(tmp_path):
    result = run_cli("train", "--set", "model.lstm_unitz=3", "--set", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: quickstart (built-in experiment): model.lstm_unitz: unknown key")
    assert not any(tmp_path.iterdir())


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    result = run_cli("caption", "x.jpg", "--model", str(tmp_path))
    assert result.returncode == 2
    assert "not a captioning model directory (missing model.keras, vocab.json" in result.stderr


@pytest.mark.parametrize(("command", "flag", "value", "bound"), [
    ("sweep", "--num-samples", "0", "1 to 100,000 (trials in one sweep)"),
    ("sweep", "--num-samples", "100001", "1 to 100,000 (trials in one sweep)"),
    ("sweep", "--num-samples", "1e3", "1 to 100,000 (trials in one sweep)"),
    ("caption", "--beam", "21", "1 to 20 (a beam costs images x width decoder rows, and "
                                "beyond 5 captions get no better)"),
    ("sample-data", "--images", "20001", "1 to 20,000 (synthetic images are for a quick look; "
                                         "use a real dataset for more)"),
    ("sample-data", "--seed", "-1", "0 to 4,294,967,295 (a NumPy seed)"),
])
def test_every_count_flag_is_bounded_and_refused_in_one_line_before_any_work(
        command, flag, value, bound, tmp_path, capsys):
    args = {"sweep": ["--storage", str(tmp_path / "ray_results")],
            "caption": ["x.jpg", "--model", str(tmp_path / "model")],
            "sample-data": [str(tmp_path / "data")]}[command]
    with pytest.raises(SystemExit) as exited:
        main([command, *args, flag, value])
    assert exited.value.code == 2  # argparse's usage error
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"captioning {command}: error: argument {flag}: expected a whole number from {bound}, "
        f"got {value}")
    assert not any(tmp_path.iterdir())


def test_a_spacy_model_that_is_not_installed_stops_train_before_features_are_extracted(
        tmp_path, capsys):
    data = draw_sample_dataset(tmp_path / "data", images=6, seed=1)
    cache, output = tmp_path / "cache", tmp_path / "model"
    code = main(["train", "--set", f"data.root={data}", "--set", "encoder.weights=none",
                 "--set", f"encoder.cache_dir={cache}", "--set", "embedding=spacy:en_core_web_nope",
                 "--output", str(output)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: embedding: spaCy model 'en_core_web_nope' cannot be loaded; install it with "
        "`python -m spacy download en_core_web_nope` or give a pipeline directory")
    assert not cache.exists() and not output.exists()
