"""The Transformer decoder's settings (model.transformer: in an experiment); its code is
models/transformer.py. Keras-free, as every settings class, so a config loads without a model."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictFloat, StrictInt, model_validator

from captioning.config.section import KeyProblem, Section, at_most


class TransformerConfig(Section):
    """A Transformer decoder over the projected feature map (model.decoder: transformer)."""

    # Decoder layers (self-, cross-attention); encoder layers (self-attention over the map).
    layers: Annotated[StrictInt, Field(ge=1), at_most(64, "decoder layers")] = 2
    encoder_layers: Annotated[StrictInt, Field(ge=0), at_most(64, "layers")] = 0
    units: Annotated[StrictInt, Field(ge=8), at_most(8192, "model width")] = 256
    heads: Annotated[StrictInt, Field(ge=1), at_most(128, "attention heads")] = 4
    ff_units: Annotated[StrictInt, Field(ge=1), at_most(32_768, "feed-forward width")] = 1024
    # Of residual branches and token embeddings. None: model.dropout (0.5, for LSTMs; ~0.1 here)
    dropout: StrictFloat | None = Field(None, ge=0.0, lt=1.0)
    # logits = h E^T + b, E the word embeddings (Press & Wolf 2017), trained even if frozen
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide_units(self) -> TransformerConfig:
        if self.units % self.heads:
            raise KeyProblem("heads", f"{self.heads} heads do not divide units {self.units}")
        return self
