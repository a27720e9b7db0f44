"""The `captioning` command's arguments: every subcommand, flag and help text (cli.py runs
them). argparse checks each flag; bounds come from config/limits.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioning.config import limits
from captioning.config.shipped import DEFAULT_EXPERIMENT

EXPERIMENT_HELP = ("a built-in experiment's name (captioning experiments list) or an "
                   "experiment YAML file (default: %(default)s)")


def _experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=EXPERIMENT_HELP)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key, e.g. model.lstm_units=128 "
                        "(paths relative to this folder)")


MODEL_HELP = ("model directory, or an MLflow model URI: models:/captioner@champion, "
              "models:/captioner/3, runs:/<run id>/model")


def _tracking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking and registry server, for models:/ and runs:/ "
                             "(default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


_beam_width = limits.flag(limits.MAX_BEAM_WIDTH, limits.BEAM_WHY)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning", description="Image captioning: data, training, sweeps, evaluation, "
        "promotion to the MLflow Model Registry.")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample-data", help="draw a small synthetic dataset "
                                 "(Kaggle Flickr8k layout)")
    sample.add_argument("dir", type=Path)
    sample.add_argument("--images", default=200,
                        type=limits.flag(limits.MAX_SAMPLE_IMAGES, limits.SAMPLE_IMAGES_WHY))
    sample.add_argument("--seed", type=limits.flag(2**32 - 1, "a NumPy seed", 0), default=0)
    sample.add_argument("--force", action="store_true",
                        help="draw into a folder that holds a dataset, replacing its captions.txt")

    prep = commands.add_parser("prepare", help="read the dataset, extract and cache features, "
                               "print dataset statistics")
    _experiment_args(prep)

    train = commands.add_parser("train", help="train a captioner and keep its best epoch")
    _experiment_args(train)
    train.add_argument("--output", type=Path, default=None,
                       help="model directory (default: <output_dir>/<name>-<time>)")

    evaluate = commands.add_parser("evaluate", help="score a model on a split")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--beam", type=_beam_width, default=None,
                          help="beam width (1 = greedy; default: the model's decode.beam_width)")
    evaluate.add_argument("--data-root", type=Path, default=None,
                          help="dataset folder, if not the one the model was trained on")
    evaluate.add_argument("--output", type=Path, default=None,
                          help="JSON file for every image's prediction and references")
    _tracking_arg(evaluate)

    sweep = commands.add_parser("sweep", help="search hyperparameters with Ray Tune + Optuna, "
                                "every trial tracked in MLflow")
    _experiment_args(sweep)
    sweep.add_argument("--search-space", type=Path, default=None,
                       help="search space YAML (default: the experiment's sweep.search_space)")
    sweep.add_argument("--num-samples", type=limits.flag(limits.MAX_TRIALS, limits.TRIALS_WHY),
                       default=None, help="number of trials")
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
    caption.add_argument("--model", required=True, help=MODEL_HELP)
    caption.add_argument("--beam", type=_beam_width, default=None,
                         help="beam width (1 = greedy; default: the model's decode.beam_width)")
    caption.add_argument("--attention", type=Path, default=None, metavar="OUT.png",
                         help="also draw each image with where the decoder looked for each "
                              "word (the attention decoder); with several images, "
                              "OUT-<image>.png each (OUT-<image>-<position>.png where two "
                              "images share a name)")
    _tracking_arg(caption)

    promote = commands.add_parser(
        "promote", help="register a sweep's best trial in the MLflow Model Registry and point "
        "an alias at it")
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--experiment", default=None,
                       help="the MLflow experiment whose newest sweep to promote from "
                            "(default: the newest sweep in the tracking store)")
    which.add_argument("--sweep-run", default=None, metavar="RUN_ID",
                       help="the sweep's MLflow parent run")
    promote.add_argument("--metric", default=None,
                         help="rank trials by this score of their kept epoch (default: the "
                              "metric the sweep ranked them by)")
    promote.add_argument("--mode", choices=["max", "min"], default=None,
                         help="max or min is best (default: min for losses, else max)")
    for flag, side in (("--max", "at most"), ("--min", "at least")):
        promote.add_argument(flag, action="append", default=[], metavar="METRIC=VALUE",
                             type=limits.metric_bound,
                             help=f"only trials whose kept epoch has METRIC {side} VALUE, e.g. "
                                  "decode_ms_per_caption=5 (repeatable)")
    promote.add_argument("--model-name", default="captioner",
                         help="registered model name (default: %(default)s)")
    promote.add_argument("--alias", default="champion", help="alias (default: %(default)s)")
    _tracking_arg(promote)

    report = commands.add_parser(
        "report", help="write a sweep's report to its MLflow parent run (parameter "
        "importances, parallel coordinates, history, top trials) and print its summary")
    which = report.add_mutually_exclusive_group()
    which.add_argument("--experiment", default=None,
                       help="the MLflow experiment whose newest sweep to report on (default: "
                            "the newest sweep in the tracking store)")
    which.add_argument("--sweep-run", default=None, metavar="RUN_ID",
                       help="the sweep's MLflow parent run")
    _tracking_arg(report)

    experiments = commands.add_parser(
        "experiments", help="the built-in experiments: list them, or copy one here to edit")
    verbs = experiments.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="list the built-in experiments")
    copy = verbs.add_parser("copy", help="copy a built-in experiment and its search space "
                            "into experiments/ and search_spaces/ under a folder, to edit")
    copy.add_argument("name", help="a built-in experiment (captioning experiments list)")
    copy.add_argument("--to", type=Path, default=Path("."),
                      help="the folder to copy into (default: this one)")
    copy.add_argument("--force", action="store_true", help="overwrite files already there")
    return parser
