"""Image features: the encoders (encoders.py: keras.applications or a model of one's own),
running them over images (extract.py), the cache that extracts once (cache.py), and the
TensorFlow child process a JAX-trained run extracts in (child.py)."""
