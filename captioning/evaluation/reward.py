"""CIDEr-D as a reward for self-critical sequence training: the number pycocoevalcap's Cider
gives each caption, but with document frequencies fixed by a corpus and computed once.

Self-critical training scores a batch of sampled captions (and the greedy baseline) at every
step. pycocoevalcap recomputes document frequencies from whichever images it is handed, and
cooks every reference again on each call, which is both slow and, for a batch of 32 images, a
different metric (n-grams are rare or common within the batch, not within the dataset). Here
the corpus (the training split's references) fixes the document frequencies and log(number of
images), and each reference's tf-idf vectors, norms and length are cooked once, in __init__;
`scores` only cooks the candidates. With the corpus being exactly the scored images, the
numbers are pycocoevalcap's per-image CIDEr-D scores (tests/unit/evaluation/test_reward.py).

The arithmetic follows pycocoevalcap/cider/cider_scorer.py to the letter, quirks included:
n-grams of 1..4 whitespace tokens; weight tf * (log(images) - log(max(1, df))); the length
a Gaussian penalty (sigma 6) compares is the count of *bigrams* (the scorer's `n == 1`
branch counts n-grams of index 1: words - 1, so between two non-empty captions the same
difference as in words, and an empty one scores 0 anyway); similarity clips the candidate's
weight at the reference's (sum of min(hyp, ref) * ref), divided by both norms only when both
are nonzero; the mean over n, summed over references, divided by their number, times 10.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from captioning.data.vocabulary import END, START
from captioning.evaluation.scores import strip_markers

N = 4  # n-grams of 1..N words
SIGMA = 6.0  # the length penalty's standard deviation, in bigrams
_MARKERS = frozenset((START, END))

Ngram = tuple[str, ...]
# One reference, cooked: a tf-idf vector per n (n-gram -> weight), their norms, its length.
_Cooked = tuple[tuple[dict[Ngram, float], ...], tuple[float, ...], int]


def _counts(words: Sequence[str]) -> list[dict[Ngram, int]]:
    """Term frequencies of the n-grams of `words`, one dict per n (index 0: unigrams)."""
    counts: list[dict[Ngram, int]] = []
    for k in range(1, N + 1):
        grams: dict[Ngram, int] = {}
        for i in range(len(words) - k + 1):
            gram = tuple(words[i:i + k])
            grams[gram] = grams.get(gram, 0) + 1
        counts.append(grams)
    return counts


class CiderReward:
    """CIDEr-D of captions against their image's references, with document frequencies from a
    fixed corpus (the training split's references), computed once."""

    def __init__(self, references: Mapping[str, Sequence[str]]) -> None:
        """`references`: image name -> its reference captions (plain text; startseq/endseq
        markers are ignored). Every image needs at least one reference."""
        if not references:
            raise ValueError("CiderReward needs a corpus of at least one image")
        counts: dict[str, list[list[dict[Ngram, int]]]] = {}
        document_frequency: dict[Ngram, int] = {}
        for image, captions in references.items():
            if not captions:
                raise ValueError(f"image {image!r} has no reference captions")
            cooked = [_counts(strip_markers(caption).split()) for caption in captions]
            counts[image] = cooked
            for gram in {gram for ref in cooked for grams in ref for gram in grams}:
                document_frequency[gram] = document_frequency.get(gram, 0) + 1
        self._ref_len = math.log(float(len(references)))
        # idf of every n-gram of the corpus; one it never saw gets the full log(images).
        self._idf = {gram: self._ref_len - math.log(max(1.0, df))
                     for gram, df in document_frequency.items()}
        self._references: dict[str, list[_Cooked]] = {
            image: [self._vectors(ref) for ref in cooked] for image, cooked in counts.items()}

    def __len__(self) -> int:
        """The number of images in the corpus."""
        return len(self._references)

    def __contains__(self, image: object) -> bool:
        return image in self._references

    def _vectors(self, counts: list[dict[Ngram, int]]) -> _Cooked:
        """pycocoevalcap's counts2vec: tf-idf weights per n, their norms, the bigram count."""
        idf, ref_len = self._idf, self._ref_len
        vectors = tuple({gram: tf * idf.get(gram, ref_len) for gram, tf in grams.items()}
                        for grams in counts)
        norms = tuple(math.sqrt(sum(w * w for w in vector.values())) for vector in vectors)
        return vectors, norms, sum(counts[1].values())

    def scores(self, images: Sequence[str], captions: Sequence[str]) -> np.ndarray:
        """One CIDEr-D per caption (float64): `captions[i]` against the references of
        `images[i]`, which must be in the corpus (several captions may name one image).
        Captions are whitespace-tokenised text; startseq/endseq markers are ignored."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        missing = [image for image in images if image not in self._references]
        if missing:
            raise KeyError(f"image {missing[0]!r} is not in the reward's corpus "
                           f"({len(set(missing))} unknown images)")
        out = np.empty(len(captions), dtype=np.float64)
        for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
            words = [word for word in caption.split() if word not in _MARKERS]
            out[index] = self._score(self._vectors(_counts(words)), self._references[image])
        return out

    @staticmethod
    def _score(candidate: _Cooked, references: list[_Cooked]) -> float:
        vectors, norms, length = candidate
        total = 0.0
        for ref_vectors, ref_norms, ref_length in references:
            delta = float(length - ref_length)
            penalty = math.exp(-(delta * delta) / (2 * SIGMA * SIGMA))
            for vector, norm, ref_vector, ref_norm in zip(vectors, norms, ref_vectors,
                                                          ref_norms, strict=True):
                value = 0.0
                for gram, weight in vector.items():
                    ref_weight = ref_vector.get(gram)
                    if ref_weight is not None:
                        value += min(weight, ref_weight) * ref_weight
                if norm != 0 and ref_norm != 0:
                    value /= norm * ref_norm
                total += value * penalty
        return total / N / len(references) * 10.0
