"""Judging captions: metric names and directions (metrics.py), the reference scorers
(scores.py), scoring a model on a split (evaluate.py), figures (figures.py)."""
