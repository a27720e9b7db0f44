"""CiderReward gives each caption the CIDEr-D pycocoevalcap would, with document frequencies
from its own corpus rather than from the captions scored."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captioning.evaluation.reward import CiderReward
from captioning.evaluation.scores import strip_markers

WORDS = ["a", "dog", "dogs", "the", "in", "snow", "man", "bike", "red", "runs", "grass", "two"]

# Written out: shared and rare n-grams, repeated words, a one-word and an empty reference.
FIXED = {
    "dogs.jpg": ["two dogs are playing in the snow", "two brown dogs chase each other in the snow",
                 "dogs play in the snow", "two dogs in snow", "the dogs run in the white snow"],
    "bike.jpg": ["man does trick on his bike in the air", "bike rider does trick in the air",
                 "a man on a bike", "man man bike bike", "a person jumps a bike"],
    "grass.jpg": ["dog runs through the grass", "the brown dog is running outside on the grass",
                  "a dog on grass", "dog", "a dog a dog a dog runs"],
    "beach.jpg": ["children play on the beach", "two kids build a sandcastle on the beach",
                  "kids at the beach", "", "the the the beach"],
}
HYPOTHESES = {"dogs.jpg": "two dogs are running in the snow",
              "bike.jpg": "man does trick in the air on bike",
              "grass.jpg": "dog",
              "beach.jpg": ""}


def _random_caption(rng: random.Random, most: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, most)))


def _corpus(seed: int = 0, images: int = 16) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The fixed images plus `images` random ones (5 references each), and one hypothesis each;
    references wear startseq/endseq as the dataset's do."""
    rng = random.Random(seed)
    refs = {name: list(captions) for name, captions in FIXED.items()}
    hyps = dict(HYPOTHESES)
    for i in range(images):
        refs[f"random{i}.jpg"] = [_random_caption(rng) for _ in range(5)]
        # Repeated words on purpose: a hypothesis of one word said several times, now and then.
        hyps[f"random{i}.jpg"] = (" ".join([rng.choice(WORDS)] * rng.randint(1, 6))
                                  if i % 4 == 0 else _random_caption(rng))
    marked = {name: [f"startseq {caption} endseq" for caption in captions]
              for name, captions in refs.items()}
    return marked, hyps


def _coco(references: dict[str, list[str]], hypotheses: dict[str, str]
          ) -> tuple[float, np.ndarray]:
    """pycocoevalcap's corpus and per-image CIDEr-D (scores in `references`' order)."""
    gts = {name: [strip_markers(c) for c in captions] for name, captions in references.items()}
    res = {name: [hypotheses[name]] for name in references}
    score, per_image = Cider().compute_score(gts, res)
    return float(score), np.asarray(per_image)


def test_each_caption_scores_what_pycocoevalcap_gives_its_image_when_the_corpus_is_the_set():
    references, hypotheses = _corpus()
    assert len(references) == 20
    images = list(references)
    ours = CiderReward(references).scores(images, [hypotheses[name] for name in images])
    corpus, per_image = _coco(references, hypotheses)
    assert ours.dtype == np.float64 and ours.shape == (20,)
    np.testing.assert_allclose(ours, per_image, rtol=0, atol=1e-6)
    assert float(ours.mean()) == pytest.approx(corpus, abs=1e-6)
    # Not a vacuous match: some captions score well, the empty one scores nothing.
    assert ours[images.index("dogs.jpg")] > 1.0
    assert ours[images.index("beach.jpg")] == 0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agreement_holds_for_other_random_corpora(seed):
    references, hypotheses = _corpus(seed)
    images = list(references)
    ours = CiderReward(references).scores(images, [hypotheses[name] for name in images])
    np.testing.assert_allclose(ours, _coco(references, hypotheses)[1], rtol=0, atol=1e-6)


def test_several_captions_of_one_image_in_one_call_each_score_as_pycocoevalcap_would():
    references, _ = _corpus()
    rng = random.Random(7)
    samples = 5
    # Four random samples and the first reference itself, per image.
    candidates = {name: [_random_caption(rng) for _ in range(samples - 1)]
                  + [strip_markers(captions[0])] for name, captions in references.items()}
    images = [name for name in references for _ in range(samples)]  # 32x5-style batch layout
    captions = [caption for name in references for caption in candidates[name]]
    ours = CiderReward(references).scores(images, captions).reshape(len(references), samples)
    for k in range(samples):  # pycocoevalcap takes one caption per image: one set at a time
        expected = _coco(references, {name: candidates[name][k] for name in references})[1]
        np.testing.assert_allclose(ours[:, k], expected, rtol=0, atol=1e-6)
    # The same image may come in any order and any number of times.
    shuffled = list(range(len(images)))
    random.Random(3).shuffle(shuffled)
    again = CiderReward(references).scores([images[i] for i in shuffled],
                                           [captions[i] for i in shuffled])
    np.testing.assert_allclose(again, ours.ravel()[shuffled], rtol=0, atol=0)


def test_document_frequencies_come_from_the_corpus_not_from_the_captions_scored():
    references, hypotheses = _corpus()
    subset = list(FIXED)
    ours = CiderReward(references).scores(subset, [hypotheses[name] for name in subset])
    # pycocoevalcap on the subset alone counts n-grams over 4 images: a different number...
    on_subset = _coco({name: references[name] for name in subset}, hypotheses)[1]
    assert not np.allclose(ours, on_subset, rtol=0, atol=1e-3)
    # ...while on the whole corpus it is ours, whatever the other images' hypotheses are.
    for filler in ("", "a dog in the snow"):
        others = {name: (hypotheses[name] if name in FIXED else filler) for name in references}
        on_corpus = _coco(references, others)[1][: len(subset)]
        np.testing.assert_allclose(ours, on_corpus, rtol=0, atol=1e-6)


def test_an_image_outside_the_corpus_is_an_error_naming_it():
    reward = CiderReward(_corpus()[0])
    with pytest.raises(KeyError, match="cat.jpg"):
        reward.scores(["dogs.jpg", "cat.jpg"], ["two dogs", "a cat"])


def test_images_and_captions_must_pair_up():
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        CiderReward(_corpus()[0]).scores(["dogs.jpg", "bike.jpg"], ["two dogs"])


def test_an_image_without_references_is_refused():
    with pytest.raises(ValueError, match="empty.jpg"):
        CiderReward({"dogs.jpg": ["two dogs"], "empty.jpg": []})


def test_startseq_and_endseq_markers_are_ignored():
    marked, hypotheses = _corpus()
    plain = {name: [strip_markers(c) for c in captions] for name, captions in marked.items()}
    assert marked["dogs.jpg"][0].startswith("startseq ")
    images = list(marked)
    captions = [hypotheses[name] for name in images]
    expected = CiderReward(plain).scores(images, captions)
    np.testing.assert_array_equal(CiderReward(marked).scores(images, captions), expected)
    # In the captions scored too, as caption_scores ignores them in predictions.
    wrapped = [f"startseq {caption} endseq" for caption in captions]
    np.testing.assert_array_equal(CiderReward(plain).scores(images, wrapped), expected)
