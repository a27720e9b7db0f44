"""A trained model directory at work: captioning images (captioner.py), what `caption` and the
served MLflow model run; scoring it on a split of its dataset (evaluate.py, `evaluate`);
attention figures of captioned files (attention.py)."""
