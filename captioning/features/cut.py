"""An encoder cut in two: the frozen head, run once per image and cached, and the tail, trained.

`encoder.grid_layer` ends the encoder early: that layer's output is the feature map cached and
read (e.g. mobilenet's 14x14 map before its last stride-2 block). `encoder.fine_tune.from_layer`
cuts it before a layer: the head (images -> that layer's input) is what the cache holds, once
per encoder and cut, and the tail (the cut map -> the final map) is rebuilt layer by layer on
an input of its own, with the encoder's weights, to become the first layers of the trained
model (models/tuned.py), so it is saved inside model.keras like any other layer.

A cut is valid where exactly one tensor crosses it: not inside a residual block, whose skip
connection would reach past the cut. The tail's batch normalisation layers stay frozen, in
inference mode, as Keras' transfer-learning guide advises for small batches.
"""

from __future__ import annotations

from typing import Any

from captioning.config.encoder import EncoderConfig
from captioning.errors import ConfigError, first_line
from captioning.features.encoders import build_encoder

TAIL_NAME = "encoder_tail"


def _layers_to(encoder: Any, end: Any) -> list[Any]:
    """The encoder's layers, in graph order, up to the one that gives `end`."""
    last = end._keras_history.operation
    layers = list(encoder.layers)
    return layers[:layers.index(last) + 1]


def _end(encoder: Any, grid_layer: str | None) -> Any:
    """The tensor that is the encoder's feature map: grid_layer's output, or its own (first)
    output (a hub backbone's own pooled vector, its second, is no map to cut)."""
    if grid_layer is None:
        return encoder.outputs[0]
    names = [layer.name for layer in encoder.layers]
    if grid_layer not in names:
        maps = [layer.name for layer in encoder.layers[1:] if len(layer.output.shape) == 4]
        raise ConfigError(f"encoder.grid_layer: {grid_layer!r} is no layer of this encoder; "
                          f"layers with a feature map, last first: {_some(maps[::-1])}")
    output = encoder.get_layer(grid_layer).output
    if len(output.shape) != 4:
        raise ConfigError(f"encoder.grid_layer: {grid_layer} gives {tuple(output.shape)}, not "
                          "a feature map (batch, height, width, channels)")
    return output


def _some(names: list[str], count: int = 12) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def valid_cuts(encoder: Any, end: Any) -> list[str]:
    """Names of the layers the encoder can be cut before, in graph order: each reads one
    tensor, and no other tensor made before it is read after it."""
    layers = _layers_to(encoder, end)
    made_by = {}
    for index, layer in enumerate(layers):
        for node in layer._inbound_nodes[:1]:
            for tensor in node.outputs:
                made_by[id(tensor)] = index
    reads = [[made_by.get(id(t), -1) for t in layer._inbound_nodes[0].arguments.keras_tensors]
             if layer._inbound_nodes else [] for layer in layers]
    cuts = []
    for index in range(1, len(layers)):
        crossing = {source for later in reads[index:] for source in later if source < index}
        if len(crossing) == 1 and len(layers[index]._inbound_nodes[0].arguments.keras_tensors) == 1:
            cuts.append(layers[index].name)
    return cuts


def _cut_layer(encoder: Any, end: Any, name: str) -> Any:
    cuts = valid_cuts(encoder, end)
    if name not in cuts:
        names = [layer.name for layer in encoder.layers]
        where = ("is no layer of this encoder" if name not in names else
                 "is not a place where the encoder can be cut (a skip connection crosses it, "
                 "or it comes after the feature map)")
        raise ConfigError(f"encoder.fine_tune.from_layer: {name!r} {where}; valid cuts, last "
                          f"first: {_some(cuts[::-1])}")
    return encoder.get_layer(name)


def build_head(config: EncoderConfig) -> Any:
    """The part of the encoder of `config` run over images and cached: up to the cut when
    fine-tuning, up to encoder.grid_layer if set, else the whole encoder."""
    import keras

    encoder = build_encoder(config)
    fine_tune = getattr(config, "fine_tune", None)
    grid_layer = getattr(config, "grid_layer", None)
    if fine_tune is None and grid_layer is None:
        return encoder
    end = _end(encoder, grid_layer)
    if fine_tune is None:
        return keras.Model(encoder.input, end, name=f"{encoder.name}_to_{grid_layer}")
    cut = _cut_layer(encoder, end, fine_tune.from_layer)
    return keras.Model(encoder.input, cut.input, name=f"{encoder.name}_head")


def build_tail(config: EncoderConfig) -> Any:
    """The encoder's layers from encoder.fine_tune.from_layer to its feature map, rebuilt on
    an input of their own with the encoder's weights: (batch, h, w, c) at the cut -> the map."""
    import keras

    encoder = build_encoder(config)
    end = _end(encoder, getattr(config, "grid_layer", None))
    cut = _cut_layer(encoder, end, config.fine_tune.from_layer)
    layers = _layers_to(encoder, end)
    start = cut.input
    image = keras.Input(tuple(start.shape[1:]), name="cut")
    made = {id(start): image}
    for layer in layers[layers.index(cut):]:
        node = layer._inbound_nodes[0]
        try:
            clone = layer.__class__.from_config(layer.get_config())
            args, kwargs = node.arguments.fill_in(made)
            outputs = clone(*args, **kwargs)
            clone.set_weights(layer.get_weights())
        except Exception as error:  # a layer Keras cannot rebuild from its config
            raise ConfigError(f"encoder.fine_tune.from_layer: layer {layer.name} of the "
                              f"encoder cannot be rebuilt for training ({first_line(error)}); "
                              "cut after it") from None
        if isinstance(clone, keras.layers.BatchNormalization):
            clone.trainable = False
        for old, new in zip(keras.tree.flatten(node.outputs), keras.tree.flatten(outputs),
                            strict=True):
            made[id(old)] = new
    return keras.Model(image, made[id(end)], name=TAIL_NAME)
