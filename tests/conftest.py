"""Shared fixtures: a private 2-CPU Ray (like Ray's own ``ray_start_4_cpus``) and small data."""

from __future__ import annotations

import os

import pytest

# Quieter, deterministic Ray for tests; set before Ray is imported anywhere.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_start_2_cpus():
    """A private local Ray with 2 CPUs for the whole session (never joins another cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory):
    """Train (4 shards) and score (3 shards) sets of the synthetic mixed-type data."""
    from jobs.synthetic import make_mixed_table, write_shards

    root = tmp_path_factory.mktemp("data")
    train = make_mixed_table(4000, seed=1, anomaly_fraction=0.03)
    score = make_mixed_table(2000, seed=2, anomaly_fraction=0.05, start_id=10_000)
    write_shards(train, str(root / "train"), 4)
    write_shards(score, str(root / "score"), 3)
    return {"root": root, "train": str(root / "train"), "score": str(root / "score"),
            "train_table": train, "score_table": score}
