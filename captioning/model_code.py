"""The code MLflow runs to load a logged captioner ("models from code"): it only names our
class, which the installed `captioning` package provides. See mlflow_model.py."""

import mlflow

from captioning.mlflow_model import CaptionerModel

mlflow.models.set_model(CaptionerModel())
