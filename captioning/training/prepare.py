"""From an experiment config to what training needs: captions, vocabulary, cached features."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from captioning.config.schema import ExperimentConfig
from captioning.data.dataset import Dataset, load_dataset
from captioning.data.sample import draw_sample_dataset
from captioning.data.vocabulary import Vocabulary
from captioning.errors import DatasetError
from captioning.features.cache import FeatureSet, load_or_extract

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    dataset: Dataset  # images the encoder could not read are already removed
    features: FeatureSet
    vocab: Vocabulary

    def summary(self) -> dict[str, object]:
        return {**self.dataset.summary(), "vocabulary": len(self.vocab),
                "feature_dim": self.features.dim}


def ensure_data(config: ExperimentConfig, say: Callable[[str], None] = log.info) -> Path:
    """data.root, first drawn as sample data when it is absent and data.sample_images > 0."""
    root = Path(config.data.root)
    if not root.exists() and config.data.sample_images > 0:
        say(f"data.root {root} does not exist: drawing {config.data.sample_images} sample "
            f"images into it (set data.sample_images: 0 to require real data)")
        draw_sample_dataset(root, images=config.data.sample_images, seed=config.data.split_seed)
    return root


def prepare(config: ExperimentConfig, *, progress: bool = True,
            say: Callable[[str], None] = log.info) -> Prepared:
    """Load the dataset, extract (or reuse) features for every image, build the vocabulary.

    The vocabulary sees training captions only, so no test caption can leak into it. Raises
    DatasetError when the dataset cannot be read, or when not one of its images can be.
    """
    root = ensure_data(config, say)
    dataset = load_dataset(root, config.data.format, split_seed=config.data.split_seed,
                           keep_one_letter_words=config.data.keep_one_letter_words)
    features = load_or_extract(config.encoder, dataset.image_dir, dataset.images(), progress,
                               grid=config.reads_grid or config.encoder.keep_grid)
    if features.skipped and not features.names:
        name, why = next(iter(features.skipped.items()))
        raise DatasetError(f"{dataset.image_dir}: none of the {len(features.skipped)} images "
                           f"could be read (e.g. {name}: {why})")
    if features.skipped:
        dataset = dataset.without(
            {name: f"image not used: {why}" for name, why in features.skipped.items()})
    train_captions = (c for name in dataset.splits["train"] for c in dataset.captions[name])
    vocab = Vocabulary.build(train_captions, min_count=config.data.min_word_count)
    return Prepared(dataset, features, vocab)
