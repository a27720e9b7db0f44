"""Every caption decoder by name. A new decoder is a new file in this folder, its line in
DECODERS below, and its settings: a section class in config/ (as config/attention.py) that
config/schema.py's ModelConfig composes, and its line in READS_GRID there.

    merge        the seed's merge model: pooled image vector + LSTM over the caption prefix
    attention    Show, Attend and Tell's soft attention over the feature map (Xu et al. 2015)
    transformer  causal self-attention + cross-attention to the projected feature map
"""

from __future__ import annotations

from typing import Any

from captioning.models.attention import Attention
from captioning.models.merge import Merge
from captioning.models.protocol import Decoder, model_name
from captioning.models.transformer import Transformer

DECODERS: dict[str, Decoder] = {decoder.name: decoder
                                for decoder in (Merge, Attention, Transformer)}


def decoder_named(name: str) -> Decoder:
    return DECODERS[name]


def decoder_of(model: Any) -> Decoder | None:
    """The decoder that built a loaded Keras model, or None if none did."""
    for name, decoder in DECODERS.items():
        if model.name == model_name(name):
            return decoder
    return None
