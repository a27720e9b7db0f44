"""The attention decoder's settings (model.attention: in an experiment); its code is
models/attention.py. Keras-free, as every settings class, so a config loads without a model."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictFloat, StrictInt

from captioning.config.section import Section, at_most


class AttentionConfig(Section):
    """Show, Attend and Tell's soft attention (model.decoder: attention); the LSTM is
    model.lstm_units wide, the words model.embedding_dim (or the spaCy vectors')."""

    # of the additive attention's hidden layer
    units: Annotated[StrictInt, Field(ge=1), at_most(8192, "attention units")] = 256
    # lambda of the doubly stochastic regularisation, sum_i (1 - sum_t alpha_ti)^2 per word:
    # every position attended to about once over a caption. The paper's value: 1.
    doubly_stochastic: StrictFloat = Field(1.0, ge=0.0)
