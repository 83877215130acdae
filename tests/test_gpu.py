"""GPU scoring where a CUDA device is present (skipped without one): the actor path, pinned transfers, bf16.

``bench/gpu_score.py`` measures the speed; these check that the GPU paths write what the
CPU path writes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aemodel import RowScorer, load_artifact
from aemodel.commit import committed_run
from jobs import score
from jobs.data.synthetic import ROW_ID

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _rows(out) -> pa.Table:
    return pq.read_table(f"{committed_run(str(out))}/rows").sort_by(ROW_ID)


def test_gpu_actor_path_writes_the_cpu_paths_scores(trained, mixed_data, tmp_path):
    cfg = dict(model=trained.model_uri, data=mixed_data["score"], id_columns=[ROW_ID])
    cpu = score.run(score.ScoreConfig(**cfg, out=str(tmp_path / "cpu"), compute="local"))
    gpu = score.run(score.ScoreConfig(**cfg, out=str(tmp_path / "gpu"), use_gpu=True))
    assert gpu.summary["compute"] == "actors" and gpu.summary["row_count"] == cpu.summary["row_count"]
    a, b = _rows(tmp_path / "cpu"), _rows(tmp_path / "gpu")
    np.testing.assert_array_equal(a[ROW_ID].to_numpy(), b[ROW_ID].to_numpy())
    np.testing.assert_allclose(b["anomaly_score"].to_numpy(), a["anomaly_score"].to_numpy(), rtol=1e-4, atol=1e-6)
    assert np.mean(a["is_anomaly"].to_numpy() == b["is_anomaly"].to_numpy()) > 0.999  # ties at the threshold only


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_scorer_keeps_the_cpu_ranking(trained, mixed_data, precision):
    """Pinned-memory transfers and autocast: fp32 matches the CPU; half precision keeps the order of rows."""
    art = load_artifact(trained.model_uri)
    table = mixed_data["score_table"]
    cpu = RowScorer(art).score_table(table)["anomaly_score"]
    gpu = RowScorer(load_artifact(trained.model_uri), "cuda", precision).score_table(table)["anomaly_score"]
    if precision == "fp32":
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-6)
        return
    rank = np.corrcoef(np.argsort(np.argsort(cpu)), np.argsort(np.argsort(gpu)))[0, 1]
    assert rank > 0.99, rank
    assert np.median(np.abs(gpu - cpu) / np.maximum(np.abs(cpu), 1e-6)) < 0.02
