"""Kept for MLflow models logged before the package was grouped into folders (0.1.0).

MLflow stores a copy of the model's code with each logged model; the copies written then say
`from captioning.mlflow_model import CaptionerModel`, so this name must go on importing.
The pyfunc itself is captioning/tracking/pyfunc.py. tests/unit/tracking/test_legacy_models.py
loads and serves such a model.
"""

from captioning.tracking.pyfunc import CaptionerModel

__all__ = ["CaptionerModel"]
