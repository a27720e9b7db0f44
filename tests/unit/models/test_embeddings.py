"""spaCy vectors become the embedding matrix, loaded through the same spacy.load call."""

from __future__ import annotations

import numpy as np
import pytest
import spacy

from captioning.data.vocabulary import Vocabulary
from captioning.models.embeddings import spacy_embedding_matrix


@pytest.fixture()
def vocab() -> Vocabulary:
    return Vocabulary.build(["startseq red circle and blue zebra endseq"] * 2, min_count=1)


def test_rows_come_from_the_spacy_vectors_and_coverage_is_reported(spacy_pipeline, vocab):
    result = spacy_embedding_matrix(str(spacy_pipeline), vocab)
    nlp = spacy.load(spacy_pipeline)
    assert result.matrix.shape == (len(vocab), 8)
    for word in ("red", "circle", "and", "blue"):
        np.testing.assert_array_equal(result.matrix[vocab.encode(word)[0]],
                                      nlp.vocab.get_vector(word))
    assert result.missing == ("zebra",)
    assert result.coverage == pytest.approx(4 / 5)
    assert not result.matrix[vocab.pad_id].any()


def test_words_without_a_vector_get_distinct_random_rows(spacy_pipeline):
    vocab = Vocabulary.build(["startseq zebra giraffe endseq"] * 2, min_count=1)
    matrix = spacy_embedding_matrix(str(spacy_pipeline), vocab, seed=3).matrix
    zebra, giraffe = vocab.encode("zebra giraffe")
    assert np.abs(matrix[zebra]).sum() > 0
    assert not np.allclose(matrix[zebra], matrix[giraffe])


def test_a_spacy_model_that_is_not_installed_is_a_clear_error(vocab):
    with pytest.raises(ValueError, match="en_core_web_nope.*spacy download"):
        spacy_embedding_matrix("en_core_web_nope", vocab)


def test_a_pipeline_without_vectors_is_a_clear_error(tmp_path, vocab):
    spacy.blank("en").to_disk(tmp_path / "novectors")
    with pytest.raises(ValueError, match="no word vectors"):
        spacy_embedding_matrix(str(tmp_path / "novectors"), vocab)
