"""Checks a sweep makes before Ray starts any trial, so that a setting no trial could use is
one clear error now rather than a failure in every trial (or a trial pending forever)."""

from __future__ import annotations

import logging
from typing import Any

import ray

from captioning.errors import ConfigError
from captioning.features import hub
from captioning.features.cut import build_head
from captioning.features.encoders import build_encoder, check_encoder
from captioning.training.devices import release

log = logging.getLogger(__name__)


def check_gpus(share: float, *, cluster: bool) -> None:
    """Refuse a GPU share no node has (on a cluster: warn, its autoscaler may add one)."""
    if share > 1 and not float(share).is_integer():
        raise ConfigError(f"sweep.resources.gpu: {share:g} is neither a share of one GPU (at "
                          "most 1) nor a whole number of GPUs")
    if share <= 0:
        return
    most = max((node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]),
               default=0.0)
    if share <= most:
        return
    if cluster:
        log.warning("sweep.resources.gpu: each trial asks for %g GPU(s) and no node of the "
                    "Ray cluster has that many now; trials wait until one joins", share)
        return
    raise ConfigError(f"sweep.resources.gpu: each trial asks for {share:g} GPU(s) but this "
                      f"machine has {most:g}; set sweep.resources.gpu=0 to train on the CPU"
                      + (", or a share such as 0.5 to put several trials on one GPU"
                         if most else ""))


def check_cpus(cpus: float, *, cluster: bool) -> None:
    """Refuse a CPU count per trial no node has (Ray would leave every trial PENDING); on a
    cluster, warn (its autoscaler may add a bigger node)."""
    most = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]),
               default=0.0)
    if cpus <= most:
        return
    if cluster:
        log.warning("sweep.resources.cpu: each trial asks for %g CPUs and no node of the Ray "
                    "cluster has that many now; trials wait until one joins", cpus)
        return
    raise ConfigError(f"sweep.resources.cpu: each trial asks for {cpus:g} CPUs but this "
                      f"machine has {most:g}; trials would wait forever (set "
                      f"sweep.resources.cpu={most:g} or less)")


def check_encoder_files(encoders: list[Any]) -> None:
    """Build each encoder that reads a weights file, is a model file or a KerasHub preset
    directory, here, before Ray (and check a preset's name, and the layers a cut or
    encoder.grid_layer names): a file or layer that does not fit is one ConfigError now, not
    a failure in every trial."""
    for encoder in encoders:
        check_encoder(encoder)
        if encoder.model is None and hub.is_hub(encoder.name):
            preset = hub.preset_of(encoder.name)
            hub.check_known(preset)  # a name: no download here, as for ImageNet weights
            if hub.is_local(preset):
                build_encoder(encoder)
        elif encoder.model is not None or encoder.weights_file is not None:
            build_head(encoder)
        elif encoder.fine_tune is not None or encoder.grid_layer is not None:
            # The layer names, on the architecture alone: no ImageNet download here.
            build_head(encoder.model_copy(update={"weights": "none"}))
    release()
