"""A sweep across a two-node Ray cluster on one machine, tracked in a real MLflow server."""

from __future__ import annotations

import pytest
import ray

from captioning.config.loading import load_experiment
from captioning.tune.launcher import run_sweep
from captioning.tune.trainable import train_trial
from conftest import REPO, small_overrides

pytestmark = pytest.mark.slow


def test_a_sweep_runs_trials_on_both_nodes_of_a_cluster(two_node_cluster, sample_root, tmp_path,
                                                       mlflow_server):
    nodes = tmp_path / "nodes"
    nodes.mkdir()

    def recorded(drawn, base):
        import ray
        from ray import tune

        node = ray.get_runtime_context().get_node_id()
        (nodes / tune.get_context().get_trial_id()).write_text(node)
        train_trial(drawn, base)

    config = load_experiment(REPO / "experiments" / "quickstart.yaml", [
        "name=cluster", *small_overrides(sample_root), f"sweep.tracking_uri={mlflow_server}",
        f"sweep.storage_path={tmp_path / 'ray_results'}", "sweep.max_concurrent_trials=2"])
    assert len(ray.nodes()) == 2
    result = run_sweep(config, smoke_test=True, num_samples=2, trainable=recorded,
                       address=two_node_cluster.address, say=lambda _: None)
    assert result.trials == 2 and result.errors == 0
    used = {path.read_text() for path in nodes.iterdir()}
    assert used == {node["NodeID"] for node in ray.nodes()}
