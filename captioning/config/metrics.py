"""The metrics every epoch reports, and which way each is better: defined once, here.

A leaf module (no imports of ours): the config validates `train.monitor` and `sweep.metric`
against RankingMetric, training keeps its best epoch by `mode_of`, a sweep ranks trials and
promotion picks one by the same rule, and tracking logs EPOCH_METRICS.
"""

from __future__ import annotations

from typing import Literal

# pycocoevalcap's corpus scores, in the order captioning.evaluation.scores returns them.
SCORE_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l")
# What one epoch of training reports (and every trial logs to MLflow), per step = epoch.
# In an SCST epoch (train.scst), `scst` is 1 (else 0), `loss` the policy-gradient loss and
# `reward` the sampled captions' mean CIDEr-D against the training references, and the
# epoch's seconds split into sampling, reward and update.
SCST_SECONDS = ("sampling_seconds", "reward_seconds", "update_seconds")
# What a model costs, beside what it scores: its weights, the seconds of the epoch (training
# and validation loss), and greedy decoding's milliseconds per caption on the validation
# images scored, one batch on the trial's own device (training/train.py).
COST_METRICS = ("param_count", "epoch_seconds", "decode_ms_per_caption")
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy",
                 *(f"val_{name}" for name in SCORE_NAMES), "learning_rate", "scst", "reward",
                 *SCST_SECONDS, *COST_METRICS)
# What a run keeps its best epoch by (train.monitor) and a sweep ranks trials by (sweep.metric).
RankingMetric = Literal["val_loss", "val_accuracy", "val_bleu4", "val_cider", "val_rouge_l"]
# What a multi-objective sweep may trade (sweep.objectives): a quality, or a cost.
ObjectiveMetric = Literal["val_loss", "val_accuracy", "val_bleu4", "val_cider", "val_rouge_l",
                          "param_count", "epoch_seconds", "decode_ms_per_caption"]
LOWER_IS_BETTER = ("loss", "val_loss", *COST_METRICS)

Mode = Literal["min", "max"]


def mode_of(metric: str) -> Mode:
    """Whether `metric` is best at its minimum (losses) or its maximum (everything else)."""
    return "min" if metric in LOWER_IS_BETTER else "max"
