"""The typed experiment config (schema.py) and every settings section it composes: the
encoder's (encoder.py), each decoder's (attention.py, transformer.py), the sweep's (sweep.py);
metric names and directions (metrics.py), bounds (limits.py), the base of every section
(section.py); how files and --set become one config (loading.py), and the built-in experiments
and search spaces (shipped.py; the files are the repository's experiments/ and search_spaces/).
The lowest folder but the leaf modules: it imports no Keras, so a config loads in milliseconds."""
