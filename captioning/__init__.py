"""captioning: image-captioning models and the hyperparameter sweeps that find the best one."""

__version__ = "0.1.0"
