"""Faults: a killed training worker, flaky and failing object storage."""

import os
import threading
import time

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from jobs import score, train
from aemodel.commit import committed_run
from jobs.data.synthetic import LABEL, ROW_ID, write_shards
from tests.s3_fault_proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


EPOCHS = 150
"""Enough that training is still in its epochs when the first checkpoint (reported every 2 s)
appears and the worker is killed: with 12, a fast machine finished first (seen in CI), and
with 30 a faster one did (all 30 epochs inside the first 2 s), leaving nothing to resume.
Patience is as long, so early stopping never ends the run first."""


def _cfg(mixed_data, tmp_path, name, **kw):
    return train.TrainConfig(data=mixed_data["train"], out=str(tmp_path / name), exclude_columns=[ROW_ID, LABEL],
                             epochs=EPOCHS, patience=EPOCHS, hidden_dims=[32, 16], latent_dim=4, batch_size=64,
                             cpus_per_worker=0.5, storage_path=str(tmp_path / "ray"), **kw)


def _own_ray_processes(*markers: str) -> list[psutil.Process]:
    """Processes of this test session's own Ray (descendants of this process) whose command line
    holds every marker; never another Ray's on the same machine."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if all(m in cmd for m in markers) and os.getpid() in {parent.pid for parent in p.parents()}:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _train_workers() -> list[psutil.Process]:
    return _own_ray_processes("RayTrainWorker")


def test_killed_training_worker_resumes_from_last_checkpoint(ray_start_2_cpus, mixed_data, tmp_path):
    results, errors = [], []

    def target():
        try:
            results.append(train.run(_cfg(mixed_data, tmp_path, "killed", max_failures=2)))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 300
    # Wait until the controller has registered a checkpoint (it then snapshots its state),
    # so there is something to resume from.
    while not list((tmp_path / "ray").glob("*/checkpoint_manager_snapshot.json")):
        assert thread.is_alive() and time.monotonic() < deadline, errors or "no checkpoint appeared"
        time.sleep(0.05)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    victims[0].kill()
    thread.join(timeout=600)
    assert not errors, errors
    killed = results[0]

    epochs = [h["epoch"] for h in killed.history]
    assert epochs == list(range(EPOCHS)), "every epoch once, resumed rather than restarted"
    assert max(h["attempt"] for h in killed.history) >= 1, "training should have been resumed"
    assert killed.history[0]["attempt"] == 0

    clean = train.run(_cfg(mixed_data, tmp_path, "clean"))
    best_killed = min(h["val_loss"] for h in killed.history)
    best_clean = min(h["val_loss"] for h in clean.history)
    assert best_killed == pytest.approx(best_clean, rel=0.35)


def test_rerunning_a_finished_training_run_reuses_it(trained, mixed_data):
    from dataclasses import replace

    from aemodel import load_artifact
    from jobs.training.config import TrainConfig

    art = load_artifact(trained.model_uri)
    cfg = TrainConfig(**{k: v for k, v in art.train_config.items()})
    again = train.run(cfg)
    assert again.reused and again.version == trained.version
    with pytest.raises(Exception, match="already at .*pass --overwrite"):
        train.run(replace(cfg, latent_dim=3))


def test_flaky_storage_is_retried_and_output_is_correct(trained, mixed_data, bucket, tmp_path, s3_server):
    write_shards(mixed_data["score_table"], f"{bucket}/in", 3)
    with FaultProxy(s3_server["endpoint"], fail_every=4) as proxy:
        result = score.run(score.ScoreConfig(model=trained.model_uri, data=f"{bucket}/in", out=str(tmp_path / "o"),
                                             id_columns=[ROW_ID], storage_options={"endpoint_url": proxy.url}))
        assert proxy.failed > 0
    clean = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "c"),
                                        id_columns=[ROW_ID]))
    flaky_rows = pq.read_table(f"{committed_run(str(tmp_path / 'o'))}/rows").sort_by(ROW_ID)
    clean_rows = pq.read_table(f"{committed_run(str(tmp_path / 'c'))}/rows").sort_by(ROW_ID)
    assert flaky_rows.equals(clean_rows)
    assert result.summary["quantiles"] == clean.summary["quantiles"]
    assert result.summary["row_count"] == mixed_data["score_table"].num_rows


def test_permanent_storage_error_fails_cleanly(trained, mixed_data, bucket, tmp_path, s3_server):
    from jobs.runtime.errors import describe

    write_shards(mixed_data["score_table"], f"{bucket}/in", 1)
    secret = s3_server["secret"]
    with FaultProxy(s3_server["endpoint"], fail_every=1) as proxy:
        with pytest.raises(Exception) as err:
            score.run(score.ScoreConfig(model=trained.model_uri, data=f"{bucket}/in", out=str(tmp_path / "o"),
                                        storage_options={"endpoint_url": proxy.url, "key": "aescore-test-key",
                                                         "secret": secret}))
    assert describe(err.value).startswith(f"cannot list {bucket}/in")
    assert secret not in describe(err.value) and secret not in repr(err.value)  # no credential in errors
    assert not (tmp_path / "o" / "_SUCCESS").exists() and not (tmp_path / "o" / "runs").exists()


def _scorer_actors() -> list[psutil.Process]:
    return _own_ray_processes("MapWorker", "BlockScorer")


def test_dead_scorer_actor_is_restarted_without_duplicates(trained, tmp_path):
    from jobs.data.synthetic import make_mixed_table

    table = make_mixed_table(30_000, seed=9, start_id=200_000)
    write_shards(table, str(tmp_path / "in"), 10)
    cfg = dict(model=trained.model_uri, data=str(tmp_path / "in"), id_columns=[ROW_ID], compute="actors",
               concurrency=1, cpus_per_worker=0.5, batch_size=300)
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            actors = _scorer_actors()
            if actors:
                time.sleep(1.0)  # let it score some batches first
                for p in _scorer_actors():
                    p.kill()
                    killed.append(p.pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    result = score.run(score.ScoreConfig(out=str(tmp_path / "o"), **cfg))
    thread.join()
    assert killed, "no scorer actor was found to kill"
    rows = pq.read_table(f"{committed_run(str(tmp_path / 'o'))}/rows")
    ids = rows[ROW_ID].to_numpy()
    assert len(ids) == len(np.unique(ids)) == table.num_rows
    clean = score.run(score.ScoreConfig(out=str(tmp_path / "c"), **cfg))
    assert result.summary["mean"] == clean.summary["mean"]
    assert result.summary["quantiles"] == clean.summary["quantiles"]
