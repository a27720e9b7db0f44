"""Scores come from pycocoevalcap and agree with an independent BLEU implementation."""

from __future__ import annotations

import pytest
from nltk.translate.bleu_score import corpus_bleu

from captioning.evaluation.scores import caption_scores

REFERENCES = {
    "a.jpg": ["startseq two dogs are playing in the snow endseq",
              "startseq two brown dogs chase each other in the snow endseq",
              "startseq dogs play in the snow endseq"],
    "b.jpg": ["startseq man does trick on his bike in the air endseq",
              "startseq bike rider does trick in the air endseq"],
    "c.jpg": ["startseq dog runs through the grass endseq",
              "startseq the brown dog is running outside on the grass endseq"],
}
PREDICTIONS = {"a.jpg": "two dogs are running in the snow",
               "b.jpg": "man does trick in the air on bike",
               "c.jpg": "brown dog is running on the grass"}


def test_bleu_matches_nltk_corpus_bleu_on_the_same_tokens():
    ours = caption_scores(REFERENCES, PREDICTIONS)
    keys = sorted(PREDICTIONS)
    refs = [[r.split()[1:-1] for r in REFERENCES[k]] for k in keys]
    hyps = [PREDICTIONS[k].split() for k in keys]
    for n in range(1, 5):
        weights = tuple([1.0 / n] * n)
        assert ours[f"bleu{n}"] == pytest.approx(corpus_bleu(refs, hyps, weights=weights),
                                                 rel=1e-6)


def test_a_perfect_caption_scores_top_marks_and_a_wrong_one_scores_low():
    perfect = caption_scores(REFERENCES, {k: v[0] for k, v in REFERENCES.items()})
    wrong = caption_scores(REFERENCES, {k: "purple elephant sings opera" for k in REFERENCES})
    assert perfect["bleu4"] == pytest.approx(1.0)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["cider"] > 1.0
    assert wrong["bleu1"] < 0.01 and wrong["cider"] < 0.01 and wrong["rouge_l"] == 0.0


def test_scores_use_every_reference_of_an_image():
    one_ref = {k: v[:1] for k, v in REFERENCES.items()}
    assert (caption_scores(REFERENCES, PREDICTIONS)["bleu4"]
            > caption_scores(one_ref, PREDICTIONS)["bleu4"])


def test_scoring_without_any_matching_image_is_an_error():
    with pytest.raises(ValueError, match="no prediction"):
        caption_scores(REFERENCES, {"zzz.jpg": "dog"})
