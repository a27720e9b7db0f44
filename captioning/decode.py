"""Greedy and beam-search decoding, batched: one model call per word for a whole batch.

The seed called `predict` once per word per image; here every step advances all images (and
all beams) together through `StepDecoder`, carrying the LSTM state instead of re-reading the
prefix.
"""

from __future__ import annotations

import numpy as np

from captioning.model import StepDecoder
from captioning.text import Vocabulary


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy(decoder: StepDecoder, vocab: Vocabulary, features: np.ndarray, max_length: int
           ) -> list[list[int]]:
    """Most likely word at each step, for every row of `features` (images, dim) at once.

    Returns token ids per image, without startseq, ending before endseq; at most
    max_length - 2 words, since max_length counts startseq and endseq as training does.
    """
    count = len(features)
    context = decoder.context(features)  # (images, units)
    h = np.zeros((count, decoder.units), "float32")
    c = np.zeros_like(h)
    tokens = np.full(count, vocab.start_id, "int32")
    finished = np.zeros(count, bool)
    out: list[list[int]] = [[] for _ in range(count)]
    for _ in range(max_length - 2):  # max_length counts startseq and endseq
        logits, h, c = decoder.step(context, tokens, h, c)
        logits[:, [vocab.pad_id, vocab.start_id]] = -np.inf  # never words of a caption
        tokens = logits.argmax(axis=-1).astype("int32")
        for row in np.flatnonzero(~finished):
            if tokens[row] == vocab.end_id:
                finished[row] = True
            else:
                out[row].append(int(tokens[row]))
        if finished.all():
            break
    return out


def beam_search(decoder: StepDecoder, vocab: Vocabulary, features: np.ndarray, width: int,
                max_length: int) -> list[list[int]]:
    """The highest-scoring (summed log-probability) caption among `width` beams per image.

    All images' beams advance together: one step call on (images * width) rows. A beam that
    emits endseq is finished and keeps its score; if no beam ever ends, the best unfinished
    beam at max_length is returned.
    """
    if width == 1:
        return greedy(decoder, vocab, features, max_length)
    count = len(features)
    rows = count * width
    context = np.repeat(decoder.context(features), width, axis=0)  # (images*width, units)
    h = np.zeros((rows, decoder.units), "float32")
    c = np.zeros_like(h)
    tokens = np.full(rows, vocab.start_id, "int32")
    # Only the first beam of each image is live at the start, so the first step's top-k are
    # k different words rather than k copies of one.
    scores = np.tile(np.r_[0.0, np.full(width - 1, -np.inf)], count)
    finished = np.zeros(rows, bool)
    sequences = np.zeros((rows, 0), "int32")
    for _ in range(max_length - 2):  # max_length counts startseq and endseq
        logits, h, c = decoder.step(context, tokens, h, c)
        logp = _log_softmax(logits.astype("float64"))
        logp[:, [vocab.pad_id, vocab.start_id]] = -np.inf
        # A finished beam can only extend with padding, at no cost.
        logp[finished] = -np.inf
        logp[finished, vocab.pad_id] = 0.0
        vocab_size = logp.shape[1]
        candidates = (scores[:, None] + logp).reshape(count, width * vocab_size)
        # Only the top `width` of width*V candidates matter: partition, then order those few.
        top = np.argpartition(-candidates, width - 1, axis=1)[:, :width]
        order = np.argsort(-np.take_along_axis(candidates, top, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(top, order, axis=1)  # (images, width)
        parent = (np.arange(count)[:, None] * width + best // vocab_size).ravel()
        tokens = (best % vocab_size).ravel().astype("int32")
        scores = np.take_along_axis(candidates, best, axis=1).ravel()
        h, c, context = h[parent], c[parent], context[parent]
        sequences = np.concatenate([sequences[parent], tokens[:, None]], axis=1)
        finished = finished[parent] | (tokens == vocab.end_id)
        if finished.all():
            break
    winners = scores.reshape(count, width).argmax(axis=1) + np.arange(count) * width
    results = []
    for row in winners:
        words = [int(t) for t in sequences[row] if t != vocab.pad_id]
        if vocab.end_id in words:
            words = words[:words.index(vocab.end_id)]
        results.append(words)
    return results


def generate(decoder: StepDecoder, vocab: Vocabulary, features: np.ndarray, *,
             beam_width: int = 1, max_length: int = 40, batch_size: int = 256) -> list[str]:
    """Caption text (no startseq/endseq) for every row of `features`, in chunks of images."""
    captions: list[str] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        ids = beam_search(decoder, vocab, chunk, beam_width, max_length)
        captions.extend(vocab.decode(seq) for seq in ids)
    return captions
