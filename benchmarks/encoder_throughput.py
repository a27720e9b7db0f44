"""Feature extraction images/s: a KerasHub ViT against a keras.applications CNN of about its
size, both through captioning's own extraction path (`encode_images`: images decoded ahead on
a thread pool, scaled by the encoder's preprocessing, one `predict_on_batch` per batch).

  baseline  keras.applications ResNet50 without its classifier (23.6 M weights), at 224 px
  hub       a ViT-S/16 KerasHub backbone (12 layers, 384 wide, 6 heads; 21.7 M weights) saved
            as a local preset directory and read as `encoder.name: hub:<dir>`, at 224 px:
            its 14 x 14 x 384 patch-token grid

Random weights on both sides (speed does not depend on them; no download). The rows run
interleaved, --repeats times each; the best is reported. On TensorFlow, as extraction runs.

    .venv/bin/python benchmarks/encoder_throughput.py                    # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/encoder_throughput.py --images 256 --vit base   # ViT-B/16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"  # extraction's backend (features/child.py)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import machine_info, print_timing_notes  # noqa: E402

from captioning.config.encoder import EncoderConfig  # noqa: E402
from captioning.data.sample import draw_sample_dataset  # noqa: E402
from captioning.features.encoders import build_encoder  # noqa: E402
from captioning.features.extract import encode_images, map_shape  # noqa: E402

VITS = {"small": {"hidden_dim": 384, "num_heads": 6, "mlp_dim": 1536},
        "base": {"hidden_dim": 768, "num_heads": 12, "mlp_dim": 3072}}


def vit_preset(path: Path, size: str) -> Path:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    keras_hub.models.ViTBackbone(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                                 **VITS[size]).save_to_preset(str(path))
    keras_hub.layers.ViTImageConverter(image_size=(224, 224), scale=1 / 127.5,
                                       offset=-1).save_to_preset(str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128, help="images per timed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vit", choices=sorted(VITS), default="small")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a dataset folder with Images/ (default: drawn sample images)")
    args = parser.parse_args()
    print("\n".join(machine_info()))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or draw_sample_dataset(Path(tmp) / "data", images=args.images)
        images = sorted((Path(root) / "Images").glob("*.jpg"))[:args.images]
        preset = vit_preset(Path(tmp) / f"vit_{args.vit}_patch16_224", args.vit)
        rows = {"resnet50": EncoderConfig(name="resnet50", weights="none", image_size=224,
                                          batch_size=args.batch_size),
                f"hub vit-{args.vit}/16": EncoderConfig(name=f"hub:{preset}", weights="none",
                                                        batch_size=args.batch_size)}
        encoders = {label: build_encoder(config) for label, config in rows.items()}
        for label, config in rows.items():  # warm up: build, trace, decode once
            encode_images(encoders[label], config, images[:args.batch_size])
        print(f"{len(images)} images of {root}, batch {args.batch_size}, 224 px, random weights")
        load_before = os.getloadavg()
        times: list[list[float]] = [[] for _ in rows]
        for _ in range(args.repeats):
            for i, (label, config) in enumerate(rows.items()):
                start = time.perf_counter()
                features, kept, _ = encode_images(encoders[label], config, images, grid=True)
                times[i].append(time.perf_counter() - start)
                assert len(kept) == len(images)
        load_after = os.getloadavg()
        print(f"{'encoder':<18} {'weights':>10} {'grid':>14} {'images/s':>9}")
        rates = []
        for i, (label, _) in enumerate(rows.items()):
            encoder = encoders[label]
            rate = len(images) / min(times[i])
            rates.append(rate)
            grid = "x".join(str(d) for d in map_shape(encoder))
            print(f"{label:<18} {encoder.count_params() / 1e6:>9.1f}M {grid:>14} {rate:>9.1f}")
        print_timing_notes(times, "runs", load_before, load_after)
        print(f"ratio (hub vit-{args.vit}/16 / resnet50 images/s): {rates[1] / rates[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
