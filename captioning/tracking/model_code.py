"""The code MLflow runs to load a logged captioner ("models from code"): it only names our
class, which the installed `captioning` package provides. See pyfunc.py."""

import mlflow

from captioning.tracking.pyfunc import CaptionerModel

mlflow.models.set_model(CaptionerModel())
