"""The scoring UDFs: one batch of input rows in, one batch of output rows out.

``build_scored_dataset`` wires them into the lazy read -> score pipeline that
``jobs.score`` writes; Ray pickles ``score_batch`` and ``BatchScorer`` by reference to
this module, which every worker imports.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from aemodel import ModelArtifact, RowScorer, load_artifact
from aemodel.bank import scorer_for
from aemodel.challenger import challenger_columns
from aemodel.scoring import PARTIAL_PREFIX
from aemodel.store import absolute_uri
from aemodel.aggregates import BlockAggregate
from jobs.data.datasets import ParquetInput
from jobs.runtime.errors import InputError
from jobs.runtime.progress import Progress
from jobs.runtime.ray_runtime import aggregate_blocks, alive_nodes, ensure_ray
from jobs.scoring.summary import ROW_HASH
from jobs.data.storage import check_shared_paths, normalize_storage_options

if TYPE_CHECKING:
    import ray.data

    from jobs.scoring.config import ScoreConfig

ROWS_PER_FILE = 100_000
"""Rows per output Parquet file (fewer where an input is smaller)."""
OUTPUT_FORMAT_VERSION = 4
"""Version of the rows / summary.json / manifest.json layout. 4: top_features.column is
dictionary-encoded (the same strings when read); 3: one pass writes rows and summary;
the summary names each figure once (row_count, anomaly_count, anomaly_rate, unseen_cells) and holds
top_rows; 2: anomaly_score and score_percentile columns, distribution of anomaly_score; 1: recon_error."""
ModelLoader = Callable[[str, dict | None], ModelArtifact]  # (uri, storage_options) -> artefact


class BatchScorer:
    """Ray Data UDF: loads the model once, then scores Arrow batches.

    Args:
        model_uri: Artefact to load.
        passthrough: Input columns copied to the output.
        threshold: Anomaly threshold override (None: the model's).
        use_gpu: Run on CUDA.
        threads: torch intra-op threads, matched to the CPUs reserved for this worker.
        loader: Loads an artefact from (URI, storage options); injectable for tests and registries.
        storage_options: fsspec options for the model URI.
        top_k: Columns per row in ``top_features`` (0: none).
        column_errors: Add ``err_<column>`` per feature (null where the cell was missing).
        precision: fp32, or bf16/fp16 autocast on GPU.
        metadata: Parquet key-value metadata of every output batch (``row_file_metadata``).
        partials: Add the batch's part of the summary (``RowScorer.output_table``; dropped by ``write_block``).
        challenger_uri: A second model scored on the same batch (``aemodel.challenger``; its own threshold).
    """

    def __init__(self, model_uri: str, passthrough: list[str], threshold: float | None = None,
                 use_gpu: bool = False, threads: int = 1, loader: ModelLoader = load_artifact,
                 storage_options: dict | None = None, top_k: int = 0, column_errors: bool = False,
                 precision: str = "fp32", metadata: dict[str, str] | None = None, partials: bool = False,
                 challenger_uri: str | None = None):
        torch.set_num_threads(threads)
        self.metadata = metadata
        art = loader(model_uri, storage_options)
        if threshold is not None:
            art.threshold = {**art.threshold, "value": threshold}
        self.passthrough, self.top_k, self.column_errors, self.partials = passthrough, top_k, column_errors, partials
        device = "cuda" if use_gpu else "cpu"
        self.scorer = scorer_for(art, device, precision, storage_options)
        if art.bank:  # each row keeps the entity it was routed by
            self.passthrough = list(dict.fromkeys([*passthrough, *art.bank["entity_columns"]]))
        self.challenger = (RowScorer(loader(challenger_uri, storage_options), device, precision)
                           if challenger_uri else None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.scorer.output_table(batch, self.passthrough, self.top_k, self.column_errors, self.partials)
        if self.challenger is not None:
            for name, col in challenger_columns(self.challenger, batch, out.column("is_anomaly").to_numpy(),
                                                self.top_k or 3).items():
                out = out.append_column(name, col)
        return with_metadata(out, self.metadata)


@functools.lru_cache(maxsize=4)
def cached_scorer(model_uri: str, passthrough: tuple[str, ...], threshold: float | None, use_gpu: bool,
                  threads: int, loader: ModelLoader, storage_options: str, top_k: int,
                  column_errors: bool, precision: str, partials: bool = False,
                  challenger_uri: str | None = None) -> BatchScorer:
    return BatchScorer(model_uri, list(passthrough), threshold, use_gpu, threads, loader,
                       json.loads(storage_options), top_k, column_errors, precision, partials=partials,
                       challenger_uri=challenger_uri)


def with_metadata(table: pa.Table, metadata: dict[str, str] | None) -> pa.Table:
    """``table`` with Parquet key-value metadata (written into every row file's footer)."""
    return table.replace_schema_metadata(metadata) if metadata else table


def score_batch(batch: pa.Table, *, model_uri: str, passthrough: list[str], threshold: float | None,
                use_gpu: bool, threads: int, loader: ModelLoader, storage_options: dict | None,
                top_k: int = 0, column_errors: bool = False, precision: str = "fp32",
                metadata: dict[str, str] | None = None, partials: bool = False,
                challenger_uri: str | None = None) -> pa.Table:
    """Task-path UDF: the model is loaded once per worker process and reused across tasks."""
    scored = cached_scorer(model_uri, tuple(passthrough), threshold, use_gpu, threads, loader,
                           json.dumps(storage_options or {}, sort_keys=True), top_k, column_errors,
                           precision, partials, challenger_uri)(batch)
    return with_metadata(scored, metadata)


def kept_columns(cfg: ScoreConfig, art: ModelArtifact) -> tuple[str, ...]:
    """The non-feature columns scoring reads with their own type: ids, and a bank's entity columns."""
    return tuple(dict.fromkeys([*cfg.id_columns, *((art.bank or {}).get("entity_columns") or [])]))


def read_columns(cfg: ScoreConfig, art: ModelArtifact) -> list[str]:
    """The input columns scoring reads: ids (and a bank's entity columns), then features."""
    return list(dict.fromkeys([*kept_columns(cfg, art), *(s.name for s in art.preprocessor.specs)]))


def passthrough_columns(cfg: ScoreConfig) -> list[str]:
    """Input columns the scorer copies to its output: the ids, and ``row_hash`` (which names the row
    files, and is written as the id when no --id-columns are given; ``write_block``)."""
    return [*cfg.id_columns, ROW_HASH]


def build_scored_dataset(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput,
                         loader: ModelLoader = load_artifact, metadata: dict[str, str] | None = None
                         ) -> ray.data.Dataset:
    """The lazy read -> score pipeline; rows keep their ids, so order never matters.

    ``metadata`` goes into every row file's Parquet footer (see ``row_file_metadata``).
    """
    import ray  # here, not at the top: the local path never loads Ray (jobs.runtime.ray_runtime)
    from ray.data import ActorPoolStrategy

    passthrough = passthrough_columns(cfg)
    ds = data.read(read_columns(cfg, art), art.preprocessor.specs, include_row_hash=True, keep=kept_columns(cfg, art))
    threads = max(1, int(cfg.cpus_per_worker))
    args = {"model_uri": cfg.model, "passthrough": passthrough, "threshold": cfg.threshold,
            "use_gpu": cfg.use_gpu, "threads": threads, "loader": loader,
            "storage_options": normalize_storage_options(cfg.storage_options), "top_k": cfg.top_k,
            "column_errors": cfg.column_errors, "precision": cfg.precision, "metadata": metadata, "partials": True,
            "challenger_uri": cfg.challenger}
    common = {"batch_format": "pyarrow", "batch_size": cfg.batch_size, "num_cpus": cfg.cpus_per_worker,
              "num_gpus": 1 if cfg.use_gpu else 0}
    # A dead scorer (OOM, preempted node) is restarted and its batches retried: Ray Data
    # gives pool actors max_restarts=-1 and max_task_retries=-1, and tasks keep Ray's
    # retries on system failures (passing these explicitly is deprecated in Ray 2.60).
    # Retries cannot duplicate rows: a write task's files are named by task, so a retry
    # replaces them, and the row count is checked against the input before committing.
    if cfg.use_actors:
        default_size = max(1, int(ray.cluster_resources().get("GPU", 0))) if cfg.use_gpu else 1
        size = cfg.concurrency or default_size
        cpus = ray.cluster_resources().get("CPU", 0)
        if not cfg.use_gpu and cpus and size * cfg.cpus_per_worker >= cpus:
            # Seen here: a pool that reserves every CPU leaves none for the Parquet reads
            # that feed it, and the job stalls forever instead of failing.
            raise InputError(f"{size} scoring actors x {cfg.cpus_per_worker:g} CPU would reserve all {cpus:g} "
                             "CPUs and starve the Parquet reads; lower --concurrency or --cpus-per-worker, "
                             "or use the default task path")
        return ds.map_batches(BatchScorer, fn_constructor_kwargs=args,
                              compute=ActorPoolStrategy(size=size), **common)
    compute = ray.data.TaskPoolStrategy(size=cfg.concurrency) if cfg.concurrency else None
    return ds.map_batches(score_batch, fn_kwargs=args, compute=compute, **common)


def score_on_ray(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput, loader: ModelLoader,
                 metadata: dict[str, str], aggs: list[BlockAggregate], sink: Callable[[pa.Table], None],
                 progress: Progress) -> dict:
    """The Ray Data path (``tasks`` or ``actors``): read -> score -> ``sink`` on the cluster's workers.

    Returns the merged summary accumulators (``aggregate_blocks``).
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
        return aggregate_blocks(build_scored_dataset(cfg, art, data, loader, metadata), *aggs,
                                progress=progress, rows_per_call=ROWS_PER_FILE, sink=sink)
    finally:
        ctx.execution_options.resource_limits, ctx.raise_original_map_exception = limits, raise_original


def row_file_metadata(cfg: ScoreConfig, art: ModelArtifact, run_id: str, threshold: float | None) -> dict[str, str]:
    """Key-value metadata of every row file: what wrote it, with which model, run and threshold."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("aescore")
    except PackageNotFoundError:  # running from a source tree that is not installed
        ours = "unknown"
    return {"aescore.format_version": str(OUTPUT_FORMAT_VERSION), "aescore.version": ours,
            "aescore.score": "anomaly_score", "aescore.run_id": run_id, "aescore.model_uri": absolute_uri(cfg.model),
            "aescore.model_version": str(art.version), "aescore.threshold": json.dumps(threshold)}


def write_block(table: pa.Table, *, path: str, filesystem: pafs.FileSystem, keep_row_hash: bool) -> None:
    """Write one block of scored rows as one Parquet file under ``path`` (a ``aggregate_blocks`` sink).

    Why not ``Dataset.write_parquet``: its Datasink hands nothing back per block, so the
    summary needed a second read of the written rows; writing in the same pass that takes
    the summary accumulators saves that read (bench/score_throughput.py) and lets the
    driver count rows as blocks finish (progress). The file is named by a hash of the
    block's ``row_hash`` values (input file and row position, unique per input row): a
    retried task (same input, same block) replaces its own file rather than adding a
    second copy, and blocks whose ids repeat (ids restarting in each input file, a
    constant id) never share a name. The row count is checked against the input before
    anything is committed either way.

    Args:
        keep_row_hash: Write ``row_hash`` (it is the rows' id when no --id-columns are given).
    """
    if table.num_rows == 0:
        return
    hashes = table.column(ROW_HASH).combine_chunks()
    digest = hashlib.blake2b(np.ascontiguousarray(hashes.to_numpy()).tobytes(), digest_size=12).hexdigest()
    dropped = [c for c in table.column_names if c.startswith(PARTIAL_PREFIX) or (c == ROW_HASH and not keep_row_hash)]
    if dropped:  # the summary's parts and a row_hash that only named the file
        table = table.drop_columns(dropped)
    filesystem.create_dir(path, recursive=True)
    # Dictionary pages only for the column names of top_features: Parquet's default tries a
    # dictionary for every column, and on unique floats and ids that costs about twice the
    # rest of the write and gives bigger files (bench/score_throughput.py).
    dictionary = ["top_features.list.element.column"] if "top_features" in table.column_names else False
    pq.write_table(table, f"{path}/part-{digest}.parquet", filesystem=filesystem, use_dictionary=dictionary)
