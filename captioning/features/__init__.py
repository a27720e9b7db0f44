"""Image features: the encoders (encoders.py: keras.applications or a model of one's own),
KerasHub backbones (hub.py), cutting one for fine-tuning or an earlier map (cut.py), running
them over images (extract.py), the cache that extracts once (cache.py), and the TensorFlow child
process a JAX-trained run extracts in (child.py)."""
