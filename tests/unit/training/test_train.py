"""train_captioner: per-epoch metrics, the best checkpoint, early stopping, configs that run."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from captioning.config.loading import load_experiment
from captioning.config.metrics import SCST_SECONDS
from captioning.data.dataset import load_dataset
from captioning.models.build import load_keras_model
from captioning.training.prepare import prepare
from captioning.training.train import train_captioner
from conftest import REPO, quick_config, small_overrides

EPOCH_KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_bleu1", "val_bleu2",
              "val_bleu3", "val_bleu4", "val_cider", "val_rouge_l"}


@pytest.mark.slow
def test_every_epoch_is_reported_with_losses_accuracies_and_scores(sample_root, tmp_path):
    seen = []
    config = quick_config(sample_root)
    result = train_captioner(config, model_dir=tmp_path / "m", verbose=0,
                             on_epoch=lambda epoch, metrics, path: seen.append(
                                 (epoch, metrics, (path / "model.keras").exists())))
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3]
    for _, metrics, checkpoint_on_disk in seen:
        assert EPOCH_KEYS <= set(metrics)
        assert checkpoint_on_disk
        assert 0.0 <= metrics["val_bleu4"] <= 1.0
    # The epoch kept is the first best by train.monitor (validation CIDEr-D by default).
    assert config.train.monitor == "val_cider" and config.train.monitor_mode == "max"
    scores = [metrics["val_cider"] for _, metrics, _ in seen]
    assert result.best["epoch"] == int(np.argmax(scores)) + 1
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["epoch"] == result.best["epoch"]
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.keras", "vocab.json", "config.json", "history.json"} <= files
    assert [name for name in files if name.startswith(".") or ".tmp" in name] == []
    assert len(json.loads((tmp_path / "m" / "history.json").read_text())) == 3


@pytest.mark.slow
def test_a_resumed_training_continues_after_its_last_epoch(sample_root, tmp_path):
    import keras

    def optimizer_steps() -> int:
        last = keras.saving.load_model(tmp_path / "m" / "last.keras", safe_mode=True)
        return int(last.optimizer.iterations)

    first = train_captioner(quick_config(sample_root, epochs=2), model_dir=tmp_path / "m",
                            verbose=0)
    steps_after_two = optimizer_steps()
    seen = []
    resumed = train_captioner(quick_config(sample_root, epochs=4), model_dir=tmp_path / "m",
                              verbose=0, resume=True,
                              on_epoch=lambda epoch, metrics, path: seen.append(epoch))
    assert seen == [3, 4]
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    assert optimizer_steps() == 2 * steps_after_two  # Adam's state went on, not from zero
    samples = json.loads((tmp_path / "m" / "samples.json").read_text())
    assert samples and {"image", "prediction", "references"} <= set(samples[0])


@pytest.mark.slow
def test_scst_epochs_continue_the_history_and_a_resume_in_them_loses_none(sample_root,
                                                                         tmp_path):
    import keras

    def optimizer_steps() -> int:
        last = keras.saving.load_model(tmp_path / "m" / "last.keras", safe_mode=True)
        return int(last.optimizer.iterations)

    def config(scst_epochs: int):
        return quick_config(sample_root, epochs=2, schedule="warmup_linear", warmup=0.5,
                            scst={"epochs": scst_epochs, "samples": 3})

    seen = []
    first = train_captioner(config(1), model_dir=tmp_path / "m", verbose=0,
                            on_epoch=lambda epoch, metrics, path: seen.append(
                                (epoch, metrics["scst"])))
    # Two cross-entropy epochs, then one SCST epoch from the best of them, in one history.
    assert seen == [(1, 0.0), (2, 0.0), (3, 1.0)]
    # No teacher-forced training accuracy in an SCST epoch: its loss is the policy gradient's.
    assert EPOCH_KEYS - {"accuracy"} | {"reward", *SCST_SECONDS} <= set(first.history[2])
    assert first.history[2]["learning_rate"] == pytest.approx(5e-5)
    # Warmed up over the first half of the cross-entropy steps, then decayed.
    assert first.history[0]["learning_rate"] == pytest.approx(0.003)
    assert first.history[1]["learning_rate"] < 0.003 / 2
    train_images = len(load_dataset(sample_root).splits["train"])
    scst_steps = optimizer_steps()  # the SCST optimizer's own: one per batch of 64 images
    assert scst_steps == -(-train_images // 64)

    seen.clear()
    resumed = train_captioner(config(2), model_dir=tmp_path / "m", verbose=0, resume=True,
                              on_epoch=lambda epoch, metrics, path: seen.append(
                                  (epoch, metrics["scst"])))
    assert seen == [(4, 1.0)]
    assert resumed.history[:3] == first.history
    assert optimizer_steps() == 2 * scst_steps  # the SCST optimizer went on, not from zero


@pytest.mark.slow
def test_a_resume_after_early_stopping_goes_on_to_scst(sample_root, tmp_path):
    train_captioner(quick_config(sample_root, epochs=2, patience=1), model_dir=tmp_path / "m",
                    verbose=0)
    # As if the second epoch had scored below the first: patience 1 has run out.
    path = tmp_path / "m" / "history.json"
    history = json.loads(path.read_text())
    history[0]["val_cider"], history[1]["val_cider"] = 0.5, 0.1
    path.write_text(json.dumps(history))
    seen = []
    train_captioner(quick_config(sample_root, epochs=10, patience=1, scst={"epochs": 1}),
                    model_dir=tmp_path / "m", verbose=0, resume=True,
                    on_epoch=lambda epoch, metrics, path: seen.append((epoch, metrics["scst"])))
    assert seen == [(3, 1.0)]


def test_training_stops_early_when_validation_stops_improving(sample_root, tmp_path):
    # A learning rate this large overshoots, so val_loss soon stops going down.
    config = quick_config(sample_root, epochs=40, patience=1, learning_rate=0.5)
    result = train_captioner(config, model_dir=tmp_path / "m", verbose=0)
    assert result.stopped_early
    assert len(result.history) < 40


def test_vocabulary_is_built_from_training_captions_only(sample_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    splits = load_dataset(root).splits
    owner = {name: split for split, names in splits.items() for name in names}
    rows = list(csv.DictReader((root / "captions.txt").open(newline="")))
    for row in rows:
        row["caption"] += {"train": " trainword", "val": " valword", "test": " testword"}[
            owner[row["image"]]]
    with (root / "captions.txt").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    vocab = prepare(quick_config(root), progress=False).vocab
    assert "trainword" in vocab.tokens
    assert "valword" not in vocab.tokens and "testword" not in vocab.tokens


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [*sorted((REPO / "experiments").glob("*.yaml")),
                                        *sorted((REPO / "benchmarks" / "experiments").glob(
                                            "*.yaml"))], ids=lambda p: p.stem)
def test_every_experiment_trains_in_smoke_mode(experiment, sample_root, spacy_pipeline,
                                               tmp_path):
    config = load_experiment(experiment, [
        *small_overrides(sample_root), "train.epochs=1", "train.score_images=10",
        "train.batch_size=64", f"output_dir={tmp_path}"])
    if config.embedding.startswith("spacy:"):
        # The real spaCy model cannot be downloaded here: same code path, a local pipeline.
        config = config.model_copy(update={"embedding": f"spacy:{spacy_pipeline}"})
    result = train_captioner(config, verbose=0)
    assert EPOCH_KEYS <= set(result.best)
    model = load_keras_model(result.model_dir / "model.keras")
    assert model.get_layer("lstm").units == config.model.lstm_units
    if config.embedding.startswith("spacy:") and not config.model.train_embedding:
        import spacy

        vector = spacy.load(spacy_pipeline).vocab.get_vector("red")
        vocab_row = json.loads((result.model_dir / "vocab.json").read_text())["tokens"].index(
            "red")
        np.testing.assert_array_equal(model.get_layer("embedding").get_weights()[0][vocab_row],
                                      vector)


def test_a_train_split_whose_images_are_all_unreadable_is_one_clear_error(tmp_path):
    from captioning.data.sample import draw_sample_dataset
    from captioning.errors import DatasetError

    root = draw_sample_dataset(tmp_path / "data", images=20, seed=3)
    dataset = load_dataset(root)
    for name in dataset.splits["train"]:
        (dataset.image_dir / name).write_text("not a picture")
    with pytest.raises(DatasetError) as caught:
        train_captioner(quick_config(root), model_dir=tmp_path / "m", verbose=0)
    message = str(caught.value)
    assert message.startswith(f"{root}: the train split has no caption of a readable image")
    assert f"({len(dataset.splits['train'])} image(s) skipped" in message


def test_a_loss_that_becomes_nan_stops_training_with_one_clear_error(sample_root, tmp_path):
    from captioning.errors import TrainingError

    # A finite rate (an infinite one is refused by the config) that still blows the weights
    # up within the first epoch.
    config = quick_config(sample_root, learning_rate=1e30, epochs=2)
    with pytest.raises(TrainingError) as caught:
        train_captioner(config, model_dir=tmp_path / "m", verbose=0)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the training loss became nan in epoch 1, so training stopped "
                              "and no epoch was kept; lower train.learning_rate")
    assert not (tmp_path / "m" / "model.keras").exists()
