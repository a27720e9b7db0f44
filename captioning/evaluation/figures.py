"""Figures logged to MLflow: a sweep's metric against each searched parameter, a
multi-objective sweep's Pareto front, and a trial's validation images with the caption it
predicts under each. Matplotlib, drawn off screen."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attention_figure(items: list[tuple[Any, list[str], np.ndarray]], path: Path,
                     most_words: int = 12) -> Path:
    """For each (image, words, maps): a row of the image, then one panel per generated word
    with where the decoder looked for it. `maps` (words, positions) are over a square feature
    map, upsampled over the image."""
    from PIL import Image

    plt = _pyplot()
    columns = 1 + min(most_words, max((len(words) for _, words, _ in items), default=0))
    fig, axes = plt.subplots(len(items), columns, figsize=(2.0 * columns, 2.3 * len(items)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (image, words, maps) in zip(axes, items, strict=True):
        image = image.convert("RGB").resize((224, 224))
        row[0].imshow(image)
        row[0].set_title(textwrap.fill(" ".join(words) or "(no words)", 26), fontsize=7)
        side = math.isqrt(maps.shape[1]) if maps.size else 1
        pixels = np.asarray(image, "float32") / 255
        for ax, word, weights in zip(row[1:], words, maps, strict=False):
            # Brightest where it looked most; the rest dimmed in proportion (as in the paper's
            # figures). A map of equal weights leaves the image as it is.
            scaled = 255 * weights.reshape(side, side) / max(float(weights.max()), 1e-9)
            heat = np.asarray(Image.fromarray(scaled.astype("uint8")).resize(
                image.size, Image.Resampling.BILINEAR), "float32")[..., None] / 255
            ax.imshow(pixels * (0.15 + 0.85 * heat))
            ax.set_title(word, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def sample_grid(rows: list[dict[str, Any]], path: Path, *, count: int = 8,
                columns: int = 4) -> Path | None:
    """Up to `count` of `rows` (samples.json: image path, prediction, references) as a grid:
    each image with the predicted caption under it and its first reference, in grey, above.
    None if no image is readable here."""
    from PIL import Image, UnidentifiedImageError

    shown = []
    for row in rows:
        try:
            with Image.open(row.get("path", "")) as image:
                shown.append((image.convert("RGB").resize((224, 224)), row))
        except (OSError, UnidentifiedImageError, ValueError):
            continue
        if len(shown) == count:
            break
    if not shown:
        return None
    plt = _pyplot()
    lines = (len(shown) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 4.3 * lines + 0.5),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, row) in zip(axes.ravel(), shown, strict=False):
        ax.imshow(image)
        if row.get("references"):
            ax.set_title(textwrap.fill(textwrap.shorten(row["references"][0], 90), 40),
                         fontsize=7, color="0.45")
        ax.text(0.5, -0.03, textwrap.fill(textwrap.shorten(row["prediction"] or "(no words)",
                                                            100), 34),
                transform=ax.transAxes, ha="center", va="top", fontsize=9)
    fig.suptitle("validation images: the predicted caption under each, a human one above")
    # Room under each image for its caption (tight_layout does not see text outside axes).
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.55 / fig.get_figheight(),
                        bottom=0.75 / fig.get_figheight(), wspace=0.08, hspace=0.38)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def search_plot(rows: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """A scatter of the metric against every searched parameter, one panel each, as PNG."""
    keys = sorted({k for r in rows for k in r["params"]})
    if not rows or not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["params"][key], r["value"]) for r in rows if key in r["params"]]
        # Categories as text (a choice of null, e.g. no fine-tuning, as "None").
        xs = [str(x) if isinstance(x, str | bool) or x is None else x for x, _ in points]
        ax.scatter(xs, [y for _, y in points], alpha=0.7)
        ax.set_xlabel(key)
        if key == "train.learning_rate":
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelrotation=30)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(f"{metric} of every trial against each searched parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pareto_plot(rows: list[dict[str, Any]], objectives: dict[str, str], path: Path
                ) -> Path | None:
    """The first objective against each other one, a panel each: every trial a point labelled
    by its decoder, the Pareto front's trials filled and joined."""
    names = list(objectives)
    if not rows or len(names) < 2:
        return None
    plt = _pyplot()
    quality, costs = names[0], names[1:]
    fig, axes = plt.subplots(1, len(costs), figsize=(4.5 * len(costs), 3.6), squeeze=False)
    for ax, cost in zip(axes[0], costs, strict=True):
        front = sorted((r for r in rows if r["on_front"]), key=lambda r: r[cost])
        rest = [r for r in rows if not r["on_front"]]
        ax.scatter([r[cost] for r in rest], [r[quality] for r in rest], facecolors="none",
                   edgecolors="grey", label="dominated")
        ax.plot([r[cost] for r in front], [r[quality] for r in front], "o-", color="C1",
                label="Pareto front")
        for row in rows:
            ax.annotate(row["decoder"] or row["trial_id"], (row[cost], row[quality]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{cost} ({objectives[cost]} is better)")
        ax.set_ylabel(f"{quality} ({objectives[quality]} is better)")
        ax.legend(fontsize=7)
    fig.suptitle("every trial at its kept epoch; the front: no trial beats it on all at once")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
