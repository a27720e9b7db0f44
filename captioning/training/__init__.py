"""Training one captioner: the dataset, features and vocabulary made ready (prepare.py),
train_captioner (train.py) and what ends each of its epochs (epoch_end.py), the model
directory's files (model_files.py), early stopping (early_stopping.py), checkpoints with a
manifest (checkpoints.py), the model of a trial that fine-tunes the encoder (finetune.py),
self-critical training (scst.py), a PBT clone's new values (perturb.py), the Keras backend that
trains (backend.py), GPU memory (devices.py)."""
