"""Upper bounds that several places share: the config schema, the command line's flags and a
served request's parameters. Each comes with the reason a user sees when a value is above it.
Plain constants and the argparse types that check flags against them (and promote's bounds),
so the command line checks its flags without loading TensorFlow."""

from __future__ import annotations

import argparse
from collections.abc import Callable

MAX_TOKENS = 200
TOKENS_WHY = "tokens of a caption; Flickr and COCO captions have fewer than 60"
MAX_BEAM_WIDTH = 20
BEAM_WHY = "a beam costs images x width decoder rows, and beyond 5 captions get no better"
MAX_TRIALS = 100_000
TRIALS_WHY = "trials in one sweep"
MAX_SAMPLE_IMAGES = 20_000
SAMPLE_IMAGES_WHY = "synthetic images are for a quick look; use a real dataset for more"


def flag(limit: int, why: str, least: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number from `least` to `limit`, refused saying `why`."""
    def whole_number(text: str) -> int:
        value = int(text) if text.strip().lstrip("+-").isdigit() else None
        if value is None or not least <= value <= limit:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {least} to {limit:,} ({why}), got {text}")
        return value
    return whole_number


def metric_bound(text: str) -> tuple[str, float]:
    """An argparse type: METRIC=NUMBER (promote's --max and --min)."""
    key, _, value = text.partition("=")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METRIC=NUMBER, got {text}") from None
