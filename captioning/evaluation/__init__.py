"""Judging captions: the reference scorers (scores.py), the SCST reward (reward.py), and the
figures of results every layer above draws (figures.py). Scoring a saved model on a split is
inference/evaluate.py."""
