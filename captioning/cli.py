"""The `captioning` command: sample-data, prepare, train, evaluate, caption, sweep, promote.

Only argument parsing and printing live here; each command calls one library function,
imported when the command runs (so `captioning --help` loads no TensorFlow). Every error
meant for the user is a CaptioningError (captioning/errors.py): printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from captioning.config import limits
from captioning.config.shipped import DEFAULT_EXPERIMENT
from captioning.errors import CaptioningError, ConfigError
from captioning.log import show_info_logs

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


def _print_table(rows: dict[str, object]) -> None:
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")


def cmd_sample_data(args: argparse.Namespace) -> int:
    from captioning.data.sample import draw_sample_dataset

    root = draw_sample_dataset(args.dir, images=args.images, seed=args.seed, force=args.force)
    print(f"drew {args.images} images with 5 captions each into {root}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from captioning.config.loading import load_experiment
    from captioning.data.prepare import prepare

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
    images = prepared.dataset.skipped_images()
    print(f"skipped: {len(images)} image(s) with their {sum(r.captions for r in images)} "
          f"caption(s), and {summary['skipped_captions'] - sum(r.captions for r in images)} "
          "more caption(s) of images kept")
    for row in skipped:
        print(f"  {row.image}: {row.reason} ({row.captions} caption(s))")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import keras

    from captioning.config.loading import load_experiment
    from captioning.training.backend import training_backend
    from captioning.training.train import train_captioner

    config = load_experiment(args.experiment, args.overrides)
    wanted = training_backend(config.train.backend,
                              config.train.epochs + config.train.scst.epochs)
    if wanted != keras.backend.backend() and args.own_process:
        # Keras fixed its backend when it was imported: start again on the one that trains.
        print(f"training on Keras' {wanted} backend (train.backend: {config.train.backend})",
              flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "captioning.cli", *args.argv],
                  {**os.environ, "KERAS_BACKEND": wanted})
    result = train_captioner(config, model_dir=args.output)
    best = result.best
    print(f"best epoch {best['epoch']} of {len(result.history)}"
          f"{' (stopped early)' if result.stopped_early else ''}, by {config.train.monitor}:")
    _print_table({k: v for k, v in best.items() if k != "epoch"})
    print(f"model saved to {result.model_dir}")
    print(f"next: captioning evaluate --model {result.model_dir}")
    return 0


@contextmanager
def _model_dir(model: str, tracking_uri: str | None) -> Iterator[Path]:
    """A local model directory for `model`: itself, or a URI's model downloaded for the
    duration of the command."""
    from captioning.tracking.client import resolve_tracking_uri
    from captioning.tracking.model_registry import fetch, is_uri

    if not is_uri(model):
        yield Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="captioning-fetch-") as tmp:
        yield fetch(model, resolve_tracking_uri(tracking_uri), Path(tmp))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from captioning.evaluation.evaluate import evaluate_model

    with _model_dir(args.model, args.tracking_uri) as model_dir:
        report = evaluate_model(model_dir, args.split, args.beam, args.data_root, args.output,
                                source=args.model)
    print(f"{report['split']} split, {report['images_scored']} images, "
          f"beam {report['beam_width']}:")
    _print_table(report["scores"])
    if args.output:
        print(f"predictions and references written to {args.output}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from captioning.config.loading import experiment_file, load_experiment
    from captioning.tune.launcher import run_sweep
    from captioning.tune.pareto import table

    config = load_experiment(args.experiment, args.overrides)
    result = run_sweep(config, experiment_path=experiment_file(args.experiment),
                       search_space=args.search_space,
                       num_samples=args.num_samples, address=args.address, storage=args.storage,
                       resume=args.resume, smoke_test=args.smoke_test)
    if result.interrupted:
        print(f"\nsweep interrupted: {result.interrupted} trial(s) left to run; its state is "
              f"saved in {result.sweep_dir}, finished trials are kept")
        print(f"resume it: {_resume_command(args.argv, result.sweep_dir)}")
        return 130
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
    if result.pareto:  # sweep.objectives: the trade-off, also in the parent run's pareto/
        print("every trial at its kept epoch, the Pareto front first:\n"
              + table(result.pareto, list(config.sweep.objectives or {})), end="")
    uri = result.tracking_uri
    from captioning.tracking.client import resolve_tracking_uri

    where = "" if uri == resolve_tracking_uri(None) else f" --tracking-uri {uri}"
    print(f"promote it to the model registry: captioning promote --sweep-run "
          f"{result.parent_run_id}{where}")
    # MLflow 3's UI opens on its GenAI pages unless asked for the model-training view.
    page = f"#/experiments/{result.experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        print(f"browse the runs: open {uri.rstrip('/')}/{page}")
    else:
        print(f"browse the runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
              f"--port 5000, then open http://127.0.0.1:5000/{page}")
    return 0


def _resume_command(argv: list[str], sweep_dir: str) -> str:
    """The command that continues this sweep: the same arguments and --resume, run from this
    folder (relative paths in them stay right), with the storage path written out."""
    argv = [a for a in argv if a != "--resume"]
    if not any(a == "--storage" or a.startswith("--storage=") for a in argv):
        argv += ["--storage", sweep_dir.rsplit("/", 1)[0]]
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join(['captioning', *argv, '--resume'])}"


def cmd_caption(args: argparse.Namespace) -> int:
    from captioning.inference.captioner import Captioner

    with _model_dir(args.model, args.tracking_uri) as model_dir:
        captioner = Captioner.load(model_dir)
        if args.attention is not None:
            return _caption_with_attention(captioner, args)
        results = captioner.caption_files(args.images, args.beam)
    failures = 0
    for path, result in results:
        if isinstance(result, str):
            print(f"{path}\t{result}")
        else:
            failures += 1
            print(f"error: {result}", file=sys.stderr)
    return 1 if failures else 0


def _caption_with_attention(captioner: object, args: argparse.Namespace) -> int:
    from captioning.inference.attention import attention_files, draw_attention

    if not captioner.attends:
        raise ConfigError(f"--attention: this model's decoder ({captioner.config.model.decoder})"
                          " does not say where it looks; the attention decoder does")
    failures = 0
    for path, out in zip(args.images, attention_files(args.attention, args.images),
                         strict=True):
        words = draw_attention(captioner, path, out, args.beam)
        if not isinstance(words, list):
            failures += 1
            print(f"error: {words}", file=sys.stderr)
            continue
        print(f"{path}\t{' '.join(words)}\t(attention: {out})")
    return 1 if failures else 0


def cmd_promote(args: argparse.Namespace) -> int:
    from captioning.tracking.client import resolve_tracking_uri
    from captioning.tracking.model_registry import promote

    done = promote(resolve_tracking_uri(args.tracking_uri), experiment=args.experiment,
                   sweep_run=args.sweep_run, metric=args.metric, mode=args.mode,
                   model_name=args.model_name, alias=args.alias,
                   at_most=dict(args.max), at_least=dict(args.min))
    print(f"sweep {done.sweep} (MLflow run {done.sweep_run_id}): {done.candidates} finished "
          f"trial(s) scored by {done.metric}")
    print(f"best: trial {done.trial_id} (run {done.run_id}), {done.metric} {done.value:.4f}")
    _print_table(done.metrics)
    if done.created:
        print(f"registered {done.model_name} version {done.version}")
    else:
        print(f"already registered as {done.model_name} version {done.version}: "
              "no new version")
    print(f"alias {done.alias} -> {done.model_name} version {done.version}")
    uri_of = f"models:/{done.model_name}@{done.alias}"
    print(f"caption with it: captioning caption --model {uri_of} IMAGE...")
    print(f"serve it:        mlflow models serve -m {uri_of} --env-manager local "
          "--host 127.0.0.1 --port 5001")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from captioning.config.loading import copy_experiment
    from captioning.config.shipped import builtin_names, describe

    if args.verb == "list":
        for name in builtin_names():
            print(f"{name:<12} {describe(name)}")
        print("\nrun one: captioning sweep --experiment NAME; edit one: captioning experiments "
              "copy NAME")
        return 0
    copies = copy_experiment(args.name, args.to, force=args.force)
    for dest in copies.values():
        print(f"wrote {dest}")
    print(f"run it: captioning sweep --experiment {next(iter(copies.values()))}")
    return 0


COMMANDS = {"sample-data": cmd_sample_data, "prepare": cmd_prepare, "train": cmd_train,
            "evaluate": cmd_evaluate, "caption": cmd_caption, "sweep": cmd_sweep,
            "promote": cmd_promote, "experiments": cmd_experiments}


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the command itself, not a call from Python
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv, args.own_process = argv, own_process
    show_info_logs()
    try:
        return COMMANDS[args.command](args)
    except CaptioningError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
