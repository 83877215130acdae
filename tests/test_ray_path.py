"""The Ray Data scoring path's shape: one fused read -> score -> write operator, a read sized to the input."""

from __future__ import annotations

import functools
import os
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from aemodel import load_artifact
from jobs import score
from jobs.data.datasets import open_parquet_input
from jobs.data.ray_read import (MAX_READ_TASK_BYTES, MIN_READ_TASK_BYTES, UNKNOWN_WIDTH, in_memory_bytes, read_settings,
                                settings_in_environment)
from jobs.data.synthetic import ROW_ID
from jobs.runtime.ray_runtime import merge_block_summaries
from jobs.scoring.ray_path import build_scored_dataset
from jobs.scoring.rows import write_block
from jobs.scoring.summary import summary_aggregations, summary_from

FLOAT32 = pa.schema([pa.field(f"f{i}", pa.float32()) for i in range(32)] + [pa.field("id", pa.int64())])


def test_read_settings_follow_the_input_and_the_cluster():
    ten_million = in_memory_bytes(FLOAT32, 10_000_000)
    assert ten_million == 10_000_000 * (32 * 4 + 8)
    few = read_settings(20, ten_million, cpus=2)
    assert few["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "1"  # Ray's default is 32 actors, whatever the input
    assert few["RAY_DATA_PARQUET_FOOTER_BATCH_SIZE"] == "10"
    assert few["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == str(ten_million // 8)  # four read tasks per CPU
    one_million = in_memory_bytes(FLOAT32, 1_000_000)
    many = read_settings(10_000, one_million, cpus=2)
    assert many["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "2"
    assert many["RAY_DATA_PARQUET_FOOTER_BATCH_SIZE"] == many["RAY_DATA_PARQUET_FOOTER_RESULT_BATCH_SIZE"] == "500"
    assert many["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == str(one_million // 8)  # 8 tasks, not one of 128 MiB
    assert read_settings(20, one_million // 2, cpus=2)["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == str(MIN_READ_TASK_BYTES)
    assert read_settings(100, ten_million, cpus=64)["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == str(MIN_READ_TASK_BYTES)
    huge = read_settings(10**6, 100 * ten_million, cpus=64)
    assert huge["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "32"
    assert huge["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == str(MAX_READ_TASK_BYTES)
    assert in_memory_bytes(pa.schema([pa.field("s", pa.string())]), 10) == 10 * UNKNOWN_WIDTH


def test_settings_in_environment_keep_the_users_values_and_leave_nothing_behind(monkeypatch):
    monkeypatch.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "7")
    monkeypatch.delenv("RAY_DATA_PARQUET_BIN_PACKING_BYTES", raising=False)
    settings = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1", "RAY_DATA_PARQUET_BIN_PACKING_BYTES": "123"}
    with settings_in_environment(settings) as applied:
        assert applied == {"RAY_DATA_PARQUET_BIN_PACKING_BYTES": "123"}
        assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "7"
        assert os.environ["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == "123"
    assert "RAY_DATA_PARQUET_BIN_PACKING_BYTES" not in os.environ
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "7"


def test_the_read_carries_the_settings_into_rays_plan(ray_start_2_cpus, mixed_data):
    """Ray reads its knobs when the plan is built: the listing op holds them (Ray's internals, pinned version)."""
    data = open_parquet_input(mixed_data["score"])
    ds = data.read([ROW_ID], include_row_hash=True)
    op = ds._logical_plan.dag
    while type(op).__name__ != "ListFiles":
        op = op.input_dependencies[0]
    assert op.file_indexer._num_actors == 1 and op.file_indexer._footer_batch_size == 10
    assert "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS" not in os.environ  # set only while the plan was built


@pytest.mark.parametrize("compute,udf", [("tasks", "score_batch"), ("actors", "BlockScorer")])
def test_cpu_pipeline_reads_scores_and_writes_in_one_fused_operator(trained, mixed_data, tmp_path, compute, udf):
    """No scored block goes through the object store: a batch_size on the map would split the read from it."""
    art = load_artifact(trained.model_uri)
    cfg = score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o"),
                            id_columns=[ROW_ID], compute=compute, batch_size=256)
    data = open_parquet_input(cfg.data, specs=art.preprocessor.specs)
    aggs = tuple(summary_aggregations(art, cfg, art.threshold_value))
    sink = functools.partial(write_block, path=str(tmp_path / "rows"), filesystem=pafs.LocalFileSystem(),
                             keep_row_hash=False)
    ds = build_scored_dataset(cfg, art, data, aggs=aggs, sink=sink)
    merged = merge_block_summaries(ds, aggs)
    plan = ds.stats()
    assert f"ReadFilesParquetV2->MapBatches({udf})" in plan
    assert len(re.findall(r"^Operator \d+ ", plan, re.M)) == 3  # the read's entry, the listing, the fused one
    assert summary_from(merged, art, cfg)["row_count"] == data.num_rows
    assert pq.read_table(tmp_path / "rows").num_rows == data.num_rows  # written by the workers, each row once


def test_many_small_files_score_on_ray_into_few_row_files(trained, tmp_path):
    """Ray 2.60 opens one thread per file of a read task unless the order is preserved (score_on_ray does)."""
    from jobs.data.synthetic import make_mixed_table

    table = make_mixed_table(6_000, seed=5, start_id=50_000)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(600):
        pq.write_table(table.slice(10 * i, 10), folder / f"part-{i:04d}.parquet")
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=str(folder), out=str(tmp_path / "o"),
                                         id_columns=[ROW_ID], compute="tasks"))
    assert result.summary["row_count"] == 6_000
    assert 1 <= len(result.manifest["outputs"]) <= 8  # read tasks' blocks, not one file per input file
