"""Caption decoders behind one protocol (protocol.py), one file each (merge.py, attention.py,
transformer.py; their Keras-free settings classes live in config/), named in registry.py;
building, compiling, loading and stepping any of them (build.py), also behind a fine-tuned
encoder tail (tuned.py); greedy and beam decoding (decoding.py); word vectors (embeddings.py)."""
