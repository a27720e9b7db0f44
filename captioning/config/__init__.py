"""The typed experiment config (schema.py), how files and --set become one (loading.py), the
base of every section (section.py), and the built-in experiments and search spaces
(shipped.py; the files themselves are the repository's experiments/ and search_spaces/)."""
