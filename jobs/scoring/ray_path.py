"""The Ray Data scoring path (``--compute tasks`` or ``actors``): the pipeline and its compute.

``score_on_ray`` runs read -> score -> write on the cluster's workers with the UDFs of
``jobs.scoring.rows``; the driver merges the blocks' summary parts as they finish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from aemodel import ModelArtifact, load_artifact
from aemodel.aggregates import BlockAggregate
from jobs.data.datasets import ParquetInput
from jobs.data.storage import check_shared_paths, normalize_storage_options
from jobs.runtime.progress import Progress
from jobs.runtime.ray_runtime import aggregate_blocks, alive_nodes, ensure_ray, merge_block_summaries
from jobs.scoring.rows import (ROWS_PER_FILE, BatchScorer, BlockScorer, ModelLoader, kept_columns,
                               passthrough_columns, read_columns, score_batch)

if TYPE_CHECKING:
    import ray.data

    from jobs.scoring.config import ScoreConfig


def build_scored_dataset(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput,
                         loader: ModelLoader = load_artifact, metadata: dict[str, str] | None = None,
                         aggs: tuple[BlockAggregate, ...] | None = None,
                         sink: Callable[[pa.Table], None] | None = None) -> ray.data.Dataset:
    """The lazy read -> score pipeline; rows keep their ids, so order never matters.

    ``metadata`` goes into every row file's Parquet footer (see ``row_file_metadata``).
    With ``aggs`` (CPU only) each block is also written with ``sink`` and summarised where
    it was scored, and the dataset's rows are the blocks' ``block_summary`` parts: Ray Data
    then fuses the read, the scoring and the write into one task (or one actor call), so no
    block goes through the object store, and the UDF gets whole read blocks, which it
    scores in model calls of ``cfg.batch_size`` rows (bench/score_throughput.py). A
    ``batch_size`` on the map would stop that fusion: Ray Data does not fuse a read with a
    map that bundles rows across blocks.
    """
    import ray  # here, not at the top: the local path never loads Ray (jobs.runtime.ray_runtime)

    from jobs.data.ray_read import read_source

    if aggs is not None and cfg.use_gpu:
        raise ValueError("a GPU pipeline returns its rows: they are written by CPU tasks after it")
    # Read tasks of the scorers' CPUs: Ray Data fuses a read only into a map of the same
    # resources. A GPU actor is never fused with it; there the read takes one CPU per task.
    source = data.ray_source(read_columns(cfg, art), art.preprocessor.specs, include_row_hash=True,
                             keep=kept_columns(cfg, art))
    ds = read_source(source, num_cpus=1 if cfg.use_gpu else cfg.cpus_per_worker)
    threads = max(1, int(cfg.cpus_per_worker))
    args = {"model_uri": cfg.model, "passthrough": passthrough_columns(cfg), "threshold": cfg.threshold,
            "use_gpu": cfg.use_gpu, "threads": threads, "loader": loader,
            "storage_options": normalize_storage_options(cfg.storage_options), "top_k": cfg.top_k,
            "column_errors": cfg.column_errors, "precision": cfg.precision, "metadata": metadata, "partials": True,
            "challenger_uri": cfg.challenger}
    if aggs is not None:
        args.update(rows_per_call=cfg.batch_size, aggs=aggs, sink=sink)
    common = {"batch_format": "pyarrow", "batch_size": None if aggs is not None else cfg.batch_size,
              "num_cpus": cfg.cpus_per_worker, "num_gpus": 1 if cfg.use_gpu else 0}
    # A dead scorer (OOM, preempted node) is restarted and its batches retried: Ray Data
    # gives pool actors max_restarts=-1 and max_task_retries=-1, and tasks keep Ray's
    # retries on system failures (passing these explicitly is deprecated in Ray 2.60).
    # Retries cannot duplicate rows: a write's file is named by its rows, so a retry
    # replaces it, and the row count is checked against the input before committing.
    if cfg.use_actors:
        return ds.map_batches(BlockScorer if aggs is not None else BatchScorer, fn_constructor_kwargs=args,
                              compute=actor_pool(cfg, source.num_tasks), **common)
    compute = ray.data.TaskPoolStrategy(size=cfg.concurrency) if cfg.concurrency else None
    return ds.map_batches(score_batch, fn_kwargs=args, compute=compute, **common)


def actor_pool(cfg: ScoreConfig, read_tasks: int) -> ray.data.ActorPoolStrategy:
    """The scoring actors: one per GPU (or ``--concurrency``); on CPUs, as many as the CPUs hold;
    never more than the input's ``read_tasks`` (blocks), which would leave actors idle.

    A CPU actor reads its own blocks (the read is fused into it, ``build_scored_dataset``),
    so the pool may hold every CPU; an actor of the cluster's every CPU scores too.
    """
    import ray
    from ray.data import ActorPoolStrategy

    if cfg.use_gpu:
        size = cfg.concurrency or int(ray.cluster_resources().get("GPU", 0))
    else:  # no CPUs yet (an autoscaler adds the nodes asked for): one actor
        size = cfg.concurrency or int(ray.cluster_resources().get("CPU", 0) // cfg.cpus_per_worker)
    return ActorPoolStrategy(size=max(1, min(size, read_tasks)))


def score_on_ray(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput, loader: ModelLoader,
                 metadata: dict[str, str], aggs: list[BlockAggregate], sink: Callable[[pa.Table], None],
                 progress: Progress) -> dict:
    """The Ray Data path (``tasks`` or ``actors``): read -> score -> ``sink`` on the cluster's workers.

    On CPUs one UDF scores, writes and summarises each block (``build_scored_dataset``). A
    GPU actor is not fused with the CPU read anyway; there the scored rows go on to CPU
    tasks that write and summarise them, so the GPU actors only run the model.

    Returns the merged summary accumulators.
    """
    import ray.data

    ensure_ray(cfg.ray_address)
    options = normalize_storage_options(cfg.storage_options)
    # Tasks on every node read the data and model and write the rows.
    check_shared_paths({"--data": cfg.data, "--model": cfg.model, "--out": cfg.out}, alive_nodes(),
                       cfg.shared_local_paths, options)
    ctx = ray.data.DataContext.get_current()
    limits, raise_original = ctx.execution_options.resource_limits, ctx.raise_original_map_exception
    try:
        if cfg.object_store_limit_mb:
            # Ray Data's default budget is a share of the node's object store, so a bigger input
            # keeps more blocks in flight (bench/score_memory.py). Datasets copy the context when created.
            ctx.execution_options.resource_limits = limits.copy(object_store_memory=cfg.object_store_limit_mb * 2**20)
        # Errors raised in our UDFs reach the driver as themselves (a SchemaError naming the
        # column), not as a UserCodeException whose message holds only a cut traceback.
        ctx.raise_original_map_exception = True
        if cfg.use_gpu:
            return aggregate_blocks(build_scored_dataset(cfg, art, data, loader, metadata), *aggs,
                                    progress=progress, rows_per_call=ROWS_PER_FILE, sink=sink)
        parts = build_scored_dataset(cfg, art, data, loader, metadata, tuple(aggs), sink)
        return merge_block_summaries(parts, tuple(aggs), progress)
    finally:
        ctx.execution_options.resource_limits, ctx.raise_original_map_exception = limits, raise_original
