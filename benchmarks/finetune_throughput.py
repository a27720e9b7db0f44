"""Training throughput of a fine-tuned encoder tail against the frozen encoder, per cut.

Each row trains the trainer's own model (training/finetune.py for a cut, the usual decoder
for frozen) on cut maps of the shapes MobileNet v1 alpha 0.25 gives at 224 px, random values
and random weights (speed does not depend on them): frozen reads the final 7x7x256 map (or
its pooled vector, merge), `conv_dw_13` trains the last block from 7x7x256, `conv_pad_12` the
last two from the 14x14x128 map, and `grid 14x14` is the frozen map of conv_pw_11_relu read
by a grid decoder. Every row trains on the same --steps batches of 32 captions (vocabulary
2847, as flickr8k-dev's), warmed up first, the timed epochs interleaved, best of --repeats;
seconds are scaled to a 12,000-caption epoch (flickr8k-dev's training split) and given as a
ratio to the frozen row of the same decoder.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/finetune_throughput.py  # ~5 min, 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import machine_info  # noqa: E402

from captioning.config.schema import parse_config  # noqa: E402
from captioning.data.batches import CaptionBatches  # noqa: E402
from captioning.features.cut import build_head  # noqa: E402
from captioning.models.build import build_model, compile_model  # noqa: E402
from captioning.training.finetune import build_tuned, tail_scale  # noqa: E402

# row -> encoder keys (besides MobileNet alpha 0.25 at 224 px, random weights)
ROWS = {"frozen": {}, "last block (conv_dw_13)": {"fine_tune": {"from_layer": "conv_dw_13"}},
        "last two blocks (conv_pad_12)": {"fine_tune": {"from_layer": "conv_pad_12"}},
        "grid 14x14 (frozen)": {"grid_layer": "conv_pw_11_relu"}}
EPOCH_CAPTIONS = 12_000


def config_of(decoder: str, encoder: dict) -> object:
    return parse_config({
        "encoder": {"name": "mobilenet", "alpha": 0.25, "weights": "none", **encoder},
        "model": {"decoder": decoder, "lstm_units": 256, "dropout": 0.5},
        "train": {"learning_rate": 0.0012, "batch_size": 32}})


def model_of(config, images: int, vocab: int, rng: np.random.Generator
             ) -> tuple[keras.Model, np.ndarray]:
    """The model a trial of `config` trains, and random inputs of the shape it reads."""
    shape = build_head(config.encoder).output_shape[1:]  # the cached map
    maps = rng.uniform(0, 6, (images, shape[0] * shape[1], shape[2])).astype("float32")
    if config.encoder.fine_tune is not None:
        model = build_tuned(config, maps, np.arange(images), vocab, None, 40)
        return compile_model(model, config.train, tail_scale=tail_scale(config)), maps
    grid = config.model.grid
    inputs = maps if grid else maps.mean(axis=1)
    flat = inputs.reshape(-1, inputs.shape[-1])
    model = build_model(config.model, vocab, flat.mean(0), flat.var(0), None,
                        positions=maps.shape[1] if grid else None, max_length=40)
    return compile_model(model, config.train), inputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoders", nargs="+", default=["merge", "attention"])
    parser.add_argument("--steps", type=int, default=60, help="timed batches per epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2847)
    args = parser.parse_args()
    print("\n".join(machine_info()))
    print(f"backend {keras.backend.backend()}; {args.steps} batches of 32 captions per timed "
          f"epoch, best of {args.repeats} interleaved; s / epoch scaled to {EPOCH_CAPTIONS:,} "
          "captions")
    rng = np.random.default_rng(0)
    images = args.steps * 32 // 5 + 1
    tokens = rng.integers(1, args.vocab, (images * 5, 16))
    rows = np.repeat(np.arange(images), 5)
    runs = []
    for decoder in args.decoders:
        for name, encoder in ROWS.items():
            if decoder == "merge" and "grid_layer" in encoder:
                continue  # the merge decoder reads the pooled vector: no grid to refine
            keras.utils.set_random_seed(0)
            model, inputs = model_of(config_of(decoder, encoder), images, args.vocab, rng)
            batches = CaptionBatches(inputs, rows, list(tokens), 32, shuffle=True, seed=0)
            data = [batches[i] for i in range(min(args.steps, len(batches)))]
            started = time.perf_counter()
            for x, y in data[:3]:  # traced for every bucket width it will see
                model.train_on_batch(x, y)
            for x, y in data:
                model.train_on_batch(x, y)
            runs.append({"decoder": decoder, "row": name, "model": model, "data": data,
                         "warm": time.perf_counter() - started, "times": [],
                         "params": model.count_params()})
    for _ in range(args.repeats):
        for run in runs:
            started = time.perf_counter()
            for x, y in run["data"]:
                run["model"].train_on_batch(x, y)
            run["times"].append(time.perf_counter() - started)
    header = (f"{'decoder':<10} {'row':<30} {'params':>9} {'captions/s':>11} "
              f"{'s / epoch':>10} {'ratio':>6} {'warm-up s':>10}")
    print(header + "\n" + "-" * len(header))
    frozen = {}
    for run in runs:
        captions = sum(len(y) for _, y in run["data"])
        rate = captions / min(run["times"])
        frozen.setdefault(run["decoder"], rate)
        print(f"{run['decoder']:<10} {run['row']:<30} {run['params']:>9,} {rate:>11.1f} "
              f"{EPOCH_CAPTIONS / rate:>10.1f} {frozen[run['decoder']] / rate:>5.2f}x "
              f"{run['warm']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
