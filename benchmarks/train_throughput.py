"""Training throughput: the seed's one-sample-per-next-word regime against teacher forcing.

Every regime trains the same merge model (same sizes, same optimizer) on the same synthetic,
Flickr8k-like captions, one epoch per timing, timed around `model.fit`, in captions per second:

  seed  every caption of L tokens becomes L-1 samples: the prefix pre-padded with 0 to the
        longest caption (mask_zero embedding), the next word as a one-hot vector over the
        vocabulary, categorical cross-entropy; prefix model (teacher_forcing=False); batches
        of 32 samples. Extra row: batches of every sample of 32 images (the seed's
        progressive-loading generator), --seed-batch-images 0 skips it.
  ours  one sample per caption, all next words at once (teacher_forcing=True), masked sparse
        loss, `CaptionBatches` (length-bucketed, shuffled), batches of 32 captions.

Each regime is warmed up on a few batches first; the timed epochs are interleaved and the best
of --repeats is reported, since a shared machine's load comes and goes.

    .venv/bin/python benchmarks/train_throughput.py                  # ~2.5 min on 2 CPU cores
    .venv/bin/python benchmarks/train_throughput.py --vocab 2232 --prefix-length 34  # Flickr8k
    .venv/bin/python benchmarks/train_throughput.py --captions 30000 --vocab 2232 \
        --prefix-length 34 --repeats 1                  # a Flickr8k epoch: ~20 min on 2 cores

Real-data mode (--data-root): the training levers of our own trainer, side by side on real
captions and cached features: today's float32 (batches from the PyDataset), then each lever
alone and the levers kept together, in captions/s, seconds per Flickr8k-sized epoch (30,000
captions), the ratio to today, and the mean loss over the timed steps (the same batches for
every row, so a faster but wrong path shows):

  tf.data       batches gathered and cut in the graph, ahead of the step (CaptionBatches.tf_dataset)
  bf16          train.precision: mixed_bfloat16 (logits, loss and weights in float32)
  spe 8         train.steps_per_execution: 8
  xla           compile(jit_compile=True) (one compilation per bucket width)
  bucket 1      batches cut to their longest caption exactly: no work on padding
  jax           Keras' JAX backend: the whole train step compiled by XLA, once per batch shape
                (in a child process: Keras' backend is fixed per process)

    .venv/bin/python benchmarks/train_throughput.py --data-root ../shared/data/flickr8k-dev \
        --encoder mobilenet --alpha 0.25 \
        --weights ../shared/data/weights/mobilenet_2_5_224_tf_no_top.h5 \
        --embedding spacy:../shared/data/spacy/en_core_web_md-3.8.0 [--decoder attention]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import add_model_size_args, machine_info, print_timing_notes  # noqa: E402

from captioning.config.schema import ModelConfig, TrainConfig  # noqa: E402
from captioning.data.batches import CaptionBatches  # noqa: E402
from captioning.models.build import build_model, compile_model  # noqa: E402

START, END = 2, 3  # ids of startseq/endseq in captioning.data.vocabulary.Vocabulary (0 pad, 1 unk)


def synthetic_captions(count: int, vocab_size: int, rng: np.random.Generator,
                       min_tokens: int = 8, max_tokens: int = 36) -> list[np.ndarray]:
    """Token ids `startseq w.. endseq`, Flickr8k-like lengths: 8..36 tokens, mean ~13.

    Lengths are 8 + a gamma(2, 2.5) tail (mean 5), clipped; words are Zipf-distributed over
    the vocabulary's word ids (4..vocab_size-1), as caption words are.
    """
    lengths = np.clip(min_tokens + np.round(rng.gamma(2.0, 2.5, count)), min_tokens,
                      max_tokens).astype(int)
    ranks = np.arange(1, vocab_size - 4 + 1)
    probs = 1.0 / ranks
    probs /= probs.sum()
    captions = []
    for length in lengths:
        words = rng.choice(vocab_size - 4, size=length - 2, p=probs) + 4
        captions.append(np.concatenate([[START], words, [END]]).astype("int32"))
    return captions


class SeedSamples(keras.utils.PyDataset):
    """The seed's generator: one sample per next word, prefix pre-padded, one-hot target.

    Samples come image by image (all captions of an image in a row), as the seed's generator
    produced them. With `images_per_batch` a batch is every sample of that many images (the
    seed's progressive-loading generator); otherwise it is `batch_size` samples.
    """

    def __init__(self, features: np.ndarray, rows: np.ndarray, captions: list[np.ndarray],
                 vocab_size: int, max_length: int, batch_size: int,
                 images_per_batch: int | None = None):
        super().__init__()
        self.features, self.vocab_size, self.max_length = features, vocab_size, max_length
        order = np.argsort(rows, kind="stable")  # image by image
        samples = [(i, n) for i in order for n in range(1, len(captions[i]))]
        self.caption = np.array([s[0] for s in samples])
        self.cut = np.array([s[1] for s in samples])
        self.rows, self.captions = rows, captions
        if images_per_batch:
            image_of_sample = rows[self.caption]
            starts = np.flatnonzero(np.r_[True, image_of_sample[1:] != image_of_sample[:-1]])
            bounds = np.r_[starts[::images_per_batch], len(samples)]
        else:
            bounds = np.r_[np.arange(0, len(samples), batch_size), len(samples)]
        self.bounds = bounds

    @property
    def samples(self) -> int:
        return len(self.caption)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        lo, hi = self.bounds[index], self.bounds[index + 1]
        tokens = np.zeros((hi - lo, self.max_length), "int32")
        onehot = np.zeros((hi - lo, self.vocab_size), "float32")
        for j, (i, n) in enumerate(zip(self.caption[lo:hi], self.cut[lo:hi], strict=True)):
            ids = self.captions[i]
            tokens[j, self.max_length - n:] = ids[:n]  # pad_sequences' default: pre-padding
            onehot[j, ids[n]] = 1.0
        return {"image": self.features[self.rows[self.caption[lo:hi]]], "tokens": tokens}, onehot


def timed_fit(model: keras.Model, data: keras.utils.PyDataset) -> float:
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start


LEVERS = {  # name -> (backend, pipeline, precision, steps_per_execution, jit_compile, bucket)
    "float32 (today)": ("tensorflow", "pydataset", "float32", 1, False, 4),
    "tf.data": ("tensorflow", "tf.data", "float32", 1, False, 4),
    "bf16": ("tensorflow", "pydataset", "mixed_bfloat16", 1, False, 4),
    "spe 8": ("tensorflow", "pydataset", "float32", 8, False, 4),
    "xla": ("tensorflow", "pydataset", "float32", 1, True, 4),
    "bucket 1": ("tensorflow", "pydataset", "float32", 1, False, 1),
    "tf.data + bf16 + spe 8": ("tensorflow", "tf.data", "mixed_bfloat16", 8, False, 4),
    "jax": ("jax", "pydataset", "float32", 1, False, 4),
    "jax + bf16": ("jax", "pydataset", "mixed_bfloat16", 1, False, 4),
    "jax + bucket 1": ("jax", "pydataset", "float32", 1, False, 1),
}


class _Steps(keras.utils.PyDataset):
    """The first `count` batches of a CaptionBatches, in its order."""

    def __init__(self, batches: CaptionBatches, count: int):
        super().__init__()
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.batches[index]


def real_data(args: argparse.Namespace) -> int:
    from captioning.config.schema import parse_config
    from captioning.models.build import precision
    from captioning.models.embeddings import load_vectors, spacy_embedding_matrix
    from captioning.training.prepare import prepare
    from captioning.training.train import caption_split, model_inputs

    encoder = {"name": args.encoder, "weights": args.weights, "batch_size": 64}
    if args.alpha is not None:
        encoder["alpha"] = args.alpha
    config = parse_config({"data": {"root": str(args.data_root)}, "encoder": encoder,
                           "embedding": args.embedding,
                           "model": {"decoder": args.decoder, "lstm_units": args.units,
                                     "dropout": 0.5, "train_embedding": False}})
    prepared = prepare(config, progress=False)
    rows, sequences = caption_split(prepared, "train", 40)
    grid = config.model.grid
    features, mean, var = model_inputs(prepared.features, np.unique(rows), grid)
    matrix = None
    if config.embedding.startswith("spacy:"):
        matrix = spacy_embedding_matrix(load_vectors(config.embedding.removeprefix("spacy:")),
                                        prepared.vocab).matrix
    here = keras.backend.backend()
    levers = [name for name in LEVERS if (not args.levers or name in args.levers)
              and LEVERS[name][0] == here]
    elsewhere = [name for name in LEVERS if (not args.levers or name in args.levers)
                 and LEVERS[name][0] != here]
    if not args.json:
        print(f"== training levers, real data: {args.data_root}, decoder {args.decoder} ==")
        for line in machine_info():
            print(line)
        print(f"data: {len(sequences)} training captions of {len(np.unique(rows))} images, "
              f"vocabulary {len(prepared.vocab)}, features {features.shape[1:]} "
              f"({config.encoder.name}); batch 32, Adam 0.0012; {args.steps} timed steps per "
              f"epoch, best of {args.repeats} interleaved (rows of another backend: in a "
              "process of their own, after these)")

    runs = []
    for name in levers:
        _, pipeline, policy, spe, jit, bucket = LEVERS[name]
        keras.utils.set_random_seed(args.seed)
        with precision(policy):
            model = build_model(config.model, len(prepared.vocab), mean, var, matrix,
                                positions=prepared.features.positions if grid else None)
            compile_model(model, TrainConfig(learning_rate=0.0012, steps_per_execution=spe))
            if jit:
                model.jit_compile = True
        batches = CaptionBatches(features, rows, sequences, 32, shuffle=True, seed=args.seed,
                                 bucket=bucket)
        if pipeline == "tf.data":
            data = batches.tf_dataset().take(args.steps)
        else:
            data = _Steps(batches, args.steps)
        started = time.perf_counter()
        model.fit(data, epochs=1, verbose=0, shuffle=False)  # warm-up: every shape traced
        runs.append((name, model, data, time.perf_counter() - started))

    load_before = os.getloadavg()
    times: list[list[float]] = [[] for _ in runs]
    losses = []
    for repeat in range(args.repeats):
        for i, (_, model, data, _) in enumerate(runs):
            started = time.perf_counter()
            history = model.fit(data, epochs=1, verbose=0, shuffle=False)
            times[i].append(time.perf_counter() - started)
            if repeat == 0:
                losses.append(history.history["loss"][0])
    load_after = os.getloadavg()
    rows_out = [{"name": name, "seconds": secs, "loss": loss, "warm": warm}
                for (name, _, _, warm), secs, loss in zip(runs, times, losses, strict=True)]
    if args.json:
        args.json.write_text(json.dumps(rows_out))
        return 0
    if elsewhere:
        import subprocess
        import tempfile

        out = Path(tempfile.mkdtemp()) / "rows.json"
        other = LEVERS[elsewhere[0]][0]
        argv = [a for a in sys.argv[1:]]
        subprocess.run([sys.executable, __file__, *argv, "--levers", *elsewhere,
                        "--json", str(out)], env={**os.environ, "KERAS_BACKEND": other},
                       check=True)
        rows_out += json.loads(out.read_text())
        times = [row["seconds"] for row in rows_out]
    header = (f"{'lever':<26} {'captions/s':>11} {'s / 30k-caption epoch':>22} {'ratio':>6} "
              f"{'loss':>7} {'warm-up s':>10}")
    print("\n" + header + "\n" + "-" * len(header))
    base = min(rows_out[0]["seconds"])
    for row in rows_out:
        rate = 32 * args.steps / min(row["seconds"])
        print(f"{row['name']:<26} {rate:>11.1f} {30000 / rate:>22.1f} "
              f"{base / min(row['seconds']):>5.2f}x {row['loss']:>7.4f} {row['warm']:>10.1f}")
    print_timing_notes(times, "epochs", load_before, load_after)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=2000,
                        help="captions trained by each side, one epoch (default 2000)")
    parser.add_argument("--captions-per-image", type=int, default=5)
    add_model_size_args(parser)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="captions per batch for ours; samples per batch for the seed")
    parser.add_argument("--seed-batch-images", type=int, default=32,
                        help="also time the seed with batches of all samples of N images "
                             "(its progressive-loading generator; default 32, 0 = skip)")
    parser.add_argument("--prefix-length", type=int, default=0,
                        help="the seed's padded prefix length (default 0: the longest caption)")
    parser.add_argument("--warmup-captions", type=int, default=144,
                        help="captions of the warm-up fit (default 144: 4.5 batches)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed epochs per regime, interleaved; best reported (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    real = parser.add_argument_group("real-data mode")
    real.add_argument("--data-root", type=Path, default=None,
                      help="time our training levers on this dataset instead (see above)")
    real.add_argument("--encoder", default="mobilenet")
    real.add_argument("--alpha", type=float, default=None)
    real.add_argument("--weights", default="imagenet")
    real.add_argument("--embedding", default="spacy:en_core_web_md")
    real.add_argument("--decoder", default="merge", choices=["merge", "attention",
                                                              "transformer"])
    real.add_argument("--steps", type=int, default=150, help="timed steps per epoch")
    real.add_argument("--levers", nargs="*", default=None, choices=list(LEVERS),
                      help="only these rows (default: all)")
    real.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data_root is not None:
        return real_data(args)
    if min(args.captions, args.repeats, args.batch_size, args.captions_per_image) < 1:
        parser.error("--captions, --repeats, --batch-size, --captions-per-image must be >= 1")

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    captions = synthetic_captions(args.captions, args.vocab, rng)
    images = -(-args.captions // args.captions_per_image)
    rows = np.arange(args.captions) // args.captions_per_image
    features = rng.normal(size=(images, args.feature_dim)).astype("float32")
    mean, var = features.mean(axis=0), features.var(axis=0)
    lengths = np.array([len(c) for c in captions])
    # The seed padded every prefix to the longest caption (34 tokens on Flickr8k).
    prefix_length = args.prefix_length or int(lengths.max())
    if prefix_length < lengths.max() - 1:
        parser.error(f"--prefix-length must be at least {lengths.max() - 1} (longest prefix)")
    model_config = ModelConfig(lstm_units=args.units, embedding_dim=args.embedding_dim,
                               dropout=0.5)
    train_config = TrainConfig(batch_size=args.batch_size, learning_rate=0.0012)

    print("== training throughput: seed (prefix per next word) vs ours (teacher forcing) ==")
    for line in machine_info():
        print(line)
    print(f"data: {args.captions} captions of {images} images, tokens/caption min "
          f"{lengths.min()} mean {lengths.mean():.1f} max {lengths.max()} (startseq/endseq "
          f"included), vocabulary {args.vocab}, features {args.feature_dim}-d N(0,1)")
    print(f"model: lstm_units {args.units}, embedding_dim {args.embedding_dim}, dropout 0.5, "
          f"Adam lr 0.0012; seed prefixes pre-padded to {prefix_length} tokens; "
          f"one epoch per timing, timed around model.fit (verbose=0)")

    # Each regime: a fresh model, a warm-up fit on a few batches of varying shape (so Keras'
    # traced train step already accepts any batch/time size), then the timed epoch(s).
    def seed_model() -> keras.Model:
        model = build_model(model_config, args.vocab, mean, var, teacher_forcing=False,
                            prefix_length=prefix_length)
        model.compile(optimizer=keras.optimizers.Adam(0.0012),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        return model

    regimes = []  # (label, batch description, model, data)
    seed_runs = [("seed: prefix samples, one-hot", None)]
    if args.seed_batch_images:
        seed_runs.append((f"seed: {args.seed_batch_images} images/batch", args.seed_batch_images))
    for label, per_image in seed_runs:
        model = seed_model()
        warm = (int(1.5 * per_image * args.captions_per_image) if per_image
                else args.warmup_captions)
        timed_fit(model, SeedSamples(features, rows[:warm], captions[:warm], args.vocab,
                                     prefix_length, args.batch_size, per_image))
        data = SeedSamples(features, rows, captions, args.vocab, prefix_length,
                           args.batch_size, per_image)
        batch = (f"{data.samples / len(data):.0f} samples" if per_image
                 else f"{args.batch_size} samples")
        regimes.append((label, batch, model, data, data.samples * prefix_length))

    # Ours with the same batching as each seed row: 32 captions against 32 samples, and all
    # captions of N images against all samples of N images (the same data per update).
    ours_runs = [("ours: teacher forcing", args.batch_size)]
    if args.seed_batch_images:
        ours_runs.append((f"ours: {args.seed_batch_images} images/batch",
                          args.seed_batch_images * args.captions_per_image))
    for label, batch_size in ours_runs:
        model = compile_model(build_model(model_config, args.vocab, mean, var), train_config)
        warm = max(args.warmup_captions, int(1.5 * batch_size))
        timed_fit(model, CaptionBatches(features, rows[:warm], captions[:warm], batch_size,
                                        shuffle=True, seed=args.seed))
        data = CaptionBatches(features, rows, captions, batch_size, shuffle=True,
                              seed=args.seed)
        widths = sum(-(-int(data.lengths[b].max()) // data.bucket) * data.bucket * len(b)
                     for b in data.batches)
        regimes.append((label, f"{batch_size} captions", model, data, widths))

    load_before = os.getloadavg()
    times: list[list[float]] = [[] for _ in regimes]
    for _ in range(args.repeats):  # interleaved, so a busy spell hits every regime alike
        for i, (_, _, model, data, _) in enumerate(regimes):
            times[i].append(timed_fit(model, data))
    load_after = os.getloadavg()

    print()
    header = (f"{'regime':<30} {'batch':>13} {'steps':>6} {'LSTM steps':>11} {'seconds':>8} "
              f"{'captions/s':>11} {'tokens/s':>9}")
    print(header)
    print("-" * len(header))
    targets = int((lengths - 1).sum())
    best = [min(t) for t in times]
    for (label, batch, _, data, lstm_steps), secs in zip(regimes, best, strict=True):
        print(f"{label:<30} {batch:>13} {len(data):>6} {lstm_steps:>11} {secs:>8.2f} "
              f"{args.captions / secs:>11.1f} {targets / secs:>9.0f}")
    print(f"(tokens/s counts the {targets} real target words; LSTM steps = timesteps run per "
          f"epoch, padding included: samples x prefix length, or captions x bucket width)")
    print_timing_notes(times, "epochs", load_before, load_after)
    # Pair each seed row with the ours row of the same batching (seed rows come first).
    pairs = len(seed_runs)
    for (seed_label, *_), (ours_label, *_), seed_secs, ours_secs in zip(
            regimes[:pairs], regimes[pairs:], best[:pairs], best[pairs:], strict=True):
        print(f"ratio ({ours_label} / {seed_label}): {seed_secs / ours_secs:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
