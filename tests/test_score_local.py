"""The single-process scoring path (``--compute local``) against the Ray Data path: same files' rows, same summary."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aemodel import load_artifact
from aemodel.scoring import rows_per_call
from jobs.runtime.errors import InputError
from jobs import score
from aemodel.commit import committed_run
from jobs.data.chunks import synthetic_row_hashes
from jobs.data.synthetic import LABEL, ROW_ID


def _run(trained, data, out, **kw):
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=data, out=str(out), **kw))
    return result, pq.read_table(f"{committed_run(str(out))}/rows")


@pytest.mark.parametrize("ids", [[ROW_ID, LABEL], []], ids=["id-columns", "row-hash"])
def test_local_and_ray_paths_write_the_same_rows_and_summary(trained, mixed_data, tmp_path, ids):
    key = ids[0] if ids else "row_hash"
    local, a = _run(trained, mixed_data["score"], tmp_path / "local", id_columns=ids, compute="local")
    ray_res, b = _run(trained, mixed_data["score"], tmp_path / "ray", id_columns=ids, compute="tasks")
    assert local.summary["compute"] == "local" and ray_res.summary["compute"] == "tasks"
    a, b = a.sort_by(key), b.sort_by(key)
    assert a.schema.names == b.schema.names and a.num_rows == b.num_rows == mixed_data["score_table"].num_rows
    np.testing.assert_array_equal(a[key].to_numpy(), b[key].to_numpy())  # same ids, row_hash included
    for col in ("anomaly_score", "recon_error", "score_percentile"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, atol=1e-6)
    for col in ("is_anomaly", "missing_cells", "unseen_cells", "seen_in_training"):
        assert a[col].equals(b[col]), col
    same_top = np.mean([x == y for x, y in zip(a["top_features"].to_pylist(), b["top_features"].to_pylist())])
    assert same_top > 0.99  # float ties may order two columns differently, nothing more
    assert a.schema.metadata[b"aescore.run_id"] == b.schema.metadata[b"aescore.run_id"]
    sa, sb = local.summary, ray_res.summary
    for k in ("row_count", "anomaly_count", "nonfinite", "unseen_cells", "threshold"):
        assert sa[k] == sb[k], k
    for q in sa["quantiles"]:
        assert sa["quantiles"][q] == pytest.approx(sb["quantiles"][q], rel=1e-4), q
    assert [r[key] for r in sa["top_rows"]] == [r[key] for r in sb["top_rows"]]
    assert sa["run_id"] == sb["run_id"]  # the compute path is not part of a run's identity


def test_synthetic_row_hash_is_ray_datas(ray_start_2_cpus, mixed_data):
    import ray.data

    from jobs.data.datasets import open_parquet_input

    data = open_parquet_input(mixed_data["score"])
    ds = ray.data.read_parquet([f.path for f in data.files], include_row_hash=True, partitioning=None)
    got = np.sort(np.concatenate([b["row_hash"] for b in ds.iter_batches(batch_format="numpy")]))
    ours = np.sort(np.concatenate([synthetic_row_hashes(f.path, 0, f.num_rows) for f in data.files]))
    np.testing.assert_array_equal(got, ours)


def test_auto_is_local_unless_a_cluster_is_addressed(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = dict(model="m", data="d", out="o")
    assert score.ScoreConfig(**cfg).resolved_compute() == "local"
    assert score.ScoreConfig(**cfg, ray_address="ray://head:10001").resolved_compute() == "tasks"
    assert score.ScoreConfig(**cfg, concurrency=2).resolved_compute() == "tasks"
    assert score.ScoreConfig(**cfg, use_gpu=True).resolved_compute() == "actors"
    assert score.ScoreConfig(**cfg, compute="tasks").resolved_compute() == "tasks"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert score.ScoreConfig(**cfg).resolved_compute() == "tasks"


def test_local_path_names_a_bad_file_and_column_and_commits_nothing(trained, mixed_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    t = mixed_data["score_table"]
    i = t.schema.get_field_index("flag_0")
    pq.write_table(t.slice(0, 300), bad / "a-good.parquet")
    # An integer 0/1 column passes the footer checks; the value 2 fails only when the rows are encoded.
    broken = t.slice(300, 50).set_column(i, "flag_0", pa.array([0] * 49 + [2], type=pa.int64()))
    pq.write_table(broken, bad / "b-broken.parquet")
    out = tmp_path / "o"
    with pytest.raises(InputError, match=r"b-broken\.parquet.*flag_0"):
        score.run(score.ScoreConfig(model=trained.model_uri, data=str(bad), out=str(out), compute="local"))
    assert not (out / "_SUCCESS").exists()
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in leftovers if p.suffix == ".parquet"], leftovers


def test_local_path_restores_torch_threads(trained, mixed_data, tmp_path):
    import torch

    before = torch.get_num_threads()
    result, _ = _run(trained, mixed_data["score"], tmp_path / "o", id_columns=[ROW_ID], compute="local")
    assert torch.get_num_threads() == before
    assert json.loads(json.dumps(result.summary))["compute"] == "local"


def test_a_default_score_on_one_machine_never_imports_ray(trained, mixed_data, tmp_path):
    """The whole ``aescore score`` process on one machine: rows and summary written, Ray never imported.

    Importing Ray (and Ray Data) costs about a second of a short run (bench/score_throughput.py).
    """
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    code = ("import sys; from jobs.cli import main; rc = main(sys.argv[1:]); "
            "print('ray_imported', 'ray' in sys.modules); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", code, "score", "--model", trained.model_uri,
                           "--data", mixed_data["score"], "--out", str(tmp_path / "s")],
                          cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ray_imported False" in proc.stdout
    run = pathlib.Path(committed_run(str(tmp_path / "s")))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compute"] == "local" and summary["row_count"] == pq.read_table(mixed_data["score"]).num_rows
    # The default batch size was decided once, on the driver, and is recorded with the run.
    config = json.loads((run / "manifest.json").read_text())["config"]
    assert config["batch_size"] == rows_per_call(load_artifact(trained.model_uri).preprocessor)


def test_many_small_files_make_few_row_files_with_the_same_rows(trained, mixed_data, tmp_path):
    """Small files are joined into chunks: one row file per ROWS_PER_FILE rows, not one per input file."""
    from jobs.scoring.rows import ROWS_PER_FILE

    table = mixed_data["score_table"]
    many = tmp_path / "many"
    many.mkdir()
    per = max(1, table.num_rows // 60)
    for i in range(0, table.num_rows, per):
        pq.write_table(table.slice(i, per), many / f"part-{i:06d}.parquet")
    files = len(list(many.iterdir()))
    assert files >= 60
    scored = {}
    for compute in ("local", "tasks"):
        result, rows = _run(trained, str(many), tmp_path / compute, id_columns=[ROW_ID], compute=compute)
        written = list((tmp_path / compute).rglob("rows/*.parquet"))
        assert result.summary["row_count"] == rows.num_rows == table.num_rows
        assert len(written) <= max(1, -(-table.num_rows // ROWS_PER_FILE)) + 1, (compute, len(written), files)
        scored[compute] = rows.sort_by(ROW_ID)
    np.testing.assert_allclose(scored["local"]["anomaly_score"].to_numpy(), scored["tasks"]["anomaly_score"].to_numpy(),
                               rtol=1e-5, atol=1e-6)
