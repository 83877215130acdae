"""The scoring UDFs: one batch of input rows in, one batch of output rows (or its summary part) out.

``jobs.scoring.ray_path`` wires them into the Ray Data pipeline and ``jobs.scoring.local``
into the single-process one; Ray pickles ``score_batch``, ``BatchScorer`` and
``BlockScorer`` by reference to this module, which every worker imports.
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
from jobs.runtime.ray_runtime import block_summary
from jobs.scoring.summary import ROW_HASH

if TYPE_CHECKING:
    from jobs.scoring.config import ScoreConfig

ROWS_PER_FILE = 100_000
"""Rows per output Parquet file on the local and GPU paths (fewer where an input is smaller);
the CPU Ray paths write one file per Ray Data read block (up to about 128 MiB of input)."""
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
        rows_per_call: Rows per model call: a longer batch is scored in slices of this many
            rows (None: the whole batch in one call).
    """

    def __init__(self, model_uri: str, passthrough: list[str], threshold: float | None = None,
                 use_gpu: bool = False, threads: int = 1, loader: ModelLoader = load_artifact,
                 storage_options: dict | None = None, top_k: int = 0, column_errors: bool = False,
                 precision: str = "fp32", metadata: dict[str, str] | None = None, partials: bool = False,
                 challenger_uri: str | None = None, rows_per_call: int | None = None):
        torch.set_num_threads(threads)
        self.rows_per_call = rows_per_call
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
        step = self.rows_per_call or batch.num_rows
        if batch.num_rows <= step:
            return self._score(batch)
        return pa.concat_tables([self._score(batch.slice(i, step)) for i in range(0, batch.num_rows, step)])

    def _score(self, batch: pa.Table) -> pa.Table:
        out = self.scorer.output_table(batch, self.passthrough, self.top_k, self.column_errors, self.partials)
        if self.challenger is not None:
            for name, col in challenger_columns(self.challenger, batch, out.column("is_anomaly").to_numpy(),
                                                self.top_k or 3).items():
                out = out.append_column(name, col)
        return with_metadata(out, self.metadata)


class BlockScorer(BatchScorer):
    """Ray Data UDF of the CPU actor path: scores a block, writes it and returns its summary part.

    The block is written with ``sink`` and summarised where it was scored, and only its
    ``block_summary`` (row count and accumulators) leaves the actor: no scored row goes
    through Ray's object store, and no CPU task after the pool is needed to write it.

    Args:
        aggs: The summary's mergeable aggregations.
        sink: Writes the scored block (``write_block``).
        **scorer: ``BatchScorer``'s arguments.
    """

    def __init__(self, *, aggs: tuple[BlockAggregate, ...], sink: Callable[[pa.Table], None], **scorer):
        super().__init__(**scorer)
        self.aggs, self.sink = aggs, sink

    def __call__(self, batch: pa.Table) -> dict:
        return block_summary(super().__call__(batch), self.aggs, self.sink)


@functools.lru_cache(maxsize=4)
def cached_scorer(model_uri: str, passthrough: tuple[str, ...], threshold: float | None, use_gpu: bool,
                  threads: int, loader: ModelLoader, storage_options: str, top_k: int,
                  column_errors: bool, precision: str, partials: bool = False,
                  challenger_uri: str | None = None, rows_per_call: int | None = None) -> BatchScorer:
    return BatchScorer(model_uri, list(passthrough), threshold, use_gpu, threads, loader,
                       json.loads(storage_options), top_k, column_errors, precision, partials=partials,
                       challenger_uri=challenger_uri, rows_per_call=rows_per_call)


def with_metadata(table: pa.Table, metadata: dict[str, str] | None) -> pa.Table:
    """``table`` with Parquet key-value metadata (written into every row file's footer)."""
    return table.replace_schema_metadata(metadata) if metadata else table


def score_batch(batch: pa.Table, *, model_uri: str, passthrough: list[str], threshold: float | None,
                use_gpu: bool, threads: int, loader: ModelLoader, storage_options: dict | None,
                top_k: int = 0, column_errors: bool = False, precision: str = "fp32",
                metadata: dict[str, str] | None = None, partials: bool = False,
                challenger_uri: str | None = None, rows_per_call: int | None = None,
                aggs: tuple[BlockAggregate, ...] | None = None,
                sink: Callable[[pa.Table], None] | None = None) -> pa.Table | dict:
    """Task-path UDF: the model is loaded once per worker process and reused across tasks.

    With ``aggs`` the scored batch is written with ``sink`` and summarised here, and its
    ``block_summary`` returned in place of its rows, as ``BlockScorer`` does.
    """
    scored = cached_scorer(model_uri, tuple(passthrough), threshold, use_gpu, threads, loader,
                           json.dumps(storage_options or {}, sort_keys=True), top_k, column_errors,
                           precision, partials, challenger_uri, rows_per_call)(batch)
    scored = with_metadata(scored, metadata)
    return scored if aggs is None else block_summary(scored, aggs, sink)


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
