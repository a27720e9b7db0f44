"""The `captioning` command: sample-data, prepare, train, evaluate, caption, sweep, promote,
report (its arguments: arguments.py).

Only argument parsing and printing live here; each command calls one library function,
imported when the command runs (so `captioning --help` loads no TensorFlow). Every error
meant for the user is a CaptioningError (captioning/errors.py): printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from captioning.arguments import build_parser
from captioning.errors import CaptioningError, ConfigError
from captioning.log import quiet_start_up, show_info_logs


def _print_table(rows: dict[str, object]) -> None:
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        shown = value
        if isinstance(value, float):  # a count logged as a metric (param_count) as a count
            shown = f"{value:.0f}" if value.is_integer() and abs(value) >= 1000 else \
                f"{value:.4f}"
        print(f"  {key:<{width}}  {shown}")


_MODULES = {"captioning": "captioning.cli", "mlflow": "mlflow"}  # what `python -m` runs


def _runnable(program: str) -> str:
    """`program` (captioning, mlflow) as the shell here runs it, so that a printed next step
    runs as printed: its name where PATH finds the one beside this Python (an activated
    virtualenv, an installed package); else the path of that one, relative to this folder
    when below it (`.venv/bin/captioning` after `make demo`); else this Python's `-m`."""
    mine = Path(sys.executable).parent / program  # the venv's bin/, not the resolved link
    found = shutil.which(program)
    if mine.is_file():
        if found and Path(found).resolve() == mine.resolve():
            return program
        try:
            return shlex.quote(str(mine.relative_to(Path.cwd())))
        except ValueError:
            return shlex.quote(str(mine))
    return f"{shlex.quote(sys.executable)} -m {_MODULES[program]}"


def cmd_sample_data(args: argparse.Namespace) -> int:
    from captioning.data.sample import draw_sample_dataset

    root = draw_sample_dataset(args.dir, images=args.images, seed=args.seed, force=args.force)
    print(f"drew {args.images} images with 5 captions each into {root}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from captioning.config.loading import load_experiment
    from captioning.features.encoders import check_encoder
    from captioning.training.prepare import prepare

    config = load_experiment(args.experiment, args.overrides)
    check_encoder(config.encoder)
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
    from captioning.config.loading import load_experiment
    from captioning.training.backend import training_backend

    config = load_experiment(args.experiment, args.overrides)  # no Keras imported yet
    wanted = training_backend(config.train.backend,
                              config.train.epochs + config.train.scst.epochs)
    # Keras fixes its backend when it is first imported. The command itself sets it; a call
    # of main() from Python trains on the backend that process has.
    if args.own_process and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = wanted
        if wanted != "tensorflow":
            print(f"training on Keras' {wanted} backend (train.backend: "
                  f"{config.train.backend})", flush=True)
    from captioning.features.encoders import check_encoder
    from captioning.training.train import train_captioner

    check_encoder(config.encoder)
    result = train_captioner(config, model_dir=args.output)
    best = result.best
    print(f"best epoch {best['epoch']} of {len(result.history)}"
          f"{' (stopped early)' if result.stopped_early else ''}, by {config.train.monitor}:")
    _print_table({k: v for k, v in best.items() if k != "epoch"})
    print(f"model saved to {result.model_dir}")
    print(f"next: {_runnable('captioning')} evaluate --model {result.model_dir}")
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
    from captioning.inference.evaluate import evaluate_model

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
    if result.report:  # also in the parent run's report/ folder
        print("report: " + "\n  ".join(result.report[1:]))
    if result.confirm_table:  # sweep.confirm, also in the parent run's confirm/ folder
        print(f"confirmed with new seeds, by the mean of their kept {config.sweep.metric} "
              f"(promote ranks by it):\n" + result.confirm_table, end="")
    uri = result.tracking_uri
    from captioning.tracking.client import resolve_tracking_uri

    where = "" if uri == resolve_tracking_uri(None) else f" --tracking-uri {uri}"
    print(f"promote it to the model registry: {_runnable('captioning')} promote --sweep-run "
          f"{result.parent_run_id}{where}")
    # MLflow 3's UI opens on its GenAI pages unless asked for the model-training view.
    page = f"#/experiments/{result.experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        print(f"browse the runs: open {uri.rstrip('/')}/{page}")
    else:
        print(f"browse the runs: {_runnable('mlflow')} ui --backend-store-uri {uri} "
              f"--host 127.0.0.1 --port 5000, then open http://127.0.0.1:5000/{page}")
    return 0


def _resume_command(argv: list[str], sweep_dir: str) -> str:
    """The command that continues this sweep: the same arguments and --resume, run from this
    folder (relative paths in them stay right), with the storage path written out."""
    argv = [a for a in argv if a != "--resume"]
    if not any(a == "--storage" or a.startswith("--storage=") for a in argv):
        argv += ["--storage", sweep_dir.rsplit("/", 1)[0]]
    return (f"cd {shlex.quote(os.getcwd())} && {_runnable('captioning')} "
            f"{shlex.join([*argv, '--resume'])}")


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
    if done.confirmed:  # sweep.confirm: ranked by the mean over the confirmation seeds
        c = done.confirmed
        print(f"best by the mean {done.metric} over seeds {', '.join(map(str, c['seeds']))}: "
              f"the configuration of search trial {c['confirms']}, {c['mean']:.4f} (std "
              f"{c['std']:.4f}, 95% interval {c['low']:.4f} .. {c['high']:.4f}); its seed "
              f"{c['seed']} (run {done.run_id}, {c['seed_value']:.4f}) is promoted; means:")
    else:
        print(f"best: trial {done.trial_id} (run {done.run_id}), {done.metric} "
              f"{done.value:.4f}")
    _print_table(done.metrics)
    if done.created:
        print(f"registered {done.model_name} version {done.version}")
    else:
        print(f"already registered as {done.model_name} version {done.version}: "
              "no new version")
    print(f"alias {done.alias} -> {done.model_name} version {done.version}")
    uri_of = f"models:/{done.model_name}@{done.alias}"
    print(f"caption with it: {_runnable('captioning')} caption --model {uri_of} IMAGE...")
    print(f"serve it:        {_runnable('mlflow')} models serve -m {uri_of} --env-manager local "
          "--host 127.0.0.1 --port 5001")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from captioning.tracking.client import resolve_tracking_uri
    from captioning.tune.report import make_report

    done = make_report(resolve_tracking_uri(args.tracking_uri), sweep_run=args.sweep_run,
                       experiment=args.experiment)
    print("\n".join(done.summary))
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from captioning.config.loading import copy_experiment
    from captioning.config.shipped import builtin_names, describe

    if args.verb == "list":
        for name in builtin_names():
            print(f"{name:<12} {describe(name)}")
        run = _runnable("captioning")
        print(f"\nrun one: {run} sweep --experiment NAME; edit one: {run} experiments "
              "copy NAME")
        return 0
    copies = copy_experiment(args.name, args.to, force=args.force)
    for dest in copies.values():
        print(f"wrote {dest}")
    print(f"run it: {_runnable('captioning')} sweep --experiment {next(iter(copies.values()))}")
    return 0


COMMANDS = {"sample-data": cmd_sample_data, "prepare": cmd_prepare, "train": cmd_train,
            "evaluate": cmd_evaluate, "caption": cmd_caption, "sweep": cmd_sweep,
            "promote": cmd_promote, "report": cmd_report, "experiments": cmd_experiments}


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the command itself, not a call from Python
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv, args.own_process = argv, own_process
    show_info_logs()
    if own_process:  # TF_CPP_MIN_LOG_LEVEL is this process's, and its children's, to set
        quiet_start_up()
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
