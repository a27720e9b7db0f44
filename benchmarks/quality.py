"""Caption quality on real photos: the seed's recipe beside the baselines it must beat.

One table of the test split's BLEU-1..4, CIDEr-D and ROUGE-L (pycocoevalcap), greedy and
beam 3, for each cleaning of the captions (the seed's: one-letter words dropped; the papers':
kept), with these rows:

  most frequent caption   the training split's most frequent caption, for every image
  nearest neighbour       for each test image, the training image whose pooled feature is
                          most similar (cosine), answered with that image's consensus caption
                          (of its five, the one with the highest CIDEr-D against the other four)
  seed recipe             the merge model: frozen spaCy vectors, LSTM 256, dropout 0.5, Adam
                          0.0012, batch 32, early stopping; once per --seeds
  attention, transformer  the other decoders (--decoders), on the encoder's feature maps, at
                          the same budget (epochs, early stopping), with --set for their own

  ... + SCST               with --scst-epochs N: each trained row's model continued by N
                          epochs of self-critical sequence training (train.scst), from its
                          best cross-entropy epoch, the best epoch by validation kept

Each row also says how many of its test captions are distinct and their mean length in words
(SCST is known to shorten and repeat captions). It prints the encoder's extraction speed
(images/s, from an empty cache) and the median seconds per training epoch (training,
validation loss and scoring the validation captions), for SCST split into sampling, reward
and update.

    .venv/bin/python benchmarks/quality.py --data-root ../shared/data/flickr8k-dev \\
        --encoder mobilenet --alpha 0.25 \\
        --weights ../shared/data/weights/mobilenet_2_5_224_tf_no_top.h5 \\
        --embedding spacy:../shared/data/spacy/en_core_web_md-3.8.0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from common import machine_info  # noqa: E402

from captioning.config.loading import apply_overrides
from captioning.config.metrics import SCORE_NAMES  # noqa: E402
from captioning.config.schema import ExperimentConfig, parse_config  # noqa: E402
from captioning.evaluation.scores import caption_scores, strip_markers
from captioning.features.cache import image_inputs  # noqa: E402
from captioning.inference.captioner import Captioner  # noqa: E402
from captioning.training.prepare import Prepared, prepare  # noqa: E402
from captioning.training.train import train_captioner  # noqa: E402


def base_config(args: argparse.Namespace, keep_one_letter_words: bool, cache: Path
                ) -> ExperimentConfig:
    """The seed's recipe on `args`' data, encoder and embedding."""
    encoder = {"name": args.encoder, "weights": args.weights,
               "cache_dir": str(args.cache_dir or cache), "batch_size": 64,
               "keep_grid": args.decoders != ["merge"]}
    if args.alpha is not None:
        encoder["alpha"] = args.alpha
    if args.model is not None:  # a saved Keras model (MobileNetV2, EfficientNet-Lite0)
        encoder.update(model=str(args.model), preprocess=args.preprocess)
    return parse_config({
        "name": "quality", "data": {"root": str(args.data_root),
                                    "keep_one_letter_words": keep_one_letter_words},
        "encoder": encoder, "embedding": args.embedding,
        "model": {"lstm_units": 256, "dropout": 0.5, "train_embedding": False},
        "train": {"epochs": args.epochs, "batch_size": 32, "learning_rate": 0.0012,
                  "patience": args.patience, "monitor": args.monitor,
                  "score_images": args.score_images},
        "decode": {"max_length": 40},
    }, source="benchmarks/quality.py")


def references(prepared: Prepared, split: str) -> dict[str, list[str]]:
    return {name: prepared.dataset.captions[name] for name in prepared.dataset.splits[split]}


def most_frequent(prepared: Prepared) -> tuple[dict[str, str], str]:
    counts = Counter(strip_markers(c) for name in prepared.dataset.splits["train"]
                     for c in prepared.dataset.captions[name])
    caption = counts.most_common(1)[0][0]
    return {name: caption for name in prepared.dataset.splits["test"]}, caption


def consensus_captions(prepared: Prepared) -> dict[str, str]:
    """Each training image's caption with the highest CIDEr-D against its other captions."""
    from pycocoevalcap.cider.cider import Cider

    gts, res, keys = {}, {}, []
    for name in prepared.dataset.splits["train"]:
        captions = [strip_markers(c) for c in prepared.dataset.captions[name]]
        for i, caption in enumerate(captions):
            others = captions[:i] + captions[i + 1:]
            if others:
                key = f"{name}#{i}"
                gts[key], res[key] = others, [caption]
                keys.append((name, caption, key))
    with contextlib.redirect_stdout(io.StringIO()):
        _, per_key = Cider().compute_score(gts, res)
    score = dict(zip(gts, per_key, strict=True))
    best: dict[str, tuple[float, str]] = {}
    for name, caption, key in keys:
        if name not in best or score[key] > best[name][0]:
            best[name] = (score[key], caption)
    return {name: caption for name, (_, caption) in best.items()}


def nearest_neighbour(prepared: Prepared) -> dict[str, str]:
    train = [n for n in prepared.dataset.splits["train"] if n in prepared.features.index]
    test = prepared.dataset.splits["test"]

    def unit(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype("float32")
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    similar = unit(prepared.features.rows(test)) @ unit(prepared.features.rows(train)).T
    consensus = consensus_captions(prepared)
    nearest = similar.argmax(axis=1)
    return {name: consensus[train[j]] for name, j in zip(test, nearest, strict=True)}


def caption_stats(predictions: dict[str, str]) -> dict[str, float]:
    """How many of the captions are distinct, and their mean length in words."""
    captions = list(predictions.values())
    return {"distinct": len(set(captions)),
            "length": float(np.mean([len(c.split()) for c in captions]))}


def row(label: str, decode: str, scores: dict[str, float]) -> str:
    return (f"{label:<52} {decode:<7} " + " ".join(f"{scores[k]:>7.4f}" for k in SCORE_NAMES)
            + f" {scores['distinct']:>8d} {scores['length']:>6.2f}")


def scored(refs: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
    return {**caption_scores(refs, predictions), **caption_stats(predictions)}


def test_rows(label: str, model_dir: Path, prepared: Prepared, grid: bool,
              refs: dict[str, list[str]]) -> list[tuple[str, str, dict[str, float]]]:
    """`label`'s greedy and beam-3 rows on the test split, for the model in `model_dir`."""
    captioner = Captioner.load(model_dir)
    names = prepared.dataset.splits["test"]
    features = image_inputs(prepared.features, names, grid)
    return [(label, "greedy" if beam == 1 else f"beam {beam}",
             scored(refs, dict(zip(names, captioner.caption_features(features, beam),
                                   strict=True))))
            for beam in (1, 3)]


def timed_training(run: ExperimentConfig, model_dir: Path, prepared: Prepared, resume: bool
                   ) -> tuple[object, float]:
    """Train `run` into `model_dir`; the result and the median seconds of its new epochs."""
    stamps = [time.perf_counter()]
    trained = train_captioner(run, model_dir=model_dir, prepared=prepared, verbose=0,
                              resume=resume, on_epoch=lambda *_: stamps.append(
                                  time.perf_counter()))
    return trained, float(np.median(np.diff(stamps)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True,
                        help="a dataset in any of the three layouts (README)")
    parser.add_argument("--encoder", default="mobilenet")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet, none, or a weights file")
    parser.add_argument("--model", type=Path, default=None,
                        help="a saved Keras encoder (encoder.model); --encoder is its label")
    parser.add_argument("--preprocess", default=None,
                        help="with --model: tf, torch, caffe, none or a built-in encoder's name")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="the feature cache (default: a new temporary one, so the "
                             "extraction is timed from empty)")
    parser.add_argument("--embedding", default="spacy:en_core_web_md")
    parser.add_argument("--epochs", type=int, default=30, help="at most (default 30)")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--monitor", default="val_cider",
                        help="the score early stopping keeps the best epoch by")
    parser.add_argument("--score-images", type=int, default=1000,
                        help="validation images scored each epoch (default: up to 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one training run per seed (default: 0 1)")
    parser.add_argument("--cleanings", nargs="+", default=["seed", "papers"],
                        choices=["seed", "papers"],
                        help="seed: one-letter words dropped; papers: kept")
    parser.add_argument("--decoders", nargs="+", default=["merge"],
                        choices=["merge", "attention", "transformer"],
                        help="trained rows: merge is the seed's recipe (default: merge)")
    parser.add_argument("--set", action="append", default=[], metavar="[DECODER:]KEY=VALUE",
                        help="an experiment key for every trained row, or for one decoder's, "
                             "e.g. attention:train.learning_rate=0.0005")
    parser.add_argument("--variant", action="append", nargs="+", default=None,
                        metavar="NAME [KEY=VALUE]", dest="variants",
                        help="a variant of every trained row, by name and its keys, e.g. "
                             "--variant 'last block' encoder.fine_tune.from_layer=conv_dw_13 "
                             "(repeatable; default: one, the rows as they are)")
    parser.add_argument("--scst-epochs", type=int, default=0,
                        help="continue each trained row by this many SCST epochs (a second "
                             "row; its settings by --set train.scst.KEY=VALUE)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for every figure")
    args = parser.parse_args()

    print("\n".join(machine_info()))
    work = Path(tempfile.mkdtemp(prefix="captioning-quality-"))
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    lines = []
    for cleaning in args.cleanings:
        config = base_config(args, cleaning == "papers", work / "cache")
        started = time.perf_counter()
        prepared = prepare(config, progress=False)
        seconds = time.perf_counter() - started
        images = len(prepared.features.names)
        if cleaning == args.cleanings[0]:
            print(f"extraction: {images} images in {seconds:.1f} s ({images / seconds:.1f} "
                  f"images/s, {config.encoder.name}, dataset read included)")
        summary = prepared.summary()
        print(f"\n[{cleaning} cleaning] {summary['train']} / {summary['val']} / "
              f"{summary['test']} train / val / test images, vocabulary {summary['vocabulary']}")
        refs = references(prepared, "test")
        predictions, caption = most_frequent(prepared)
        results = [("most frequent caption", "-", scored(refs, predictions))]
        print(f"most frequent training caption: {caption!r}")
        results.append(("nearest neighbour (cosine)", "-",
                        scored(refs, nearest_neighbour(prepared))))
        variants = args.variants or [[""]]
        for decoder, (variant, *keys) in ((d, v) for d in args.decoders for v in variants):
            settings = [o.split(":", 1)[1] for o in args.set if o.startswith(f"{decoder}:")]
            settings += keys
            recipe = apply_overrides(config.to_dict(), [f"model.decoder={decoder}", *settings,
                                                        *[o for o in args.set if ":" not in
                                                          o.split("=", 1)[0]]])
            for seed in args.seeds:
                run = parse_config(apply_overrides(recipe, [f"train.seed={seed}"]))
                # A variant that cuts the encoder elsewhere reads features of its own.
                row_data = prepared if run.encoder == config.encoder else prepare(
                    run, progress=False)
                label = ("seed recipe" if decoder == "merge" else decoder) + (
                    f", {variant}" if variant else "")
                model_dir = work / f"{cleaning}-{decoder}-{variant.replace(' ', '_')}-{seed}"
                trained, seconds = timed_training(run, model_dir, row_data, resume=False)
                kept = int(trained.best["epoch"])
                print(f"{label}, seed {seed}: kept epoch {kept} of {len(trained.history)} by "
                      f"{run.train.monitor}; {seconds:.1f} s per epoch (median; "
                      f"{len(prepared.dataset.splits['train']) * 5} captions)", flush=True)
                results += test_rows(f"{label} (seed {seed}, epoch {kept})", model_dir,
                                     row_data, run.reads_grid, refs)
                entry = {"cleaning": cleaning, "decoder": decoder, "seed": seed,
                         "variant": variant,
                         "recipe": settings + [o for o in args.set if ":" not in
                                               o.split("=", 1)[0]],
                         "kept_epoch": kept, "epochs": len(trained.history),
                         "seconds_per_epoch": seconds, "history": trained.history}
                if args.scst_epochs:
                    scst_dir = model_dir.with_name(model_dir.name + "-scst")
                    shutil.copytree(model_dir, scst_dir)
                    scst_run = parse_config(apply_overrides(run.to_dict(), [
                        f"train.scst.epochs={args.scst_epochs}"]))
                    tuned, scst_seconds = timed_training(scst_run, scst_dir, row_data,
                                                         resume=True)
                    stages = [e for e in tuned.history if e.get("scst")]
                    split = {k: float(np.median([e[k] for e in stages])) for k in
                             ("sampling_seconds", "reward_seconds", "update_seconds")}
                    scst_kept = int(tuned.best["epoch"])
                    print(f"{label} + SCST, seed {seed}: kept epoch {scst_kept} of "
                          f"{len(tuned.history)}; {scst_seconds:.1f} s per SCST epoch, "
                          f"{scst_seconds / seconds:.2f}x a cross-entropy epoch (median; "
                          + ", ".join(f"{k.split('_')[0]} {v:.1f} s" for k, v in split.items())
                          + "); mean reward " + " ".join(f"{e['reward']:.3f}" for e in stages),
                          flush=True)
                    results += test_rows(f"{label} + SCST (seed {seed}, epoch {scst_kept})",
                                         scst_dir, row_data, run.reads_grid, refs)
                    entry.update(scst_kept_epoch=scst_kept, scst_seconds_per_epoch=scst_seconds,
                                 scst_split=split, scst_history=tuned.history)
                report["rows"].append(entry)
        header = f"{'row':<52} {'decode':<7} " + " ".join(f"{k:>7}" for k in (
            "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "ROUGE-L")) + " distinct length"
        words = "one-letter words kept" if cleaning == "papers" else "one-letter words dropped"
        lines += [f"\n{cleaning} cleaning ({words}), test split, {summary['test']} images:",
                  header, "-" * len(header), *(row(*r) for r in results)]
        report["rows"] += [{"cleaning": cleaning, "row": r[0], "decode": r[1], **r[2]}
                           for r in results]
    print("\n".join(lines))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
