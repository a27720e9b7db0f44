"""MLflow: the client seam (client.py), a sweep's runs (runs.py), the captioner as a pyfunc model
(pyfunc.py, loaded through model_code.py), the Model Registry: promote and fetch
(model_registry.py)."""
