"""How sharply an attention model looks: entropy of its attention maps on real photos.

For each model directory (an attention decoder's, e.g. from benchmarks/quality.py), greedy
decoding of the first --images photos of a split list, every generated word's attention map
over the feature-map positions: mean entropy (a uniform map's is log(positions)), mean
largest weight (uniform: 1/positions), and the mean L1 change of the map from word to word.

    .venv/bin/python benchmarks/attention_entropy.py --data-root ../shared/data/flickr8k-dev \\
        --split Flickr_8k.testImages.txt runs/attention-model [more model dirs]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from captioning.features.extract import encode_images  # noqa: E402
from captioning.inference.captioner import Captioner  # noqa: E402
from captioning.models.decoding import greedy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="attention model directories")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--split", default="Flickr_8k.testImages.txt",
                        help="a file of image names under --data-root")
    parser.add_argument("--images-dir", default="Images")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    names = [line.strip() for line in (args.data_root / args.split).read_text().splitlines()
             if line.strip()][:args.images]
    paths = [args.data_root / args.images_dir / name for name in names]
    for model_dir in args.models:
        captioner = Captioner.load(model_dir)
        if not captioner.attends:
            parser.error(f"{model_dir}: its decoder ({captioner.config.model.decoder}) does "
                         "not attend")
        features, _, errors = encode_images(captioner.encoder, captioner.config.encoder, paths,
                                            grid=True)
        maps: list[np.ndarray] = []
        greedy(captioner.decoder, captioner.vocab, features.astype("float32"),
               captioner.config.decode.max_length, attention=maps)
        words = np.concatenate([m for m in maps if len(m)])
        positions = words.shape[1]
        entropy = -(words * np.log(np.maximum(words, 1e-12))).sum(axis=1)
        change = np.mean([np.abs(np.diff(m, axis=0)).sum(axis=1).mean()
                          for m in maps if len(m) > 1])
        print(f"{model_dir}: {len(features)} images ({len(errors)} unreadable), "
              f"{len(words)} words; entropy {entropy.mean():.3f} (uniform over {positions}: "
              f"{np.log(positions):.3f}); largest weight {words.max(axis=1).mean():.3f} "
              f"(uniform {1 / positions:.3f}); change word to word (L1) {change:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
