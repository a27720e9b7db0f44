"""Batched greedy and beam search over each decoder's stepper: every test runs for every
decoder (merge on pooled vectors; attention and transformer on feature maps)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from captioning.config.schema import ModelConfig
from captioning.data.vocabulary import END, START, Vocabulary
from captioning.models.build import build_model, step_decoder
from captioning.models.decoding import beam_search, generate, greedy

WORDS = ["red", "blue", "circle", "square"]
DIM = 10
POSITIONS = 4  # of the feature maps the grid decoders read
DECODERS = ["merge", "attention", "transformer"]
SETTINGS = {"merge": {}, "attention": {"attention": {"units": 8}},
            "transformer": {"transformer": {"layers": 2, "units": 8, "heads": 2,
                                            "ff_units": 16}}}


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    return request.param


def image_features(decoder: str, rng: np.random.Generator, count: int) -> np.ndarray:
    shape = (count, DIM) if decoder == "merge" else (count, POSITIONS, DIM)
    return rng.normal(size=shape).astype("float32")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([f"{START} {' '.join(WORDS)} {END}"] * 2, min_count=1)


def make_model(vocab: Vocabulary, seed: int, decoder: str = "merge"):
    import keras

    keras.utils.set_random_seed(seed)
    mean, var = np.zeros(DIM, "float32"), np.ones(DIM, "float32")
    config = ModelConfig(decoder=decoder, lstm_units=8, embedding_dim=6, dropout=0.0,
                         **SETTINGS[decoder])
    model = build_model(config, len(vocab), mean, var, positions=POSITIONS, max_length=10)
    # Larger weights than Glorot's make the next-word distributions peaked and varied.
    model.set_weights([w * 3 if w.ndim == 2 else w for w in model.get_weights()])
    return model


def log_prob(model, vocab: Vocabulary, feature: np.ndarray, words: list[int],
             ended: bool) -> float:
    """log P(words [+ endseq] | image) from the teacher-forced model."""
    targets = words + ([vocab.end_id] if ended else [])
    tokens = np.array([[vocab.start_id, *targets]], "int32")
    logits = np.asarray(model.predict_on_batch([feature[None], tokens]))[0].astype("float64")
    logits[:, [vocab.pad_id, vocab.start_id]] = -np.inf
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                            keepdims=True)) - logits.max(-1, keepdims=True)
    return float(sum(log_p[t, target] for t, target in enumerate(targets)))


def test_greedy_takes_the_argmax_word_of_the_full_model_at_every_step(vocab, decoder):
    model = make_model(vocab, seed=1, decoder=decoder)
    features = image_features(decoder, np.random.default_rng(0), 6)
    batched = greedy(step_decoder(model), vocab, features, max_length=8)
    for row, feature in enumerate(features):
        tokens = [vocab.start_id]
        while len(tokens) < 7:  # startseq + max_length - 2 words
            logits = np.asarray(model.predict_on_batch(
                [feature[None], np.array([tokens], "int32")]))[0, -1]
            logits[[vocab.pad_id, vocab.start_id]] = -np.inf
            if len(tokens) == 1:
                logits[vocab.end_id] = -np.inf  # a caption has at least one word
            word = int(logits.argmax())
            if word == vocab.end_id:
                break
            tokens.append(word)
        assert batched[row] == tokens[1:]


def test_beam_search_finds_the_most_likely_caption_when_the_beam_covers_everything(vocab,
                                                                                  decoder):
    model = make_model(vocab, seed=2, decoder=decoder)
    features = image_features(decoder, np.random.default_rng(1), 3)
    max_length = 5  # startseq + up to 3 words + endseq
    words = [i for i in range(len(vocab)) if i not in (vocab.pad_id, vocab.start_id)]
    found = beam_search(step_decoder(model), vocab, features, width=len(words) ** 3,
                        max_length=max_length)
    for row, feature in enumerate(features):
        best, best_score = None, -np.inf
        for n in range(1, max_length - 1):  # at least one word
            for sequence in itertools.product(words, repeat=n):
                if vocab.end_id in sequence:
                    continue
                ended = n < max_length - 2  # shorter captions must end with endseq
                score = log_prob(model, vocab, feature, list(sequence), ended)
                if score > best_score:
                    best, best_score = list(sequence), score
        assert found[row] == best


def test_beam_of_width_one_is_greedy(vocab, decoder):
    model = make_model(vocab, seed=3, decoder=decoder)
    features = image_features(decoder, np.random.default_rng(2), 5)
    stepper = step_decoder(model)
    assert beam_search(stepper, vocab, features, 1, 10) == greedy(stepper, vocab, features, 10)


def test_beams_of_all_images_decode_together_as_they_would_alone(vocab, decoder):
    model = make_model(vocab, seed=4, decoder=decoder)
    features = image_features(decoder, np.random.default_rng(3), 4)
    stepper = step_decoder(model)
    together = beam_search(stepper, vocab, features, 3, 9)
    alone = [beam_search(stepper, vocab, features[i:i + 1], 3, 9)[0] for i in range(4)]
    assert together == alone


@pytest.mark.parametrize("width", [1, 3])
def test_decoding_stops_at_max_length_when_no_caption_ever_ends(vocab, width, decoder):
    model = make_model(vocab, seed=5, decoder=decoder)
    weights = model.get_layer("logits").get_weights()
    weights[1][vocab.end_id] = -1e9  # endseq can never be chosen
    model.get_layer("logits").set_weights(weights)
    features = image_features(decoder, np.random.default_rng(4), 3)
    result = beam_search(step_decoder(model), vocab, features, width, max_length=7)
    assert [len(words) for words in result] == [5, 5, 5]  # max_length minus start and end


@pytest.mark.parametrize("width", [1, 3])
def test_a_model_that_would_end_every_caption_at_once_still_gets_one_word(vocab, width,
                                                                          decoder):
    # An undertrained model: endseq is by far the likeliest word at every step.
    model = make_model(vocab, seed=9, decoder=decoder)
    weights = model.get_layer("logits").get_weights()
    weights[1][vocab.end_id] = 1e3
    model.get_layer("logits").set_weights(weights)
    features = image_features(decoder, np.random.default_rng(8), 3)
    captions = generate(step_decoder(model), vocab, features, beam_width=width, max_length=8)
    assert [len(caption.split()) for caption in captions] == [1, 1, 1]


def test_generated_text_has_no_start_or_end_marker(vocab, decoder):
    model = make_model(vocab, seed=6, decoder=decoder)
    features = image_features(decoder, np.random.default_rng(5), 7)
    captions = generate(step_decoder(model), vocab, features, beam_width=2, max_length=6,
                        batch_size=3)
    assert len(captions) == 7
    for caption in captions:
        assert START not in caption.split() and END not in caption.split()
        assert set(caption.split()) <= set(WORDS) | {"<unk>"}


@pytest.mark.parametrize("width", [1, 3])
def test_the_attention_of_each_word_is_where_the_decoder_looked_for_it(vocab, width):
    model = make_model(vocab, seed=7, decoder="attention")
    features = image_features("attention", np.random.default_rng(6), 4)
    stepper = step_decoder(model)
    maps: list[np.ndarray] = []
    found = beam_search(stepper, vocab, features, width, max_length=8, attention=maps)
    assert len(maps) == 4 and sum(len(words) for words in found) > 4
    for row, (words, looked) in enumerate(zip(found, maps, strict=True)):
        assert looked.shape == (len(words), POSITIONS)
        np.testing.assert_allclose(looked.sum(axis=1), 1.0, atol=1e-5)
        # Stepping the chosen words alone looks at the same places.
        context, state = stepper.start(features[row:row + 1])
        for t, word in enumerate([vocab.start_id, *words][:len(words)]):
            _, state = stepper.step(context, np.array([word]), state)
            np.testing.assert_allclose(stepper.attention[0], looked[t], atol=1e-5)


def test_decoders_that_do_not_attend_give_no_attention(vocab):
    maps: list[np.ndarray] = []
    greedy(step_decoder(make_model(vocab, seed=8)), vocab,
           image_features("merge", np.random.default_rng(7), 2), 6, attention=maps)
    assert maps == []
