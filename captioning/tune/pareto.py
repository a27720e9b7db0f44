"""The Pareto front of a multi-objective sweep (`sweep.objectives`): the trials no other trial
beats on every objective at once, read at each trial's kept epoch (its best by sweep.metric),
as a table and a figure for the sweep's parent run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from captioning.tune.trainable import kept_row


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    signs = [1 if mode == "max" else -1 for mode in modes]
    at_least = all(s * x >= s * y for x, y, s in zip(a, b, signs, strict=True))
    better = any(s * x > s * y for x, y, s in zip(a, b, signs, strict=True))
    return at_least and better


def on_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """For each point, whether no other point dominates it (equal points are both on it)."""
    return [not any(dominates(other, point, modes) for other in points) for point in points]


def front_rows(results: Any, objectives: Mapping[str, str], runs: Mapping[str, str],
               ) -> list[dict[str, Any]]:
    """One row per trial that reported every objective: its trial and run ids, decoder,
    encoder, kept epoch, the objectives' values there, and whether it is on the front; the
    front first, then by the first objective."""
    metric, mode = next(iter(objectives.items()))
    rows = []
    for result in results:
        row = kept_row(result.metrics_dataframe, metric, mode)
        if row is None:
            continue
        values = {name: float(row[name]) for name in objectives if name in row.index}
        if len(values) < len(objectives) or any(v != v for v in values.values()):  # NaN
            continue
        trial_id = str(row["trial_id"])
        rows.append({"trial_id": trial_id, "run_id": runs.get(trial_id, ""),
                     "decoder": str(result.config.get("model.decoder", "")),
                     "encoder": str(result.config.get("encoder.name", "")),
                     "epoch": int(row["epoch"]), **values})
    flags = on_front([[r[name] for name in objectives] for r in rows], list(objectives.values()))
    for row, flag in zip(rows, flags, strict=True):
        row["on_front"] = flag
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (not r["on_front"], sign * r[metric]))


def table(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> str:
    """The rows as a Markdown table, for the parent run and the command's output."""
    head = ["trial", "decoder", "epoch", *objectives, "front"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["trial_id"], row["decoder"] or "-", str(row["epoch"]),
                 *(f"{row[name]:.4g}" for name in objectives),
                 "yes" if row["on_front"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
