"""Greedy and beam-search decoding, batched: one model call per word for a whole batch.

The seed called `predict` once per word per image; here every step advances all images (and
all beams) together through the decoder's `Stepper` (models/protocol.py), carrying its state
(an LSTM's h and c, a Transformer's keys and values) instead of re-reading the prefix.
"""

from __future__ import annotations

import numpy as np

from captioning.data.vocabulary import Vocabulary
from captioning.models.protocol import Arrays, Stepper


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _rows(arrays: Arrays, index: np.ndarray) -> Arrays:
    return tuple(array[index] for array in arrays)


def greedy(decoder: Stepper, vocab: Vocabulary, features: np.ndarray, max_length: int,
           attention: list[np.ndarray] | None = None) -> list[list[int]]:
    """Most likely word at each step, for every row of `features` (images, ...) at once.

    Returns token ids per image, without startseq, ending before endseq; at least one word
    (endseq is never the first: an empty caption is no caption) and at most max_length - 2,
    since max_length counts startseq and endseq as training does.
    With `attention` (a list), a decoder that attends appends to it, per image, where it
    looked for each word: (words, positions).
    """
    count = len(features)
    context, state = decoder.start(features)
    tokens = np.full(count, vocab.start_id, "int32")
    finished = np.zeros(count, bool)
    out: list[list[int]] = [[] for _ in range(count)]
    looked: list[list[np.ndarray]] = [[] for _ in range(count)]
    for step in range(max_length - 2):  # max_length counts startseq and endseq
        logits, state = decoder.step(context, tokens, state)
        logits[:, [vocab.pad_id, vocab.start_id]] = -np.inf  # never words of a caption
        if step == 0:
            logits[:, vocab.end_id] = -np.inf  # at least one word: never an empty caption
        tokens = logits.argmax(axis=-1).astype("int32")
        for row in np.flatnonzero(~finished):
            if tokens[row] == vocab.end_id:
                finished[row] = True
            else:
                out[row].append(int(tokens[row]))
                if decoder.attention is not None:
                    looked[row].append(decoder.attention[row])
        if finished.all():
            break
    if attention is not None and decoder.attention is not None:
        positions = decoder.attention.shape[1]
        attention.extend(np.array(maps) if maps else np.zeros((0, positions)) for maps in looked)
    return out


def beam_search(decoder: Stepper, vocab: Vocabulary, features: np.ndarray, width: int,
                max_length: int, attention: list[np.ndarray] | None = None
                ) -> list[list[int]]:
    """The highest-scoring (summed log-probability) caption among `width` beams per image, of
    at least one word (as `greedy`, endseq cannot end a beam at its first step).

    Scores are not normalised by length: the most likely caption is what the exhaustive test
    checks and what every sweep's scores were decoded with, and a length penalty would not
    have stopped endseq-first anyway (the empty caption has no words to normalise by).
    All images' beams advance together: one step call on (images * width) rows. A beam that
    emits endseq is finished and keeps its score; if no beam ever ends, the best unfinished
    beam at max_length is returned. `attention` as for `greedy`, for the winning beams.
    """
    if width == 1:
        return greedy(decoder, vocab, features, max_length, attention)
    count = len(features)
    rows = count * width
    context, state = decoder.start(features)
    beams = np.repeat(np.arange(count), width)  # (images*width,): each image's rows
    context, state = _rows(context, beams), _rows(state, beams)
    tokens = np.full(rows, vocab.start_id, "int32")
    # Only the first beam of each image is live at the start, so the first step's top-k are
    # k different words rather than k copies of one.
    scores = np.tile(np.r_[0.0, np.full(width - 1, -np.inf)], count)
    finished = np.zeros(rows, bool)
    sequences = np.zeros((rows, 0), "int32")
    looked: np.ndarray | None = None  # (rows, steps, positions) where each beam looked
    for step in range(max_length - 2):  # max_length counts startseq and endseq
        logits, state = decoder.step(context, tokens, state)
        if decoder.attention is not None:
            alpha = decoder.attention[:, None]  # (rows, 1, positions), before this step's words
            looked = alpha if looked is None else np.concatenate([looked, alpha], axis=1)
        logits = logits.astype("float64")
        # Never words of a caption: out before normalising, so the scores are log-probabilities
        # over the words a caption can have (and captions of different lengths compare).
        logits[:, [vocab.pad_id, vocab.start_id]] = -np.inf
        logp = _log_softmax(logits)
        if step == 0:
            # At least one word: an undertrained model's likeliest caption is often endseq
            # alone. Out after normalising, so the scores stay the captions' log-probabilities.
            logp[:, vocab.end_id] = -np.inf
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
        # A beam's parent is a beam of the same image, so the context rows stay as they are.
        state = _rows(state, parent)
        if looked is not None:
            looked = looked[parent]
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
        if attention is not None and looked is not None:
            attention.append(looked[row, :len(words)])
    return results


def sample(decoder: Stepper, vocab: Vocabulary, features: np.ndarray, count: int,
           max_length: int, rng: np.random.Generator) -> np.ndarray:
    """`count` captions per row of `features`, each word drawn from the model's distribution
    (multinomial), all images and samples advancing together as beams do.

    Returns (images * count, steps) token ids, row i * count + j the j-th caption of image i:
    the words and then endseq (absent if the caption ran to max_length - 2 words), padded
    with 0 after it.
    """
    rows = np.repeat(np.arange(len(features)), count)
    context, state = decoder.start(features)
    context, state = _rows(context, rows), _rows(state, rows)
    tokens = np.full(len(rows), vocab.start_id, "int32")
    finished = np.zeros(len(rows), bool)
    steps: list[np.ndarray] = []
    for _ in range(max_length - 2):  # max_length counts startseq and endseq
        logits, state = decoder.step(context, tokens, state)
        logits = logits.astype("float64")
        logits[:, [vocab.pad_id, vocab.start_id]] = -np.inf  # never words of a caption
        # The Gumbel-max trick: the argmax of logits plus Gumbel noise is a draw from their
        # softmax, for every row at once.
        tokens = (logits - np.log(-np.log(rng.uniform(1e-12, 1.0, logits.shape)))
                  ).argmax(axis=-1).astype("int32")
        steps.append(np.where(finished, vocab.pad_id, tokens))
        finished |= tokens == vocab.end_id
        if finished.all():
            break
    return np.stack(steps, axis=1).astype("int32")


def generate(decoder: Stepper, vocab: Vocabulary, features: np.ndarray, *,
             beam_width: int = 1, max_length: int = 40, batch_size: int = 256,
             attention: list[np.ndarray] | None = None) -> list[str]:
    """Caption text (no startseq/endseq) for every row of `features`, in chunks of images;
    `attention` as for `greedy`, one (words, positions) array per image."""
    captions: list[str] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        ids = beam_search(decoder, vocab, chunk, beam_width, max_length, attention)
        captions.extend(vocab.decode(seq) for seq in ids)
    return captions
