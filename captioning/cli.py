"""The `captioning` command: sample-data, prepare, train, evaluate, caption.

Only argument parsing and printing live here; each command calls one library function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from captioning.config import DEFAULT_EXPERIMENT, ConfigError, load_experiment


def _experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT,
                        help="experiment YAML (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key, e.g. model.lstm_units=128")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning", description="Image captioning: data, training, evaluation.")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample-data", help="draw a small synthetic dataset "
                                 "(Kaggle Flickr8k layout)")
    sample.add_argument("dir", type=Path)
    sample.add_argument("--images", type=int, default=200)
    sample.add_argument("--seed", type=int, default=0)

    prep = commands.add_parser("prepare", help="read the dataset, extract and cache features, "
                               "print dataset statistics")
    _experiment_args(prep)

    train = commands.add_parser("train", help="train a captioner and keep its best epoch")
    _experiment_args(train)
    train.add_argument("--output", type=Path, default=None,
                       help="model directory (default: <output_dir>/<name>-<time>)")

    evaluate = commands.add_parser("evaluate", help="score a model on a split")
    evaluate.add_argument("--model", type=Path, required=True, help="model directory")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--beam", type=_positive, default=None,
                          help="beam width (1 = greedy; default: the model's decode.beam_width)")
    evaluate.add_argument("--data-root", type=Path, default=None,
                          help="dataset folder, if not the one the model was trained on")
    evaluate.add_argument("--output", type=Path, default=None,
                          help="JSON file for every image's prediction and references")

    sweep = commands.add_parser("sweep", help="search hyperparameters with Ray Tune + Optuna, "
                                "every trial tracked in MLflow")
    sweep.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT,
                       help="experiment YAML (default: %(default)s)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override an experiment key")
    sweep.add_argument("--search-space", type=Path, default=None,
                       help="search space YAML (default: the experiment's sweep.search_space)")
    sweep.add_argument("--num-samples", type=int, default=None, help="number of trials")
    sweep.add_argument("--address", default=None,
                       help="join a Ray cluster (e.g. auto, or ray://head:10001)")
    sweep.add_argument("--storage", default=None,
                       help="sweep storage path: shared file system or s3:// / gs:// URI")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep from its storage path")
    sweep.add_argument("--smoke-test", action="store_true",
                       help="3 short trials on small inputs: checks every path quickly")

    caption = commands.add_parser("caption", help="caption image files")
    caption.add_argument("images", type=Path, nargs="+")
    caption.add_argument("--model", type=Path, required=True, help="model directory")
    caption.add_argument("--beam", type=_positive, default=None,
                         help="beam width (1 = greedy; default: the model's decode.beam_width)")
    return parser


def _print_table(rows: dict[str, object]) -> None:
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")


def cmd_sample_data(args: argparse.Namespace) -> int:
    from captioning.sample_data import draw_sample_dataset

    if args.images < 1:
        raise ConfigError(f"--images: expected at least 1, got {args.images}")
    root = draw_sample_dataset(args.dir, images=args.images, seed=args.seed)
    print(f"drew {args.images} images with 5 captions each into {root}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from captioning.prepare import prepare

    config = load_experiment(args.experiment, args.overrides)
    prepared = prepare(config, say=print)
    summary = prepared.summary()
    print(f"dataset {config.data.root} ({summary.pop('layout')} layout)")
    _print_table({
        "images": summary["images"],
        "captions": summary["captions"],
        "captions per image": summary["captions_per_image"],
        "longest caption (words)": summary["longest_caption"],
        "train / val / test images": f"{summary['train']} / {summary['val']} / "
                                     f"{summary['test']}",
        f"vocabulary (words seen >= {config.data.min_word_count}x in train)":
            summary["vocabulary"],
        f"features ({config.encoder.name})": f"{summary['feature_dim']}-d, "
                                             f"{prepared.features.path}",
    })
    skipped = prepared.dataset.skipped
    print(f"skipped: {len(skipped)} image(s), {summary['skipped_captions']} caption(s)")
    for row in skipped:
        print(f"  {row.image}: {row.reason} ({row.captions} caption(s))")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from captioning.train import train_captioner

    config = load_experiment(args.experiment, args.overrides)
    result = train_captioner(config, model_dir=args.output)
    best = result.best
    print(f"best epoch {best['epoch']} of {len(result.history)}"
          f"{' (stopped early)' if result.stopped_early else ''}, by {config.train.monitor}:")
    _print_table({k: v for k, v in best.items() if k != "epoch"})
    print(f"model saved to {result.model_dir}")
    print(f"next: captioning evaluate --model {result.model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from captioning.evaluate import evaluate_model

    report = evaluate_model(args.model, args.split, args.beam, args.data_root, args.output)
    print(f"{report['split']} split, {report['images_scored']} images, "
          f"beam {report['beam_width']}:")
    _print_table(report["scores"])
    if args.output:
        print(f"predictions and references written to {args.output}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from captioning.sweep import run_sweep

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples: expected at least 1, got {args.num_samples}")
    config = load_experiment(args.experiment, args.overrides)
    result = run_sweep(config, experiment_path=args.experiment, search_space=args.search_space,
                       num_samples=args.num_samples, address=args.address, storage=args.storage,
                       resume=args.resume, smoke_test=args.smoke_test)
    print(f"\nsweep finished: {result.trials} trials ({result.errors} failed), "
          f"stored in {result.sweep_dir}")
    if result.best is None:
        print("no trial reported a score")
        return 1
    best = result.best
    print(f"best trial {best['trial_id']} (epoch {best['epoch']}, MLflow run {best['run_id']}):")
    _print_table({k: v for k, v in best["config"].items()})
    _print_table(best["metrics"])
    print(f"best model: {best['checkpoint']}")
    uri = result.tracking_uri
    if uri.startswith(("http://", "https://")):
        print(f"browse the runs: open {uri}")
    else:
        print(f"browse the runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
              "--port 5000, then open http://127.0.0.1:5000")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from captioning.captioner import Captioner

    captioner = Captioner.load(args.model)
    failures = 0
    for path, result in captioner.caption_files(args.images, args.beam):
        if isinstance(result, str):
            print(f"{path}\t{result}")
        else:
            failures += 1
            print(f"error: {result}", file=sys.stderr)
    return 1 if failures else 0


COMMANDS = {"sample-data": cmd_sample_data, "prepare": cmd_prepare, "train": cmd_train,
            "evaluate": cmd_evaluate, "caption": cmd_caption, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from captioning.datasets import DatasetError
    from captioning.errors import ModelDirError, TrackingError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DatasetError, ModelDirError, TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
