"""End to end on a private 2-CPU Ray: Ray Train fits the model, Ray Data scores Parquet shards."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aemodel import ArtifactError, RowScorer, SchemaError, auroc, load_artifact
from aemodel.marginal import stored_counts
from jobs import score
from aemodel.commit import committed_run
from jobs.data.synthetic import LABEL, ROW_ID

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def scored(trained, mixed_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scores") / "run")
    cfg = score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=out, id_columns=[ROW_ID, LABEL],
                            batch_size=500)
    return score.run(cfg), out


def _rows(out):
    return pq.read_table(f"{committed_run(str(out))}/rows")


def test_validation_loss_falls_and_split_covers_all_rows(trained, mixed_data):
    h = trained.history
    assert len(h) >= 3
    assert min(e["val_loss"] for e in h) < 0.6 * h[0]["val_loss"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    # Ray Train's equal shards drop fewer than num_workers training rows; validation is exact.
    assert 0 <= mixed_data["train_table"].num_rows - (trained.train_rows + trained.val_rows) < 2
    assert 0.15 < trained.val_rows / mixed_data["train_table"].num_rows < 0.25  # val_fraction 0.2


def test_streaming_path_without_the_shard_cache_trains_on_the_same_rows(ray_start_2_cpus, mixed_data, trained,
                                                                         tmp_path):
    """--cache-shard-mb 0 streams every epoch from Ray Data (the path for shards too big to hold).

    It also fits the latent term as a mixture, whose codes both workers gather from each other.
    """
    from jobs import train

    cfg = train.TrainConfig(data=mixed_data["train"], out=str(tmp_path / "model"), exclude_columns=[ROW_ID, LABEL],
                            num_workers=2, cpus_per_worker=0.5, epochs=6, hidden_dims=[32, 16], latent_dim=4,
                            batch_size=128, storage_path=str(tmp_path / "ray"), cache_shard_mb=0,
                            latent_components=4)
    streamed = train.run(cfg)
    h = streamed.history
    assert min(e["val_loss"] for e in h) < 0.8 * h[0]["val_loss"]
    assert (streamed.train_rows, streamed.val_rows) == (trained.train_rows, trained.val_rows)
    latent = load_artifact(streamed.model_uri).reference["latent"]
    assert latent["rows"] == streamed.train_rows  # every worker's codes (fewer than the sample cap)
    assert latent["components"] in (1, 2, 4) and set(latent["bic"]) <= {"1", "2", "4"}
    assert 0.3 < latent["validation_mean_distance"] < 3  # unseen normal rows: about as typical as training ones
    # The marginal term counts every training row once, whichever worker read it (the counts are summed).
    marginal = load_artifact(streamed.model_uri).reference["marginal"]
    counts = stored_counts(marginal)
    assert counts[0].sum() <= streamed.train_rows == max(c.sum() for c in counts)
    assert 0.3 < marginal["validation_mean_distance"] < 3


def test_artefact_round_trips_with_reference_and_threshold(trained):
    art = load_artifact(trained.model_uri)
    storage = os.path.join(os.path.dirname(trained.model_uri.removeprefix("file://")), "ray")
    # The Ray Train run's checkpoints served only a resume: deleted once the artefact is saved.
    assert os.path.isdir(storage) and not [n for n in os.listdir(storage) if n.startswith("aescore-train-")]
    assert art.version == trained.version
    assert art.threshold["method"] == "validation_quantile" and art.threshold_value > 0
    assert art.reference["count"] == trained.val_rows
    ref = art.reference  # the threshold is the validation order statistic with <= 1% of rows above it
    assert ref["above_threshold"] <= 0.01 * ref["count"] and ref["quantiles"]["p99"] <= art.threshold_value * 1.003
    assert art.threshold["ci"][0] <= art.threshold_value <= art.threshold["ci"][1] <= ref["max"] * 1.001
    assert [h["epoch"] for h in art.history] == list(range(len(art.history)))
    kinds = [s.kind for s in art.preprocessor.specs]
    assert kinds.count("numeric") == 8 and kinds.count("binary") == 3 and kinds.count("categorical") == 2
    assert art.reference["marginal"]["weight"] == 0.5 and len(stored_counts(art.reference["marginal"])) == 13


def test_scoring_output_is_complete_and_summary_matches_recomputation(scored, mixed_data):
    result, out = scored
    rows = _rows(out)
    source = mixed_data["score_table"]
    assert rows.num_rows == source.num_rows
    ids = rows[ROW_ID].to_numpy()
    assert len(np.unique(ids)) == len(ids) and set(ids) == set(source[ROW_ID].to_numpy())
    assert set(rows.column_names) == {ROW_ID, LABEL, "anomaly_score", "score_percentile", "recon_error", "is_anomaly",
                                      "missing_cells", "unseen_cells",
                                      "top_features", "seen_in_training"}
    from aemodel.scoring import OUTPUT_COLUMNS  # the names an id column may not take: every one written here

    assert set(rows.column_names) - {ROW_ID, LABEL} == set(OUTPUT_COLUMNS)
    summary = json.loads(open(f"{committed_run(out)}/summary.json").read())
    assert summary == json.loads(json.dumps(result.summary))
    err = rows["anomaly_score"].to_numpy().astype(np.float64)  # the summary describes the thresholded score
    assert summary["row_count"] == rows.num_rows
    assert np.all(err >= rows["recon_error"].to_numpy() - 1e-6)  # recon_error plus a non-negative latent term
    assert summary["mean"] == pytest.approx(err.mean(), rel=1e-6)
    assert summary["max"] == pytest.approx(err.max(), rel=1e-6)
    assert summary["anomaly_count"] == int(pc.sum(rows["is_anomaly"]).as_py())
    np.testing.assert_array_equal(rows["is_anomaly"].to_numpy(), err > summary["threshold"])
    assert summary["format_version"] == 4 and summary["score"] == "anomaly_score"
    assert not {"count", "above_threshold", "above_threshold_fraction", "unseen_category_cells"} & set(summary)
    top = summary["top_rows"]  # taken while writing, block by block: the same as sorting the written rows
    by_id = dict(zip(ids.tolist(), err.tolist()))
    scores = [r["anomaly_score"] for r in top]
    assert scores == sorted(scores, reverse=True) and scores == pytest.approx(sorted(err)[::-1][:len(top)], rel=1e-6)
    assert all(by_id[r[ROW_ID]] == pytest.approx(r["anomaly_score"], rel=1e-6) for r in top)
    assert len(top) == 20 and top[0]["anomaly_score"] == pytest.approx(err.max(), rel=1e-6) and top[0]["top_features"]
    assert sum(summary["columns"]["top1_flagged_rows"].values()) == summary["anomaly_count"]
    for f in sorted(__import__("pathlib").Path(committed_run(out), "rows").glob("*.parquet")):
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(f).metadata.items() if k.startswith(b"aescore.")}
        assert meta == {"aescore.format_version": "4", "aescore.version": meta["aescore.version"],
                        "aescore.score": "anomaly_score", "aescore.run_id": summary["run_id"],
                        "aescore.model_uri": summary["model"]["uri"],
                        "aescore.model_version": summary["model"]["version"],
                        "aescore.threshold": json.dumps(summary["threshold"])}, f
    pct = rows["score_percentile"].to_numpy()
    assert np.all((pct >= 0) & (pct <= 100))
    assert np.all(pct[err > summary["threshold"]] >= 98.5)  # above the validation p99 threshold
    order = np.argsort(err)
    assert np.all(np.diff(pct[order]) >= -1e-4)  # the same ranking as anomaly_score
    assert summary["missing_cells"] == int(pc.sum(rows["missing_cells"]).as_py()) > 0
    assert summary["quantiles"]["p50"] == pytest.approx(np.quantile(err, 0.5), rel=0.02)
    assert (tmp := __import__("pathlib").Path(out) / "_SUCCESS").exists(), tmp


def test_injected_anomalies_score_higher(scored):
    rows = _rows(scored[1])
    label = rows[LABEL].to_numpy()
    for col in ("anomaly_score", "recon_error"):
        err = rows[col].to_numpy()
        assert err[label].mean() > 2 * err[~label].mean(), col
        assert auroc(err, label) > 0.9, col


def test_reloaded_model_scores_identically(scored, trained, mixed_data):
    """A model trained with 2 workers, reloaded from its artefact, reproduces the job's scores."""
    rows = _rows(scored[1]).sort_by(ROW_ID)
    local = RowScorer(load_artifact(trained.model_uri)).score_table(mixed_data["score_table"])
    order = np.argsort(mixed_data["score_table"][ROW_ID].to_numpy())
    np.testing.assert_allclose(rows["recon_error"].to_numpy(), local["recon_error"][order].astype(np.float32),
                               rtol=1e-5, atol=1e-7)


def test_rerun_replaces_output_and_actor_path_agrees(scored, trained, mixed_data):
    _, out = scored
    before = _rows(out).sort_by(ROW_ID)
    cfg = score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=out, id_columns=[ROW_ID],
                            compute="actors", concurrency=1, cpus_per_worker=0.5, batch_size=700)
    score.run(cfg)
    after = _rows(out).sort_by(ROW_ID)
    assert after.num_rows == before.num_rows  # replaced, not appended
    np.testing.assert_array_equal(after["recon_error"].to_numpy(), before["recon_error"].to_numpy())


def test_without_id_columns_rows_get_a_unique_row_hash(trained, mixed_data, tmp_path):
    score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o")))
    rows = _rows(str(tmp_path / "o"))
    assert rows.column_names[0] == "row_hash"
    assert len(np.unique(rows["row_hash"].to_numpy())) == rows.num_rows == mixed_data["score_table"].num_rows


def test_model_loader_is_injectable(trained, mixed_data, tmp_path):
    def strict_loader(uri, storage_options):
        art = load_artifact(uri, storage_options)
        art.threshold = {**art.threshold, "value": 0.0}
        return art

    result = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o"),
                                         id_columns=[ROW_ID]), loader=strict_loader)
    assert result.summary["anomaly_count"] == mixed_data["score_table"].num_rows
    assert pc.all(_rows(str(tmp_path / "o"))["is_anomaly"]).as_py()


def test_bad_scoring_input_names_the_problem_and_commits_nothing(trained, mixed_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(mixed_data["score_table"].slice(0, 50), bad / "good.parquet")
    pq.write_table(mixed_data["score_table"].slice(50, 50).drop_columns(["num_3"]), bad / "broken.parquet")
    out = tmp_path / "o"
    with pytest.raises(SchemaError, match=r"broken\.parquet: missing feature column\(s\) \['num_3'\]"):
        score.run(score.ScoreConfig(model=trained.model_uri, data=str(bad), out=str(out)))
    assert not (out / "_SUCCESS").exists()
    with pytest.raises(ArtifactError):
        score.run(score.ScoreConfig(model=str(tmp_path / "nope"), data=str(bad), out=str(out)))
    assert not (out / "_SUCCESS").exists()


def test_empty_file_is_skipped_and_reported(trained, mixed_data, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    t = mixed_data["score_table"]
    pq.write_table(t.slice(0, 300), d / "a.parquet")
    pq.write_table(t.slice(0, 0), d / "empty.parquet")
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=str(d), out=str(tmp_path / "o"),
                                         id_columns=[ROW_ID]))
    assert result.summary["row_count"] == 300
    assert [p.rsplit("/", 1)[-1] for p in result.summary["input"]["skipped_empty_files"]] == ["empty.parquet"]


def test_killed_scoring_run_commits_nothing_and_the_rerun_is_complete(trained, mixed_data, tmp_path):
    """SIGKILL the scoring driver after it staged rows: no _SUCCESS; the rerun commits each id once."""
    import ray

    from jobs.data.synthetic import make_mixed_table, write_shards

    data = tmp_path / "in"
    table = make_mixed_table(20_000, seed=5, start_id=100_000)
    write_shards(table, str(data), 8)
    out = tmp_path / "out"
    args = ["--model", trained.model_uri, "--data", str(data), "--out", str(out), "--id-columns", ROW_ID,
            "--batch-size", "500"]
    gcs = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "jobs.score", *args, "--ray-address", gcs],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 240
    while not list(out.glob("runs/*/rows/*.parquet")):
        assert proc.poll() is None, "the scoring run ended before it could be killed"
        assert time.monotonic() < deadline, "no staged rows appeared"
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    assert not (out / "_SUCCESS").exists() and committed_run(str(out)) is None

    result = score.run(score.ScoreConfig(model=trained.model_uri, data=str(data), out=str(out), id_columns=[ROW_ID],
                                         batch_size=500))
    rows = _rows(str(out))
    ids = rows[ROW_ID].to_numpy()
    assert len(ids) == len(np.unique(ids)) == table.num_rows
    assert set(ids) == set(table[ROW_ID].to_numpy())
    assert [p.name for p in (out / "runs").iterdir()] == [result.run_uri.rsplit("/", 1)[-1]]  # the killed run's folder is gone
    assert result.summary["row_count"] == table.num_rows
    uninterrupted = score.run(score.ScoreConfig(model=trained.model_uri, data=str(data), out=str(tmp_path / "clean"),
                                                id_columns=[ROW_ID], batch_size=500))
    volatile = {"wall_seconds", "timings", "run_uri"}
    assert {k: v for k, v in result.summary.items() if k not in volatile} == \
        {k: v for k, v in uninterrupted.summary.items() if k not in volatile}


def test_rerun_with_same_run_id_reuses_the_committed_output(trained, mixed_data, tmp_path):
    cfg = score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o"),
                            id_columns=[ROW_ID])
    first = score.run(cfg)
    again = score.run(cfg)
    assert not first.reused and again.reused
    assert again.summary == json.loads(json.dumps(first.summary))
    forced = score.run(score.ScoreConfig(**{**cfg.__dict__, "force": True}))
    assert not forced.reused and forced.summary["row_count"] == first.summary["row_count"]
    assert _rows(str(tmp_path / "o")).num_rows == mixed_data["score_table"].num_rows
    # Options that change what is written make a new run; precision on CPU is fp32 (what ran).
    cpu_bf16 = score.run(score.ScoreConfig(**{**cfg.__dict__, "precision": "bf16"}))
    assert cpu_bf16.reused and cpu_bf16.manifest["run_id"] == first.manifest["run_id"]
    wider = score.run(score.ScoreConfig(**{**cfg.__dict__, "top_k": 5, "column_errors": True}))
    assert not wider.reused and wider.manifest["run_id"] != first.manifest["run_id"]
    rows = _rows(str(tmp_path / "o"))
    assert max(len(v) for v in rows.column("top_features").to_pylist()) == 5
    assert any(name.startswith("err_") for name in rows.column_names)


def test_an_explicit_run_id_is_reused_only_for_the_same_model_inputs_and_options(trained, mixed_data, tmp_path,
                                                                                  capsys):
    """--run-id names a run; other data under the same name is scored anew, never answered with the old rows."""
    cfg = score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o"),
                            id_columns=[ROW_ID], run_id="nightly")
    first = score.run(cfg)
    assert score.run(cfg).reused
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(mixed_data["score_table"].slice(0, 50), other / "part.parquet")
    capsys.readouterr()
    second = score.run(score.ScoreConfig(**{**cfg.__dict__, "data": str(other)}))
    assert not second.reused and second.summary["row_count"] == 50 != first.summary["row_count"]
    assert "scored with another model, other input files or other options; scoring anew" in capsys.readouterr().out
    assert second.manifest["run_id"] == "nightly" and second.manifest["content_id"] != first.manifest["content_id"]
    assert _rows(str(tmp_path / "o")).num_rows == 50


@pytest.mark.parametrize("concurrency,cpus", [(None, 1.0), (None, 2.0)])
def test_actor_pools_that_hold_every_cpu_score(trained, mixed_data, tmp_path, monkeypatch, concurrency, cpus):
    """2 actors x 1 CPU, or one actor of 2 CPUs, on a 2-CPU Ray: the actors read their own blocks (the read is
    fused into them even at 2 CPUs each), so no read task waits for a CPU the pool holds."""
    from jobs.data import ray_read
    from jobs.scoring.ray_path import actor_pool

    monkeypatch.setattr(ray_read, "MIN_READ_TASK_BYTES", 1)  # a read task per file of the 3: room for 2 actors
    cfg = score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o"),
                            id_columns=[ROW_ID], compute="actors", concurrency=concurrency, cpus_per_worker=cpus)
    result = score.run(cfg)
    assert result.summary["row_count"] == mixed_data["score_table"].num_rows
    assert len(result.manifest["outputs"]) == 3  # a row file per read task
    pool = actor_pool(cfg, read_tasks=3)  # on the Ray the run joined
    assert pool.min_size == pool.max_size == 2 // int(cpus)
    assert actor_pool(cfg, read_tasks=1).max_size == 1  # never more actors than blocks


def test_shard_cache_yields_every_row_once_per_epoch_in_a_new_order_and_skips_empty_shards():
    import torch

    from jobs.training.loop import epoch_batches, load_shard
    from tests.test_diagnostics_leakage import _BatchSource

    n = 1000
    enc = {"x_num": np.arange(n, dtype=np.float32)[:, None], "x_bin": np.zeros((n, 1), np.float32),
           "x_cat": np.zeros((n, 1), np.int64), "observed": np.ones((n, 3), np.float32)}
    cached = load_shard(_BatchSource(enc, rows_per_batch=300), torch.device("cpu"))
    orders = []
    for seed in (0, 1):
        batches = list(epoch_batches(None, cached, 128, torch.device("cpu"), shuffle_seed=seed))
        assert [len(b["x_num"]) for b in batches] == [128] * 7 + [104]
        order = torch.cat([b["x_num"][:, 0] for b in batches])
        assert sorted(order.tolist()) == list(range(n))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])
    empty = {k: v[:0] for k, v in enc.items()}
    assert load_shard(_BatchSource(empty, rows_per_batch=300), torch.device("cpu")) is None
