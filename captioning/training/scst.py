"""Self-critical sequence training (train.scst): epochs after cross-entropy that optimise CIDEr-D.

Rennie et al. 2017, "Self-critical Sequence Training for Image Captioning"; Luo 2020, "A Better
Variant of Self-Critical Sequence Training" (arXiv 2003.09971); the reference implementation
is ruotianluo/ImageCaptioning.pytorch (captioning/modules/losses.py, utils/rewards.py).

Each step, for a batch of training images:

    sample   K captions per image through the decoder's Stepper (models/decoding.sample), all
             images and samples advancing together, from the model as it is now
    reward   each caption's CIDEr-D against its image's references, with document frequencies
             from the training split's references (evaluation/reward.py, computed once)
    baseline the mean reward of the image's other K-1 samples (mean), or the reward of its
             greedy caption (greedy)
    update   -(r - b) log p(w) over the sampled words, endseq included, nothing after it: the
             same Keras model, teacher-forced on the samples, with each token's cross-entropy
             weighted by its caption's advantage (PolicyGradientLoss), on any backend

Sampling sees the model as inference does (no dropout); the update runs it in training mode,
dropout included, as the cross-entropy epochs do, so log p is that of the sampling policy
under a dropout mask (the reference implementation samples in training mode as well).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from captioning.config.schema import ScstConfig
from captioning.data.batches import CaptionBatches
from captioning.data.vocabulary import Vocabulary
from captioning.evaluation.reward import CiderReward
from captioning.models.decoding import greedy, sample
from captioning.models.protocol import Stepper

log = logging.getLogger(__name__)

BUCKET = 4  # sampled batches are padded to a multiple of 4 steps, as CaptionBatches does


def teacher_inputs(sampled: np.ndarray, start_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, targets) to teacher-force the model on sampled captions: `startseq w1 ..`
    in, `w1 .. endseq` out, padded with 0 to a multiple of BUCKET steps."""
    rows, steps = sampled.shape
    width = -(-steps // BUCKET) * BUCKET
    targets = np.zeros((rows, width), "int32")
    targets[:, :steps] = sampled
    tokens = np.zeros_like(targets)
    tokens[:, 0] = start_id
    tokens[:, 1:] = targets[:, :-1]
    tokens[targets == 0] = 0  # after endseq nothing is fed (nor learned)
    return tokens, targets


def advantages(rewards: np.ndarray, count: int, greedy_rewards: np.ndarray | None = None
               ) -> np.ndarray:
    """r - b per sampled caption (images * count,): b is the image's greedy reward when given,
    else the mean reward of the image's other count - 1 samples."""
    per_image = rewards.reshape(-1, count)
    if greedy_rewards is not None:
        baseline = np.repeat(greedy_rewards, count).reshape(per_image.shape)
    else:
        baseline = (per_image.sum(axis=1, keepdims=True) - per_image) / (count - 1)
    return (per_image - baseline).ravel()


@dataclass
class StepTimes:
    """Seconds spent in each part of the SCST steps of an epoch."""

    sampling: float = 0.0
    reward: float = 0.0
    update: float = 0.0
    steps: int = 0
    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


class ScstStep:
    """One SCST step on a batch of training images, for a compiled model (compile_scst)."""

    def __init__(self, model: keras.Model, stepper: Stepper, vocab: Vocabulary,
                 reward: CiderReward, settings: ScstConfig):
        self.model, self.stepper, self.vocab, self.reward = model, stepper, vocab, reward
        self.settings = settings
        self.times = StepTimes()

    def __call__(self, features: np.ndarray, images: Sequence[str],
                 rng: np.random.Generator) -> float:
        """Sample, reward and update on `features` of `images`; returns the loss."""
        settings, vocab, count = self.settings, self.vocab, self.settings.samples
        began = time.perf_counter()
        sampled = sample(self.stepper, vocab, features, count, settings.max_length, rng)
        baseline_ids = (greedy(self.stepper, vocab, features, settings.max_length)
                        if settings.baseline == "greedy" else None)
        sampled_at = time.perf_counter()
        names = [name for name in images for _ in range(count)]
        rewards = self.reward.scores(names, [vocab.decode(row[row > 0]) for row in sampled])
        greedy_rewards = None
        if baseline_ids is not None:
            greedy_rewards = self.reward.scores(list(images),
                                                [vocab.decode(ids) for ids in baseline_ids])
        advantage = advantages(rewards, count, greedy_rewards)
        rewarded_at = time.perf_counter()
        tokens, targets = teacher_inputs(sampled, vocab.start_id)
        mask = targets != 0
        weights = (advantage[:, None] * mask / max(int(mask.sum()), 1)).astype("float32")
        repeated = np.repeat(features, count, axis=0)
        loss = self.model.train_on_batch({"image": repeated, "tokens": tokens}, targets,
                                         sample_weight=weights, return_dict=True)["loss"]
        done = time.perf_counter()
        times = self.times
        times.sampling += sampled_at - began
        times.reward += rewarded_at - sampled_at
        times.update += done - rewarded_at
        times.steps += 1
        times.rewards.append(float(rewards.mean()))
        times.losses.append(float(loss))
        return float(loss)


def validation_metrics(model: keras.Model, batches: CaptionBatches | None,
                       loss: keras.losses.Loss) -> dict[str, float]:
    """val_loss (by the cross-entropy epochs' own loss) and val_accuracy, so an SCST epoch
    reports what a cross-entropy epoch does."""
    if batches is None:
        return {}
    total_loss = total_tokens = hits = 0.0
    for index in range(len(batches)):
        inputs, targets = batches[index]
        logits = np.asarray(model.predict_on_batch(inputs), "float32")
        real = targets != 0
        tokens = float(real.sum())
        total_loss += float(loss(targets, logits)) * tokens
        hits += float(((logits.argmax(axis=-1) == targets) & real).sum())
        total_tokens += tokens
    return {"val_loss": total_loss / max(total_tokens, 1.0),
            "val_accuracy": hits / max(total_tokens, 1.0)}
