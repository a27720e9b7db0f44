"""Caption scores from the community's reference scorers (pycocoevalcap): BLEU-1..4, CIDEr-D,
ROUGE-L, over all references of each image."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from captioning.config.metrics import SCORE_NAMES
from captioning.data.vocabulary import END, START


def strip_markers(caption: str) -> str:
    """'startseq two dogs endseq' -> 'two dogs' (scorers see words only)."""
    return " ".join(word for word in caption.split() if word not in (START, END))


def caption_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
                   ) -> dict[str, float]:
    """Corpus scores of `predictions` (image -> caption) against `references` (image -> list).

    Captions are whitespace-tokenised text; startseq/endseq markers are ignored.
    """
    keys = [key for key in predictions if key in references]
    if not keys:
        raise ValueError("no prediction has references to score against")
    gts = {key: [strip_markers(ref) for ref in references[key]] for key in keys}
    res = {key: [strip_markers(predictions[key])] for key in keys}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    values = [*bleu, cider, rouge]
    return {name: float(value) for name, value in zip(SCORE_NAMES, values, strict=True)}
