"""The Ray Data scoring path's shape: one fused read -> score -> write operator, read tasks sized to the input."""

from __future__ import annotations

import functools
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from aemodel import load_artifact
from jobs import score
from jobs.data.datasets import open_parquet_input
from jobs.data.chunks import (ROW_HASH, UNKNOWN_WIDTH, in_memory_bytes, iter_chunks, split_parts, synthetic_row_hashes,
                              whole_files)
from jobs.data.ray_read import MAX_PARTS_PER_TASK, MAX_READ_TASK_BYTES, MIN_READ_TASK_BYTES, pack_tasks, task_bytes
from jobs.data.storage import ParquetFileInfo
from jobs.data.synthetic import ROW_ID
from jobs.runtime.ray_runtime import merge_block_summaries
from jobs.scoring.ray_path import build_scored_dataset
from jobs.scoring.rows import write_block
from jobs.scoring.summary import summary_aggregations, summary_from

FLOAT32 = pa.schema([pa.field(f"f{i}", pa.float32()) for i in range(32)] + [pa.field("id", pa.int64())])


def _file(name: str, row_groups: tuple[int, ...]) -> ParquetFileInfo:
    return ParquetFileInfo(path=name, uri=name, num_rows=sum(row_groups), size=0, schema=FLOAT32,
                           row_groups=row_groups)


def test_read_tasks_follow_the_input_and_the_cluster():
    width = in_memory_bytes(FLOAT32, 1)
    assert width == 32 * 4 + 8 and in_memory_bytes(pa.schema([pa.field("s", pa.string())]), 10) == 10 * UNKNOWN_WIDTH
    assert task_bytes(10_000_000 * width, cpus=2) == 10_000_000 * width // 8  # four read tasks per CPU
    assert task_bytes(1_000, cpus=2) == MIN_READ_TASK_BYTES
    assert task_bytes(10**12, cpus=64) == MAX_READ_TASK_BYTES
    # Small files join into one task; a large one is cut at its row groups; the order is kept.
    files = [_file(f"s{i}", (100,)) for i in range(3)] + [_file("big", (1000, 1000, 1000, 1000)), _file("last", (10,))]
    parts = split_parts(files, width, max_bytes=2_500 * width)
    assert [(p.path, p.groups, p.first_row, p.num_rows) for p in parts] == [
        ("s0", None, 0, 100), ("s1", None, 0, 100), ("s2", None, 0, 100),
        ("big", (0, 1), 0, 2000), ("big", (2, 3), 2000, 2000), ("last", None, 0, 10)]
    tasks = pack_tasks(parts, width, max_bytes=2_500 * width)
    assert [[p.path for p in t] for t in tasks] == [["s0", "s1", "s2", "big"], ["big", "last"]]
    assert [p.path for p in split_parts([_file("one-group", (5000,))], width, 10 * width)] == ["one-group"]
    many = whole_files([_file(f"t{i}", (1,)) for i in range(2 * MAX_PARTS_PER_TASK + 1)])
    assert [len(t) for t in pack_tasks(many, width, MAX_READ_TASK_BYTES)] == [MAX_PARTS_PER_TASK] * 2 + [1]


def test_a_read_task_reads_its_row_groups_with_the_ids_of_the_whole_file(tmp_path):
    """A file cut at its row groups gives every row the row_hash (and type) that reading it whole gives."""
    table = pa.table({"id": pa.array(range(10_000), pa.int64()), "x": pa.array([float(i) for i in range(10_000)],
                                                                             pa.float32())})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1_000)
    data = open_parquet_input(str(tmp_path))
    assert data.files[0].row_groups == (1_000,) * 10
    schema = data.read_schema(["id", "x"], keep=("id",))
    whole = pa.concat_tables(iter_chunks(data.arrow_fs, whole_files(data.files), schema, 3_000))
    parts = split_parts(data.files, in_memory_bytes(schema, 1), max_bytes=2_500 * in_memory_bytes(schema, 1))
    assert len(parts) == 5
    cut = pa.concat_tables(t for p in parts for t in iter_chunks(data.arrow_fs, [p], schema, 3_000))
    assert cut.equals(whole) and whole.column("x").type == pa.float32() and whole.num_rows == 10_000
    assert whole.column(ROW_HASH).to_pylist() == list(synthetic_row_hashes(data.files[0].path, 0, 10_000))


def test_the_read_is_one_block_per_task_and_lists_nothing(ray_start_2_cpus, mixed_data):
    """No listing operator (footers are read once, on the driver), and Ray Data does not split the tasks' output."""
    data = open_parquet_input(mixed_data["score"])
    ds = data.read([ROW_ID], include_row_hash=True)
    source = ds._logical_plan.dag.datasource  # Ray's internals, pinned version
    blocks = ds.materialize()
    assert blocks.num_blocks() == source.num_tasks  # Ray's default would split one task's output into many
    assert blocks.count() == data.num_rows and blocks.schema().names == [ROW_ID, ROW_HASH]
    assert "ListFiles" not in ds.stats()
    # Ray Data names a read task above 1 MiB (10,000 small files) after its function's __name__.
    assert source.get_read_tasks(source.num_tasks)[0].read_fn.__name__ == "read_parts"


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
    assert f"ReadParquetInput->MapBatches({udf})" in plan
    assert len(re.findall(r"^Operator \d+ ", plan, re.M)) == 1  # no listing: one operator reads, scores, writes
    assert summary_from(merged, art, cfg)["row_count"] == data.num_rows
    assert pq.read_table(tmp_path / "rows").num_rows == data.num_rows  # written by the workers, each row once


def test_many_small_files_score_on_ray_into_few_row_files(trained, tmp_path):
    """A read task reads its files one after another and joins them into blocks: few row files."""
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
