"""The Transformer decoder's own settings: its dropout (model.transformer.dropout, else
model.dropout), and output logits tied to the word embeddings (tie_embeddings: h E^T + b, h
projected to the embedding's width first where that is not the model's), which train, save
and load in safe mode, and train a tied spaCy matrix. (tests/unit/models/test_build.py
steps tied models, cached and recomputed, and trains them under mixed precision.)"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from captioning.config.schema import ModelConfig
from captioning.models.build import build_model, captioner_problem, load_keras_model, masked_loss
from captioning.models.transformer import Block, TiedEmbedding

VOCAB, DIM, POSITIONS, UNITS = 40, 24, 5, 16
WIDTHS = {"same width": UNITS, "projected": 12}  # of the word embeddings


def transformer(width: int = UNITS, matrix: np.ndarray | None = None, *,
                model_dropout: float = 0.5, train_embedding: bool = True,
                **settings) -> keras.Model:
    """A small Transformer (units 16) over 5 positions of 24 channels, words `width` wide;
    `settings` are model.transformer's."""
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=DIM).astype("float32"), rng.uniform(0.5, 2, DIM).astype("float32")
    config = ModelConfig(decoder="transformer", embedding_dim=width, dropout=model_dropout,
                         train_embedding=train_embedding,
                         transformer={"layers": 2, "encoder_layers": 1, "units": UNITS,
                                      "heads": 4, "ff_units": 24, **settings})
    return build_model(config, VOCAB, mean, var, matrix, positions=POSITIONS, max_length=12)


def batch(seed: int = 1, rows: int = 4, time: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = rng.normal(size=(rows, POSITIONS, DIM)).astype("float32")
    return grid, rng.integers(4, VOCAB, size=(rows, time)).astype("int32")


def train_step(model: keras.Model, seed: int = 2) -> float:
    # Eagerly: a tenth of the time (test_build.py trains tied models compiled, under
    # mixed precision).
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=masked_loss, run_eagerly=True)
    grid, tokens = batch(seed)
    loss = model.train_on_batch([grid, tokens], np.roll(tokens, -1, axis=1))
    return float(np.ravel(loss)[0])


@pytest.mark.parametrize(("own", "used"), [(None, 0.5), (0.1, 0.1), (0.0, 0.0)])
def test_the_transformer_uses_its_own_dropout_else_the_models(own, used):
    model = transformer(model_dropout=0.5, dropout=own)
    blocks = [layer for layer in model.layers if isinstance(layer, Block)]
    assert sorted(block.name for block in blocks) == ["decoder_block_0", "decoder_block_1",
                                                      "encoder_block_0"]
    # Every residual branch of every block, and the token embeddings.
    assert {block.dropout for block in blocks} == {block.drop.rate for block in blocks} == {used}
    assert model.get_layer("token_dropout").rate == used


def test_the_transformers_dropout_is_a_rate():
    assert ModelConfig(transformer={"dropout": 0.1}).transformer.dropout == 0.1
    assert ModelConfig().transformer.dropout is None  # model.dropout's
    for bad in (1.0, -0.1, 1):
        with pytest.raises(ValidationError, match=r"transformer\.dropout"):
            ModelConfig(transformer={"dropout": bad})


def test_untied_the_transformer_keeps_the_layers_models_were_saved_with():
    model = transformer(width=12)
    assert {layer.name for layer in model.layers} == {
        "image", "tokens", "grid_norm", "embedding", "grid_project", "token_project",
        "grid_positions", "token_positions", "encoder_block_0", "token_dropout", "memory_norm",
        "decoder_block_0", "decoder_block_1", "final_norm", "logits"}
    assert type(model.get_layer("embedding")) is keras.layers.Embedding
    assert model.get_layer("logits").units == VOCAB


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_tied_the_output_matrix_is_the_embedding_matrix(width):
    model = transformer(width, tie_embeddings=True)
    embedding = model.get_layer("embedding")
    assert isinstance(embedding, TiedEmbedding)
    names = [layer.name for layer in model.layers]
    assert "logits" not in names and ("output_project" in names) == (width != UNITS)
    # What the embedding matrix E multiplies: the final hidden state, projected to its width.
    hidden = keras.Model(model.inputs, model.get_layer(
        "output_project" if width != UNITS else "final_norm").output)
    grid, tokens = batch()
    for change in (0.0, 0.5):  # E as built, then E moved: the logits follow it
        matrix = np.asarray(embedding.embeddings) + np.random.default_rng(3).normal(
            0, change, size=(VOCAB, width)).astype("float32")
        embedding.embeddings.assign(matrix)
        embedding.bias.assign(np.linspace(-1, 1, VOCAB).astype("float32"))
        h = np.asarray(hidden.predict_on_batch([grid, tokens]))
        np.testing.assert_allclose(model.predict_on_batch([grid, tokens]),
                                   h @ matrix.T + np.linspace(-1, 1, VOCAB), atol=1e-4)
    # No matrix of its own: vocab * units fewer weights (less the projection's, if any).
    untied = transformer(width)
    projection = (UNITS * width + width) if width != UNITS else 0
    assert untied.count_params() - model.count_params() == VOCAB * UNITS - projection


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_a_tied_model_trains_then_loads_in_safe_mode_with_identical_logits(width, tmp_path):
    model = transformer(width, tie_embeddings=True)
    embedding = model.get_layer("embedding")
    before = [np.asarray(embedding.embeddings), np.asarray(embedding.bias)]
    assert np.isfinite(train_step(model))
    after = [np.asarray(embedding.embeddings), np.asarray(embedding.bias)]
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(before, after, strict=True))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    assert isinstance(loaded.get_layer("embedding"), TiedEmbedding)
    assert captioner_problem(loaded, "transformer") is None
    grid, tokens = batch(seed=4)
    np.testing.assert_allclose(loaded.predict_on_batch([grid, tokens]),
                               model.predict_on_batch([grid, tokens]), atol=1e-6)
    assert load_keras_model(tmp_path / "model.keras").count_params() == model.count_params()


def test_tied_to_a_spacy_matrix_the_shared_matrix_trains_from_it_even_when_frozen_untied():
    # A frozen output layer cannot learn the words' output vectors: tied, the matrix trains.
    matrix = np.random.default_rng(5).normal(size=(VOCAB, 12)).astype("float32")
    model = transformer(12, matrix, train_embedding=False, tie_embeddings=True)
    embedding = model.get_layer("embedding")
    assert sorted(w.name for w in embedding.trainable_weights) == ["bias", "embeddings"]
    np.testing.assert_array_equal(np.asarray(embedding.embeddings), matrix)
    train_step(model)
    assert np.abs(np.asarray(embedding.embeddings) - matrix).max() > 1e-4
    assert np.abs(np.asarray(embedding.bias)).max() > 1e-4
    untied = transformer(12, matrix, train_embedding=False)
    assert not untied.get_layer("embedding").trainable


def test_a_model_with_neither_logits_layer_nor_tied_embedding_is_no_transformer():
    model = transformer()
    assert captioner_problem(model, "transformer") is None
    headless = keras.Model(model.inputs, model.get_layer("final_norm").output,
                           name=model.name)
    assert "no logits layer" in captioner_problem(headless, "transformer")
