"""Datasets on disk: the three Flickr layouts (layouts.py), cleaning and splits (dataset.py),
images (images.py), caption text and the vocabulary (vocabulary.py), synthetic sample data
(sample.py), teacher-forcing batches (batches.py). Making all of it ready for a run, features
included, is training/prepare.py."""
