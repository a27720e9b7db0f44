"""Decoding throughput: the seed's per-word `model.predict` loop against batched decoding.

One set of (random) weights is shared by every row, so all rows compute the same captions:

  seed          for each image, for each word: one `model.predict` (verbose=0) of the prefix
                model (teacher_forcing=False) on the prefix so far, pre-padded to the prefix
                length; argmax; stop at endseq or max length. Timed on a few images (slow).
  seed, batched the same prefix model, but one `predict_on_batch` per word for all images
                (the whole prefix is re-read by the LSTM at every step). Extra row: it separates
                the gain from batching from the gain from carrying the LSTM state.
  ours          `captioning.models.decoding.generate`: one stepper call per word for the whole batch
                of images, carrying the LSTM state; greedy, and beam width 3 as an extra row.
  attention,    the other decoders (--decoders), on a random feature grid (--positions x
  transformer   --grid-channels; MobileNet alpha 0.25 at 224 px: 49 x 256), greedy and beam 3;
                the Transformer twice: with its key/value cache (what `captioning` uses) and
                recomputing the whole prefix under the causal mask at every step.

With random weights greedy decoding may emit endseq at any step (or never), so by default the
logits bias of endseq (and padding) is set very low in the shared weights: every caption then
has exactly max_length - 2 words on every row, and rates are comparable. --keep-endseq turns
that off (then compare words/s).

The seed row is timed on --seed-images images (it is slow), the others on --images; each row's
runs are interleaved and the best of --repeats is reported.

    .venv/bin/python benchmarks/decode_throughput.py                 # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/decode_throughput.py --images 1000 --vocab 2232 --max-length 34 \
        --repeats 1                                      # Flickr8k-like lengths: ~1.5 min
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import add_model_size_args, machine_info, print_timing_notes  # noqa: E402

from captioning.config.schema import ModelConfig  # noqa: E402
from captioning.data.vocabulary import END, PAD, START, UNK, Vocabulary  # noqa: E402
from captioning.models.build import build_model, step_decoder  # noqa: E402
from captioning.models.decoding import generate  # noqa: E402
from captioning.models.transformer import TransformerStepper  # noqa: E402


def pre_padded(prefixes: list[list[int]], length: int) -> np.ndarray:
    """Keras' pad_sequences default (the seed's): zeros in front, the prefix at the end."""
    out = np.zeros((len(prefixes), length), "int32")
    for i, ids in enumerate(prefixes):
        out[i, length - len(ids):] = ids
    return out


def seed_greedy(model: keras.Model, vocab: Vocabulary, photo: np.ndarray, max_length: int,
                prefix_length: int) -> list[int]:
    """The seed's loop for one image: one `predict` per word on the padded prefix so far."""
    ids = [vocab.start_id]
    for _ in range(max_length - 2):  # max_length counts startseq and endseq, as in decode
        sequence = pre_padded([ids], prefix_length)
        yhat = model.predict([photo[None], sequence], verbose=0)
        word = int(np.argmax(yhat))
        if word in (vocab.end_id, vocab.pad_id):  # the seed stopped on endseq or no word
            break
        ids.append(word)
    return ids[1:]


def seed_batched(model: keras.Model, vocab: Vocabulary, features: np.ndarray, max_length: int,
                 prefix_length: int, batch_size: int) -> list[list[int]]:
    """The seed's prefix model, but one `predict_on_batch` per word for a chunk of images."""
    results: list[list[int]] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        prefixes = [[vocab.start_id] for _ in chunk]
        done = np.zeros(len(chunk), bool)
        for _ in range(max_length - 2):
            logits = np.asarray(model.predict_on_batch(
                [chunk, pre_padded(prefixes, prefix_length)]))
            words = logits.argmax(axis=-1)
            for i in np.flatnonzero(~done):
                if words[i] in (vocab.end_id, vocab.pad_id):
                    done[i] = True
                else:
                    prefixes[i].append(int(words[i]))
            if done.all():
                break
        results.extend(p[1:] for p in prefixes)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500,
                        help="images decoded by ours and by the batched seed row (default 500)")
    parser.add_argument("--seed-images", type=int, default=20,
                        help="images decoded by the seed's per-word predict loop (default 20)")
    add_model_size_args(parser)
    parser.add_argument("--max-length", type=int, default=20,
                        help="tokens incl. startseq and endseq: max_length-2 words (default 20)")
    parser.add_argument("--prefix-length", type=int, default=34,
                        help="the prefix model's input length (seed on Flickr8k: 34)")
    parser.add_argument("--beam-width", type=int, default=3, help="extra row; 0 = skip")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per decoding chunk (generate's default: 256)")
    parser.add_argument("--keep-endseq", action="store_true",
                        help="leave the random weights alone (captions may end early)")
    parser.add_argument("--no-seed-batched", action="store_true",
                        help="skip the extra 'seed model, batched' row")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per row, interleaved; the best is reported (default 3)")
    parser.add_argument("--decoders", nargs="*", default=["attention", "transformer"],
                        choices=["attention", "transformer"],
                        help="rows of the other decoders (default: both)")
    parser.add_argument("--positions", type=int, default=49, help="grid positions (default 49)")
    parser.add_argument("--grid-channels", type=int, default=256,
                        help="grid channels (default 256, MobileNet alpha 0.25)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.images, args.seed_images, args.repeats, args.batch_size) < 1:
        parser.error("--images, --seed-images, --repeats, --batch-size must be >= 1")
    if args.max_length < 2:
        parser.error("--max-length must be at least 2")
    if args.prefix_length < args.max_length:
        parser.error("--prefix-length must be at least --max-length")

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # the warm-ups' retracing notices
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vocab = Vocabulary([PAD, UNK, START, END, *(f"w{i}" for i in range(4, args.vocab))])
    count = max(args.images, args.seed_images)
    features = rng.normal(size=(count, args.feature_dim)).astype("float32")
    mean, var = features.mean(axis=0), features.var(axis=0)
    config = ModelConfig(lstm_units=args.units, embedding_dim=args.embedding_dim, dropout=0.5)

    def suppress_endseq(model: keras.Model) -> keras.Model:
        if not args.keep_endseq:
            logits = model.get_layer("logits")
            kernel, bias = logits.get_weights()
            bias[[vocab.end_id, vocab.pad_id]] = -1e4
            logits.set_weights([kernel, bias])
        return model

    model = suppress_endseq(build_model(config, len(vocab), mean, var))  # teacher-forced
    prefix_model = build_model(config, len(vocab), mean, var, teacher_forcing=False,
                               prefix_length=args.prefix_length)
    prefix_model.set_weights(model.get_weights())
    decoder = step_decoder(model)
    grid = rng.normal(size=(args.images, args.positions, args.grid_channels)).astype("float32")
    others = []  # (label, stepper)
    for name in args.decoders:
        other = suppress_endseq(build_model(
            ModelConfig(decoder=name, dropout=0.5), len(vocab), grid.mean(axis=(0, 1)),
            grid.var(axis=(0, 1)), positions=args.positions, max_length=args.max_length))
        others.append((name, step_decoder(other)))
        if name == "transformer":
            others.append(("transformer, recompute", TransformerStepper(other, cache=False)))

    print("== decoding throughput: seed (one predict per word per image) vs ours (batched) ==")
    for line in machine_info():
        print(line)
    print(f"model: lstm_units {args.units}, embedding_dim {args.embedding_dim}, vocabulary "
          f"{args.vocab}, features {args.feature_dim}-d N(0,1), random weights (seeded), "
          f"endseq {'as drawn' if args.keep_endseq else 'suppressed'}")
    print(f"decoding: max_length {args.max_length} tokens incl. startseq "
          f"(<= {args.max_length - 2} words), prefix model length {args.prefix_length} "
          f"(pre-padded), chunks of {args.batch_size} images")

    # Warm-ups: trace every function once (two batch shapes each, so the traces generalise).
    for _ in range(2):
        prefix_model.predict([features[:1], pre_padded([[vocab.start_id]], args.prefix_length)],
                             verbose=0)
    generate(decoder, vocab, features[:40], max_length=4, batch_size=32)
    if args.beam_width > 1:
        generate(decoder, vocab, features[:40], beam_width=args.beam_width, max_length=4,
                 batch_size=32)
    if not args.no_seed_batched:
        seed_batched(prefix_model, vocab, features[:40], 3, args.prefix_length, 32)
    for _, stepper in others:
        for width in {1, max(args.beam_width, 1)}:
            generate(stepper, vocab, grid[:40], beam_width=width, max_length=4, batch_size=32)

    def seed_loop() -> list[str]:
        return [vocab.decode(seed_greedy(prefix_model, vocab, f, args.max_length,
                                         args.prefix_length))
                for f in features[:args.seed_images]]

    def seed_batch() -> list[str]:
        ids = seed_batched(prefix_model, vocab, features[:args.images], args.max_length,
                           args.prefix_length, args.batch_size)
        return [vocab.decode(i) for i in ids]

    def ours(width: int) -> list[str]:
        return generate(decoder, vocab, features[:args.images], beam_width=width,
                        max_length=args.max_length, batch_size=args.batch_size)

    decoders = [("seed: predict per word/image", args.seed_images, seed_loop)]
    if not args.no_seed_batched:
        decoders.append(("seed model, batched", args.images, seed_batch))
    decoders.append(("ours: generate, greedy", args.images, lambda: ours(1)))
    if args.beam_width > 1:
        decoders.append((f"ours: generate, beam {args.beam_width}", args.images,
                         lambda: ours(args.beam_width)))
    for label, stepper in others:
        for width in (1, args.beam_width) if args.beam_width > 1 else (1,):
            decoders.append((f"{label}, {'greedy' if width == 1 else f'beam {width}'}",
                             args.images, lambda s=stepper, w=width: generate(
                                 s, vocab, grid, beam_width=w, max_length=args.max_length,
                                 batch_size=args.batch_size)))

    load_before = os.getloadavg()
    times: list[list[float]] = [[] for _ in decoders]
    texts: list[list[str]] = []
    for _ in range(args.repeats):  # interleaved, so a busy spell hits every row alike
        texts = []
        for i, (_, _, run) in enumerate(decoders):
            start = time.perf_counter()
            texts.append(run())
            times[i].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    print()
    header = (f"{'decoder':<34} {'images':>7} {'words':>7} {'seconds':>8} {'captions/s':>11} "
              f"{'words/s':>9} {'x seed':>8}")
    print(header)
    print("-" * len(header))
    best = [min(t) for t in times]
    seed_rate = args.seed_images / best[0]
    for (label, images, _), text, secs in zip(decoders, texts, best, strict=True):
        words = sum(len(t.split()) for t in text)
        print(f"{label:<34} {images:>7} {words:>7} {secs:>8.2f} {images / secs:>11.2f} "
              f"{words / secs:>9.0f} {images / secs / seed_rate:>7.1f}x")
    print_timing_notes(times, "runs", load_before, load_after)
    seed_text = texts[0]
    batched_text = None if args.no_seed_batched else texts[1]
    ours_text = texts[1 if args.no_seed_batched else 2]
    ours_rate = args.images / best[1 if args.no_seed_batched else 2]

    overlap = min(args.seed_images, args.images)
    same = sum(a == b for a, b in zip(seed_text[:overlap], ours_text[:overlap], strict=True))
    print(f"\ngreedy captions, seed loop vs ours, first {overlap} images: {same}/{overlap} "
          f"identical{' (match)' if same == overlap else ' (MISMATCH)'}")
    if batched_text is not None:
        same = sum(a == b for a, b in zip(batched_text, ours_text, strict=True))
        print(f"greedy captions, seed model batched vs ours, {args.images} images: "
              f"{same}/{args.images} identical"
              f"{' (match)' if same == args.images else ' (MISMATCH)'}")
    print(f"distinct greedy captions: {len(set(ours_text))}/{len(ours_text)}, distinct words "
          f"used: {len({w for t in ours_text for w in t.split()})} (random weights)")
    by_label = {label: text for (label, _, _), text in zip(decoders, texts, strict=True)}
    if "transformer, greedy" in by_label:
        same = sum(a == b for a, b in zip(by_label["transformer, greedy"],
                                          by_label["transformer, recompute, greedy"],
                                          strict=True))
        print(f"greedy captions, transformer cached vs recomputed, {args.images} images: "
              f"{same}/{args.images} identical"
              f"{' (match)' if same == args.images else ' (MISMATCH)'}")
    print(f"example (image 0): {ours_text[0]!r}")
    print(f"ratio (ours / seed): {ours_rate / seed_rate:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
