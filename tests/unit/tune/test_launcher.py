"""What the sweep launcher tells a user before Ray starts."""

from __future__ import annotations

from captioning.config.schema import SweepConfig
from captioning.tune.launcher import random_search_note


def test_a_sweep_no_longer_than_tpes_random_start_is_called_a_random_search():
    note = random_search_note(SweepConfig(num_samples=8))
    assert note.startswith("sweep.startup_trials (10) >= sweep.num_samples (8): ")
    assert "every trial at random" in note
