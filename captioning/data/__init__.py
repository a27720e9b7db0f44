"""Datasets on disk: the three Flickr layouts (layouts.py), cleaning and splits (dataset.py),
images (images.py), caption text and the vocabulary (vocabulary.py), synthetic sample data
(sample.py), teacher-forcing batches (batches.py), and all of it made ready (prepare.py)."""
