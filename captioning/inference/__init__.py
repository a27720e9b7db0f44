"""Captioning images with a trained model directory (captioner.py): what `caption`, `evaluate`
and the served MLflow model run; attention figures of captioned files (attention.py)."""
