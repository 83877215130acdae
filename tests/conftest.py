"""Shared fixtures: a local S3 server, a private 2-CPU Ray, small data sets.

Order matters: the S3 server's endpoint and the (planted) credentials go into the
environment before Ray starts, so every Ray worker inherits them, as on a real cluster.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import socket

import pytest

# Quieter Ray for tests; set before Ray is imported anywhere.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


_HANDED_OUT: set[int] = set()
_RAY_WORKER_PORTS_END = 20000  # Ray's default worker ports are 10002-19999


def _ephemeral_start() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range, never handed out twice.

    A port from ``bind(0)`` lies in the ephemeral range: between this call and the server's own
    bind, any outbound connection on the machine (a starting Ray node makes many) may take it,
    and ``ray start`` then fails on "address already in use".
    """
    rng, end = random.SystemRandom(), max(_ephemeral_start(), _RAY_WORKER_PORTS_END + 1000)
    for _ in range(1000):
        port = rng.randrange(_RAY_WORKER_PORTS_END, end)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API server on 127.0.0.1 with a planted secret key (for leak checks)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    secret = "aescore-planted-secret-" + secrets.token_hex(8)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "aescore-test-key",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"endpoint": env["AWS_ENDPOINT_URL"], "secret": secret, "env": env}
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_start_2_cpus(s3_server):
    """A private local Ray with 2 CPUs for the whole session (never joins another cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory):
    """Train (4 shards) and score (3 shards) sets of the synthetic mixed-type data."""
    from jobs.data.synthetic import make_mixed_table, write_shards

    root = tmp_path_factory.mktemp("data")
    train = make_mixed_table(4000, seed=1, anomaly_fraction=0.03)
    score = make_mixed_table(2000, seed=2, anomaly_fraction=0.05, start_id=10_000)
    write_shards(train, str(root / "train"), 4)
    write_shards(score, str(root / "score"), 3)
    return {"root": root, "train": str(root / "train"), "score": str(root / "score"),
            "train_table": train, "score_table": score}


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, local artefacts) on 127.0.0.1, stopped by its PID."""
    from tests import mlflow_server

    proc, uri = mlflow_server.start(tmp_path_factory.mktemp("mlflow"), free_port())
    yield uri
    mlflow_server.stop(proc)


@pytest.fixture
def bucket(s3_server, request):
    """A fresh S3 bucket on the local server, as an s3:// URI."""
    import s3fs

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"aescore-{slug}-{secrets.token_hex(3)}"
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def trained(ray_start_2_cpus, mixed_data, tmp_path_factory):
    """One real training run with two data-parallel workers (fractional CPUs so reads still run)."""
    from jobs import train
    from jobs.data.synthetic import LABEL, ROW_ID

    root = tmp_path_factory.mktemp("train")
    cfg = train.TrainConfig(data=mixed_data["train"], out=str(root / "model"), exclude_columns=[ROW_ID, LABEL],
                            num_workers=2, cpus_per_worker=0.5, epochs=12, hidden_dims=[32, 16], latent_dim=4,
                            batch_size=128, storage_path=str(root / "ray"))
    return train.run(cfg)
