"""captioning: image-captioning models and the hyperparameter sweeps that find the best one.

README.md ("How the code is laid out") maps the folders; `captioning --help` lists the commands.
"""

__version__ = "0.1.0"
