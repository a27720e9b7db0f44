"""Sweeps with Ray Tune: the trainable (trainable.py), the launcher (launcher.py), search spaces
(search_space.py), the MLflow callback (mlflow_callback.py), resume safety (resume.py) and
the checks before Ray starts (preflight.py)."""
