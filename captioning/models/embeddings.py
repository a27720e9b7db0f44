"""Word embeddings from spaCy vectors (the seed used en_core_web_md) as the embedding matrix."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from captioning.data.vocabulary import Vocabulary
from captioning.errors import ConfigError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingMatrix:
    matrix: np.ndarray  # (vocabulary, width); row 0 (padding) is zeros
    coverage: float  # share of the vocabulary's words (reserved tokens excluded) with a vector
    missing: tuple[str, ...]


def load_vectors(model: str) -> Any:
    """`spacy.load(model)` (a package name or a pipeline directory) that has word vectors.

    Raises ConfigError naming the embedding, so a bad model stops a run before any work.
    """
    import spacy

    try:
        nlp = spacy.load(model)
    except OSError as error:
        reason = first_line(error)
        raise ConfigError(
            f"embedding: spaCy model {model!r} cannot be loaded; install it with "
            f"`python -m spacy download {model}` or give a pipeline directory ({reason})"
        ) from None
    vectors = nlp.vocab.vectors
    if vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ConfigError(f"embedding: spaCy model {model!r} has no word vectors")
    return nlp


def spacy_embedding_matrix(model: str | Any, vocab: Vocabulary, seed: int = 0
                           ) -> EmbeddingMatrix:
    """Rows from a spaCy pipeline's vectors (`model`: a name, a directory, or a loaded nlp).

    Words without a vector get random rows of the vectors' own scale, so they start neither
    at zero nor at a size the LSTM has never seen.
    """
    nlp = load_vectors(model) if isinstance(model, str) else model
    vectors = nlp.vocab.vectors
    width = int(vectors.shape[1])
    table = np.asarray(vectors.data, dtype="float32")
    scale = float(table.std()) or 1.0
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, scale, size=(len(vocab), width)).astype("float32")
    matrix[vocab.pad_id] = 0.0
    reserved = {vocab.pad_id, vocab.unk_id, vocab.start_id, vocab.end_id}
    words = [(i, w) for i, w in enumerate(vocab.tokens) if i not in reserved]
    missing = []
    for row, word in words:
        if nlp.vocab.has_vector(word):
            matrix[row] = nlp.vocab.get_vector(word)
        else:
            missing.append(word)
    coverage = 1.0 - len(missing) / max(len(words), 1)
    name = model if isinstance(model, str) else f"{nlp.meta.get('lang', '?')}_" \
        f"{nlp.meta.get('name', '?')} {nlp.meta.get('version', '')}".strip()
    log.info("spaCy %s covers %.1f%% of %d words (%d without a vector)", name,
             100 * coverage, len(words), len(missing))
    return EmbeddingMatrix(matrix, coverage, tuple(missing))
