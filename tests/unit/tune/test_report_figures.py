"""The sweep report's figures, drawn from small Optuna studies (no MLflow, no training): a
loguniform key's axis marked with its values on a log scale, the parallel coordinates as wide
as their keys need, and no two texts of any figure the report writes on top of each other."""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from PIL import Image

from captioning.config.loading import read_yaml
from captioning.config.shipped import builtin_path
from captioning.tune import report
from captioning.tune.search_space import Param, SearchSpace

optuna = pytest.importorskip("optuna")


def study_of_space(name: str, trials: int) -> Any:
    """`trials` random draws of the shipped search space `name` (its `when` keys drawn only
    where their condition holds), each scored by a made-up metric."""
    raw = read_yaml(builtin_path(name, "search_spaces"), "search space file")
    space = SearchSpace({key: Param.model_validate(spec) for key, spec in raw.items()}, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: len(str(sorted(space.suggest(trial).items()))) % 17 / 17,
                   n_trials=trials)
    return study


def texts_of(figure: Any) -> list[Any]:
    figure.canvas.draw()
    return [t for t in figure.findobj(matplotlib.text.Text)
            if t.get_visible() and t.get_text().strip()]


def overlapping(figure: Any) -> list[tuple[str, str]]:
    """The pairs of texts in `figure` whose boxes, as drawn, overlap."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts_of(figure)]
    return [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2)
            if box_a.overlaps(box_b)]


def marks_of(figure: Any, key_part: str) -> dict[str, float]:
    """The marks (text: height, 0 to 1) of the axis whose label holds `key_part`."""
    ax = figure.axes[0]
    labels = sorted((t.get_position()[0], t.get_text()) for t in ax.texts
                    if t.get_va() == "top")
    x = next(x for x, text in labels if key_part in text.replace("\n", ""))
    after = min((other for other, _ in labels if other > x), default=math.inf)
    return {t.get_text(): t.get_position()[1] for t in ax.texts
            if t.get_ha() == "left" and x < t.get_position()[0] < after}


def learning_rate_study(rates: list[float]) -> Any:
    study = optuna.create_study(direction="maximize")
    for index, rate in enumerate(rates):
        study.add_trial(optuna.trial.create_trial(
            params={"train.learning_rate": rate, "model.dropout": 0.1 + 0.1 * index},
            distributions={"train.learning_rate": optuna.distributions.FloatDistribution(
                1e-4, 1e-2, log=True),
                "model.dropout": optuna.distributions.FloatDistribution(0.1, 0.6)},
            value=0.2 * index))
    return study


def test_a_loguniform_learning_rate_axis_is_marked_with_its_values_on_a_log_scale():
    rates = [1e-4, 1e-3, 1e-2, 3e-3]
    figure = report.parallel_coordinates(learning_rate_study(rates), "val_cider",
                                         ["train.learning_rate", "model.dropout"])
    assert marks_of(figure, "train.learning_rate") == pytest.approx(
        {"0.0001": 0.0, "0.001": 0.5, "0.01": 1.0})
    assert "(log scale)" in next(t.get_text() for t in figure.axes[0].texts
                                 if "learning_rate" in t.get_text())
    dropout = marks_of(figure, "model.dropout")  # a uniform key: a linear axis, its bounds
    assert {"0.1", "0.6"} < set(dropout)
    assert dropout == pytest.approx({text: (float(text) - 0.1) / 0.5 for text in dropout})
    # Each trial's line crosses the learning rate's axis where its rate is on a log scale.
    lines = [line.get_ydata() for line in figure.axes[0].lines if len(line.get_ydata()) == 3]
    crossing = sorted(ys[1] for ys in lines)
    assert crossing == pytest.approx(sorted(
        (math.log10(rate) + 4) / 2 for rate in rates))
    assert not overlapping(figure)


def test_the_parallel_coordinates_of_the_default_space_widen_with_its_keys_and_no_label_overlaps():
    small, large = study_of_space("quickstart", 8), study_of_space("default", 30)
    keys = {name: sorted({k for t in study.trials for k in t.params})
            for name, study in (("small", small), ("large", large))}
    assert len(keys["large"]) > 20  # model.attention.doubly_stochastic and the like
    figures = {"small": report.parallel_coordinates(small, "val_cider", keys["small"]),
               "large": report.parallel_coordinates(large, "val_cider", keys["large"])}
    for name, figure in figures.items():
        assert overlapping(figure) == [], name
        assert figure.get_size_inches()[0] >= 0.9 * (len(keys[name]) + 1)
    assert figures["large"].get_size_inches()[0] > 2.5 * figures["small"].get_size_inches()[0]
    # A key a trial did not draw is marked under its axis; long keys wrap at their dots.
    assert marks_of(figures["large"], "model.attention.doubly_stochastic")["not drawn"] < 0
    assert any(t.get_text() == "model.attention.\ndoubly_stochastic"
               for t in figures["large"].axes[0].texts)


def test_no_figure_the_report_writes_has_overlapping_texts(tmp_path, monkeypatch):
    study = study_of_space("default", 30)
    weights = report.importances(study)
    assert weights
    closed: dict[str, Any] = {}
    real_close = matplotlib.pyplot.close

    def keep(figure: Any) -> None:
        closed[f"figure {len(closed)}"] = figure
        real_close(figure)

    monkeypatch.setattr(matplotlib.pyplot, "close", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = report._figures(study, tmp_path, "val_cider", weights)
    assert sorted(made) == ["history.png", "importances.png", "parallel_coordinates.png",
                            "report.html"]
    assert len(closed) == 3
    for name, figure in closed.items():
        assert overlapping(figure) == [], name
    keys = len({k for t in study.trials for k in t.params})
    width, _ = Image.open(Path(made["parallel_coordinates.png"])).size
    assert width >= 90 * 0.9 * (keys + 1)  # 90 dpi, an axis a key and one for the metric
    # Optuna's ggplot style stays in its own figures.
    assert matplotlib.rcParams["axes.facecolor"] == "white"
