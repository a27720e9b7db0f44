"""The Pareto front of a multi-objective sweep, and how its objectives are configured."""

from __future__ import annotations

import pytest

from captioning.config.schema import parse_config
from captioning.errors import ConfigError
from captioning.tune.pareto import dominates, on_front, table

MODES = ["max", "min"]  # val_cider up, decode_ms_per_caption down


def test_a_trial_better_on_one_objective_and_no_worse_on_the_other_dominates():
    assert dominates([0.5, 3.0], [0.4, 3.0], MODES)
    assert dominates([0.5, 2.0], [0.5, 3.0], MODES)
    assert not dominates([0.5, 3.0], [0.5, 3.0], MODES)  # equal: neither
    assert not dominates([0.6, 4.0], [0.5, 3.0], MODES)  # a trade-off: neither


def test_the_front_keeps_every_trade_off_and_drops_what_another_beats_on_all():
    points = [[0.50, 9.0],   # best quality
              [0.40, 2.0],   # fastest
              [0.45, 5.0],   # between: a trade-off
              [0.44, 6.0],   # beaten by the one above on both
              [0.40, 2.0]]   # equal to the fastest: both stay
    assert on_front(points, MODES) == [True, True, True, False, True]


def test_the_table_lists_the_front_and_marks_it():
    rows = [{"trial_id": "a1", "decoder": "merge", "epoch": 3, "val_cider": 0.5,
             "decode_ms_per_caption": 2.25, "on_front": True}]
    assert table(rows, ["val_cider", "decode_ms_per_caption"]).splitlines() == [
        "| trial | decoder | epoch | val_cider | decode_ms_per_caption | front |",
        "| --- | --- | --- | --- | --- | --- |",
        "| a1 | merge | 3 | 0.5 | 2.25 | yes |"]


def test_objectives_set_the_metric_the_sweep_ranks_by():
    sweep = parse_config({"sweep": {"objectives": {"val_bleu4": "max",
                                                   "param_count": "min"}}}).sweep
    assert sweep.metric == "val_bleu4" and list(sweep.objectives) == ["val_bleu4", "param_count"]


@pytest.mark.parametrize(("sweep", "message"), [
    ({"objectives": {"val_cider": "max"}}, "sweep.objectives: name two or more metrics"),
    ({"objectives": {"decode_ms_per_caption": "min", "val_cider": "max"}},
     r"sweep.objectives: its first metric \(decode_ms_per_caption\) is what the sweep ranks by, "
     "but sweep.metric is val_cider; put a score such as val_cider first"),
    ({"metric": "val_bleu4", "objectives": {"val_cider": "max", "param_count": "min"}},
     r"its first metric \(val_cider\) .* but sweep.metric is val_bleu4"),
    ({"objectives": {"val_cider": "max", "param_count": "max"}},
     "sweep.objectives: param_count is best at its min, not its max"),
    ({"objectives": {"val_cider": "max", "gpu_hours": "min"}}, "sweep.objectives.gpu_hours"),
])
def test_objectives_that_cannot_rank_a_sweep_are_refused_naming_the_key(sweep, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"sweep": sweep})
