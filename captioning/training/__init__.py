"""Training one captioner: train_captioner and its epoch callback (train.py), checkpoints with a
manifest (checkpoints.py), the Keras backend that trains (backend.py), GPU memory (devices.py)."""
