"""Early stopping's one rule, for cross-entropy and SCST epochs alike: the best epoch by the
monitor (lower losses, higher scores), the earlier one on a tie, and patience counted in
epochs since it."""

from __future__ import annotations

import math

import pytest

from captioning.training.early_stopping import BestEpoch


def epochs(monitor: str, *values: float) -> list[dict[str, float]]:
    return [{"epoch": i + 1, monitor: value} for i, value in enumerate(values)]


def test_the_first_epoch_is_always_best_so_a_run_keeps_a_model():
    stopping = BestEpoch("val_cider", patience=2)
    assert stopping.update({"epoch": 1, "val_cider": 0.0})
    assert stopping.best["epoch"] == 1 and not stopping.patience_ran_out


@pytest.mark.parametrize(("monitor", "values", "best"), [
    ("val_loss", (3.0, 2.0, 2.5), 2),  # a loss is best at its minimum
    ("val_cider", (0.1, 0.3, 0.2), 2),  # a score at its maximum
])
def test_an_improvement_by_the_monitors_mode_becomes_the_best(monitor, values, best):
    stopping = BestEpoch(monitor, patience=5)
    assert [stopping.update(m) for m in epochs(monitor, *values)] == [True, True, False]
    assert stopping.mode == ("min" if monitor == "val_loss" else "max")
    assert stopping.best["epoch"] == best
    assert stopping.waited == 1


@pytest.mark.parametrize("monitor", ["val_loss", "val_cider"])
def test_on_a_tie_the_earlier_epoch_stays_best_and_patience_runs_on(monitor):
    stopping = BestEpoch(monitor, patience=2)
    assert [stopping.update(m) for m in epochs(monitor, 0.5, 0.5)] == [True, False]
    assert stopping.best["epoch"] == 1 and stopping.waited == 1


def test_patience_runs_out_after_that_many_epochs_without_a_better_one():
    stopping = BestEpoch("val_loss", patience=2)
    seen = []
    for metrics in epochs("val_loss", 1.0, 1.5, 0.9, 1.1, 1.2):
        stopping.update(metrics)
        seen.append(stopping.patience_ran_out)
    assert seen == [False, False, False, False, True]
    assert stopping.best["epoch"] == 3


def test_a_nan_monitor_is_never_better_and_counts_towards_patience():
    stopping = BestEpoch("val_cider", patience=1, history=epochs("val_cider", 0.2))
    assert not stopping.update({"epoch": 2, "val_cider": math.nan})
    assert stopping.best["epoch"] == 1 and stopping.patience_ran_out


def test_a_number_beats_a_nan_best_and_a_missing_monitor_counts_as_nan():
    stopping = BestEpoch("val_loss", patience=3, history=epochs("val_loss", math.nan))
    assert not stopping.update({"epoch": 2})
    assert stopping.update({"epoch": 3, "val_loss": 7.0})
    assert stopping.best["epoch"] == 3


def test_a_resumed_history_gives_the_best_and_restart_starts_patience_afresh():
    stopping = BestEpoch("val_cider", patience=1, history=epochs("val_cider", 0.5, 0.1))
    assert stopping.best["epoch"] == 1 and stopping.patience_ran_out
    stopping.restart()
    assert not stopping.patience_ran_out
    assert not stopping.update({"epoch": 3, "val_cider": 0.4})  # still below epoch 1's
    assert stopping.patience_ran_out
