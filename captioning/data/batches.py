"""Training batches for teacher forcing: whole captions, bucketed by length.

Each caption is one sample: input tokens `startseq w1 .. wn` and targets `w1 .. wn endseq`,
right-padded with 0 only up to the longest caption of its batch (rounded up to `bucket`
tokens). The seed instead expanded every caption into one padded sample per next word.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from captioning.data.vocabulary import Vocabulary


def encode_captions(captions: Sequence[str], vocab: Vocabulary, max_length: int
                    ) -> list[np.ndarray]:
    """Token ids per caption, cut to `max_length` tokens with endseq kept as the last."""
    encoded = []
    for caption in captions:
        ids = vocab.encode(caption)
        if len(ids) > max_length:
            ids = ids[:max_length - 1] + [vocab.end_id]
        encoded.append(np.asarray(ids, "int32"))
    return encoded


class CaptionBatches(keras.utils.PyDataset):
    """Batches of ({"image": (batch, dim) or (batch, positions, channels), "tokens": (batch,
    time)}, targets (batch, time)).

    `rows[i]` is the feature row of caption `sequences[i]`. With shuffle, the order of captions
    within a length and the order of batches change every epoch (seeded).
    """

    def __init__(self, features: np.ndarray, rows: np.ndarray, sequences: list[np.ndarray],
                 batch_size: int, *, shuffle: bool, seed: int = 0, bucket: int = 4):
        super().__init__()
        if not sequences:
            raise ValueError("no captions to batch")
        # Pooled vectors in memory, or memory-mapped feature maps: rows are read per batch.
        self.features = features
        self.rows = np.asarray(rows)
        self.sequences = sequences
        self.lengths = np.array([len(s) - 1 for s in sequences])  # steps per caption
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.rng = np.random.default_rng(seed)
        self.batches: list[np.ndarray] = []
        self._plan()

    def _plan(self) -> None:
        order = np.arange(len(self.sequences))
        if self.shuffle:
            order = self.rng.permutation(order)
        # A stable sort by length keeps the shuffled order among captions of equal length.
        order = order[np.argsort(self.lengths[order], kind="stable")]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in self.rng.permutation(len(batches))]
        else:
            batches = batches[::-1]  # longest first: a shape problem shows at once
        # Keras' TensorFlow backend fixes each dimension from the first two batches it sees;
        # giving them different lengths makes the time dimension variable.
        widths = [self._width(b) for b in batches]
        other = next((i for i in range(1, len(batches)) if widths[i] != widths[0]), None)
        if other is not None and other != 1:
            batches[1], batches[other] = batches[other], batches[1]
        self.batches = batches

    def _width(self, batch: np.ndarray) -> int:
        longest = int(self.lengths[batch].max())
        return -(-longest // self.bucket) * self.bucket

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        batch = self.batches[index]
        width = self._width(batch)
        tokens = np.zeros((len(batch), width), "int32")
        targets = np.zeros((len(batch), width), "int32")
        for i, caption in enumerate(batch):
            ids = self.sequences[caption]
            tokens[i, :len(ids) - 1] = ids[:-1]
            targets[i, :len(ids) - 1] = ids[1:]
        image = np.asarray(self.features[self.rows[batch]], dtype="float32")
        return {"image": image, "tokens": tokens}, targets

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._plan()

    def tf_dataset(self) -> Any:
        """The same batches, in the same order, as a tf.data pipeline (TensorFlow backend).

        Only each epoch's plan comes from Python (one small index array per batch); gathering
        the features and tokens and cutting them to the batch's width run in the graph, ahead
        of the train step (prefetch), so the step does not wait on Python. Feature maps
        memory-mapped from the cache are read per batch on tf.data's threads.
        """
        import tensorflow as tf

        width = -(-int(self.lengths.max()) // self.bucket) * self.bucket
        inputs = np.zeros((len(self.sequences), width), "int32")
        targets = np.zeros_like(inputs)
        for i, ids in enumerate(self.sequences):
            inputs[i, :len(ids) - 1] = ids[:-1]
            targets[i, :len(ids) - 1] = ids[1:]
        inputs_t, targets_t = tf.constant(inputs), tf.constant(targets)
        lengths_t, rows_t = tf.constant(self.lengths, tf.int32), tf.constant(self.rows)
        bucket = self.bucket
        if isinstance(self.features, np.ndarray) and not isinstance(self.features, np.memmap):
            features_t = tf.constant(np.asarray(self.features, "float32"))

            def images(rows: Any) -> Any:
                return tf.gather(features_t, rows)
        else:  # feature maps, read from the memory-mapped file
            shape = self.features.shape[1:]

            def read(rows: np.ndarray) -> np.ndarray:
                return np.asarray(self.features[rows], "float32")

            def images(rows: Any) -> Any:
                out = tf.numpy_function(read, [rows], tf.float32, stateful=False)
                return tf.ensure_shape(out, (None, *shape))

        def epoch() -> Any:
            yield from (batch.astype("int64") for batch in self.batches)
            self.on_epoch_end()  # the next epoch's order, as Keras would ask of a PyDataset

        def gather(batch: Any) -> Any:
            steps = tf.reduce_max(tf.gather(lengths_t, batch))
            cut = (steps + bucket - 1) // bucket * bucket  # the bucket's width, as __getitem__
            x = tf.gather(inputs_t, batch)[:, :cut]
            y = tf.gather(targets_t, batch)[:, :cut]
            return {"image": images(tf.gather(rows_t, batch)), "tokens": x}, y

        plan = tf.data.Dataset.from_generator(
            epoch, output_signature=tf.TensorSpec((None,), tf.int64))
        # The count is known (every epoch has len(self) batches): Keras then shows steps of a
        # known total and does not warn that the input "ran out of data" at each epoch's end.
        plan = plan.apply(tf.data.experimental.assert_cardinality(len(self)))
        return plan.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    @property
    def tokens(self) -> int:
        """Real (unpadded) target tokens per epoch."""
        return int(self.lengths.sum())
