"""The models: teacher forcing computes exactly what the seed's prefix model computes (merge),
each decoder's step model reproduces its teacher-forced next-word distributions, the loss and
metric look at real tokens only (what every decoder shares is test_decoder_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.config.schema import ModelConfig, TrainConfig
from captioning.models.build import (
    MaskedAccuracy,
    build_model,
    compile_model,
    masked_loss,
    step_decoder,
)
from captioning.models.transformer import TransformerStepper

VOCAB, DIM, UNITS = 40, 24, 16


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model_and_data():
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=DIM).astype("float32"), rng.uniform(0.5, 2, DIM).astype("float32")
    config = ModelConfig(lstm_units=UNITS, embedding_dim=12, dropout=0.5)
    model = build_model(config, VOCAB, mean, var)
    features = rng.normal(size=(5, DIM)).astype("float32")
    lengths = [3, 7, 5, 9, 2]  # tokens per caption, startseq included
    tokens = np.zeros((5, 9), "int32")
    for row, length in enumerate(lengths):
        tokens[row, 0] = 2
        tokens[row, 1:length] = rng.integers(4, VOCAB, size=length - 1)
    return config, model, features, tokens, lengths, (mean, var)


def test_teacher_forced_model_matches_prefix_model_for_every_prefix(model_and_data):
    config, model, features, tokens, lengths, (mean, var) = model_and_data
    width = tokens.shape[1]
    prefix_model = build_model(config, VOCAB, mean, var, teacher_forcing=False,
                               prefix_length=width)
    prefix_model.set_weights(model.get_weights())
    forced = softmax(np.asarray(model.predict_on_batch([features, tokens])))  # (5, time, V)
    checked = 0
    for row, length in enumerate(lengths):
        for t in range(length):
            prefix = np.zeros((1, width), "int32")
            prefix[0, :t + 1] = tokens[row, :t + 1]
            one = softmax(np.asarray(prefix_model.predict_on_batch([features[row:row + 1],
                                                                    prefix])))
            np.testing.assert_allclose(forced[row, t], one[0], atol=1e-5)
            checked += 1
    assert checked == sum(lengths)


POSITIONS = 5
GRID_DECODERS = {"attention": {"attention": {"units": 12}},
                 "transformer": {"transformer": {"layers": 2, "encoder_layers": 1, "units": 16,
                                                 "heads": 4, "ff_units": 24}}}


def grid_model(decoder: str, dropout: float = 0.5, **settings):
    rng = np.random.default_rng(2)
    mean, var = rng.normal(size=DIM).astype("float32"), rng.uniform(0.5, 2, DIM).astype("float32")
    config = ModelConfig(**{"decoder": decoder, "lstm_units": UNITS, "embedding_dim": 12,
                            "dropout": dropout, **GRID_DECODERS[decoder], **settings})
    return build_model(config, VOCAB, mean, var, positions=POSITIONS, max_length=12)


# Grid models whose output layer is their word embeddings, 16 wide as the Transformer's units,
# or 12 (the final hidden state projected to 12 first).
TIED = {"transformer": {**GRID_DECODERS["transformer"]["transformer"], "tie_embeddings": True}}
GRID_VARIANTS = {"attention": ("attention", {}), "transformer": ("transformer", {}),
                 "transformer, tied": ("transformer", {**TIED, "embedding_dim": 16}),
                 "transformer, tied, projected": ("transformer", TIED)}


@pytest.mark.parametrize(("variant", "cache"), [
    ("merge", True), *((variant, True) for variant in GRID_VARIANTS),
    *((variant, False) for variant in GRID_VARIANTS if variant.startswith("transformer"))])
def test_step_decoding_reproduces_the_teacher_forced_next_word_distributions(model_and_data,
                                                                             variant, cache):
    """cache=False: the Transformer's stepper that recomputes the prefix at every word."""
    _, model, features, tokens, lengths, _ = model_and_data
    if variant != "merge":
        decoder, settings = GRID_VARIANTS[variant]
        model = grid_model(decoder, **settings)
        features = np.random.default_rng(3).normal(size=(5, POSITIONS, DIM)).astype("float32")
    forced = softmax(np.asarray(model.predict_on_batch([features, tokens])))
    stepper = step_decoder(model) if cache else TransformerStepper(model, cache=False)
    context, state = stepper.start(features)
    for t in range(max(lengths)):
        logits, state = stepper.step(context, tokens[:, t], state)
        real = [row for row, length in enumerate(lengths) if t < length]
        np.testing.assert_allclose(softmax(logits)[real], forced[real, t], atol=1e-5)


def test_attention_adds_the_doubly_stochastic_penalty_over_real_steps(model_and_data):
    _, _, _, tokens, lengths, _ = model_and_data
    model = grid_model("attention", attention={"units": 12, "doubly_stochastic": 1.0})
    grid = np.random.default_rng(4).normal(size=(5, POSITIONS, DIM)).astype("float32")
    model([grid, tokens], training=False)
    [penalty] = [float(loss) for loss in model.losses]
    stepper = step_decoder(model)
    context, state = stepper.start(grid)
    attended = np.zeros((5, POSITIONS))
    for t in range(tokens.shape[1]):
        _, state = stepper.step(context, tokens[:, t], state)
        real = np.array([t < length for length in lengths], float)
        attended += stepper.attention * real[:, None]
    np.testing.assert_allclose(stepper.attention.sum(axis=1), 1.0, atol=1e-5)
    words = np.array(lengths, float)  # the real (non-padding) input tokens of each caption
    expected = (((1 - attended) ** 2).sum(axis=1) / words).mean()
    assert penalty == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("variant", list(GRID_VARIANTS))
@pytest.mark.slow
def test_grid_decoders_train_under_mixed_precision(variant):
    from captioning.models.build import precision

    decoder, settings = GRID_VARIANTS[variant]
    with precision("mixed_bfloat16"):
        model = compile_model(grid_model(decoder, **settings), TrainConfig())
    rng = np.random.default_rng(4)
    grid = rng.normal(size=(4, POSITIONS, DIM)).astype("float32")
    tokens = rng.integers(4, VOCAB, size=(4, 6)).astype("int32")
    loss = model.train_on_batch({"image": grid, "tokens": tokens}, np.roll(tokens, -1, axis=1))
    assert np.isfinite(np.ravel(loss)[0])
    assert model.get_layer("embedding").compute_dtype == "bfloat16"  # the model runs in bf16,
    # but its logits are float32, whether a logits layer or the tied embedding gives them.
    assert model.output.dtype == "float32"
    assert model.predict_on_batch([grid, tokens]).dtype == np.float32
    if "tied" not in variant:
        assert model.get_layer("logits").compute_dtype == "float32"


def test_each_decoder_is_built_from_its_own_config_section():
    attention = grid_model("attention", attention={"units": 7})
    assert attention.get_layer("attend").attention_units == 7
    assert attention.get_layer("attend").units == UNITS
    transformer = grid_model("transformer", transformer={"layers": 3, "encoder_layers": 0,
                                                         "units": 20, "heads": 5,
                                                         "ff_units": 9})
    blocks = [layer for layer in transformer.layers if layer.name.startswith("decoder_block")]
    assert len(blocks) == 3 and {block.heads for block in blocks} == {5}
    assert {block.ff_units for block in blocks} == {9}
    assert not [layer for layer in transformer.layers if layer.name.startswith("encoder_")]
    assert transformer.get_layer("grid_project").units == 20


def test_masked_loss_ignores_padding_positions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 6)).astype("float32")
    targets = np.array([[3, 2, 0, 0], [1, 5, 4, 0]], "int32")
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    expected = -np.mean([log_p[b, t, targets[b, t]] for b, t in real])
    assert float(masked_loss(targets, logits)) == pytest.approx(expected, rel=1e-5)
    changed = logits.copy()
    changed[0, 3] += 100.0  # a padded position: must not move the loss
    assert float(masked_loss(targets, changed)) == pytest.approx(expected, rel=1e-5)


def test_masked_accuracy_counts_real_tokens_across_batches():
    metric = MaskedAccuracy()
    one_hot = np.eye(5, dtype="float32")
    metric.update_state(np.array([[1, 2, 0]]), one_hot[[[1, 3, 0]]])  # 1 of 2 right
    metric.update_state(np.array([[4, 0, 0]]), one_hot[[[4, 1, 1]]])  # 1 of 1 right
    assert float(metric.result()) == pytest.approx(2 / 3)


def test_model_is_built_from_config_widths():
    mean, var = np.zeros(DIM, "float32"), np.ones(DIM, "float32")
    model = build_model(ModelConfig(lstm_units=33, embedding_dim=7), VOCAB, mean, var)
    assert model.get_layer("lstm").units == 33
    assert model.get_layer("image_dense").units == 33
    assert model.get_layer("decoder_dense").units == 33
    assert model.get_layer("embedding").output_dim == 7
    assert model.output_shape == (None, None, VOCAB)


def test_frozen_spacy_matrix_is_not_trainable():
    mean, var = np.zeros(DIM, "float32"), np.ones(DIM, "float32")
    matrix = np.random.default_rng(0).normal(size=(VOCAB, 5)).astype("float32")
    model = build_model(ModelConfig(train_embedding=False), VOCAB, mean, var, matrix)
    embedding = model.get_layer("embedding")
    assert not embedding.trainable
    np.testing.assert_array_equal(embedding.get_weights()[0], matrix)
