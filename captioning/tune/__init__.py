"""Sweeps with Ray Tune: the trainable (trainable.py), the launcher (launcher.py), search spaces
(search_space.py), the Optuna sampler and Ray scheduler (strategy.py), the MLflow callback
(mlflow_callback.py), resume safety (resume.py), the checks before Ray starts (preflight.py)
and a multi-objective sweep's Pareto front (pareto.py)."""
