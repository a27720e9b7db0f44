"""Scoring a trained model on a split: BLEU-1..4, CIDEr-D, ROUGE-L, and every prediction."""

from __future__ import annotations

import json
from pathlib import Path

from captioning.evaluation.scores import caption_scores, strip_markers
from captioning.features.cache import image_inputs
from captioning.inference.captioner import Captioner
from captioning.training.prepare import prepare


def evaluate_model(model_dir: Path | str, split: str = "test", beam_width: int | None = None,
                   data_root: Path | None = None, output: Path | None = None,
                   progress: bool = True, source: str | None = None) -> dict:
    """Caption every image of `split` with the model and score against all its references.

    The dataset and encoder are the ones in the model's config.json (data.root may be
    overridden). Returns {"scores": {...}, "images": [{image, prediction, references}], ...},
    also written to `output` as JSON when given. `source` names the model in the report (the
    models:/ URI it was fetched from), else `model_dir` does.
    """
    captioner = Captioner.load(model_dir)
    config = captioner.config
    beam_width = beam_width or config.decode.beam_width
    if data_root is not None:
        config = config.model_copy(update={"data": config.data.model_copy(
            update={"root": Path(data_root)})})
    prepared = prepare(config, progress=progress)
    if split not in prepared.dataset.splits or not prepared.dataset.splits[split]:
        raise ValueError(f"split {split!r} has no images in {config.data.root}")
    names = prepared.dataset.splits[split]
    predictions = captioner.caption_features(
        image_inputs(prepared.features, names, config.reads_grid), beam_width)
    references = {name: prepared.dataset.captions[name] for name in names}
    scores = caption_scores(references, dict(zip(names, predictions, strict=True)))
    report = {
        "model": source or str(model_dir), "split": split, "beam_width": beam_width,
        "images_scored": len(names), "scores": scores,
        "images": [{"image": name, "prediction": prediction,
                    "references": [strip_markers(r) for r in references[name]]}
                   for name, prediction in zip(names, predictions, strict=True)],
    }
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
