"""Scoring in this process, without Ray: the single-machine path of ``aescore score``.

Why a second path: on one machine, starting Ray and scheduling Ray Data blocks costs
several times the scoring itself (bench/score_throughput.py, "plain script"). Here the
driver reads each file with pyarrow, scores it with the pipeline's own ``BatchScorer``
on every core, and hands each chunk to the same sink (``write_block``) and the same
summary accumulators as the Ray path, so both write the same files, rows and summary
(``tests/test_score_local.py`` compares them). Reading the next chunk runs in a thread
while the current one is scored, and writing the previous one as well (pyarrow releases
the GIL while it reads and writes).

Both paths read with the same reader (``jobs.data.chunks``), so a row has the same type
and synthetic ``row_hash`` id whichever path scored it.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from jobs.data.datasets import ParquetInput
from jobs.runtime.progress import Progress
from jobs.data.storage import normalize_storage_options
from aemodel.aggregates import MergedAggregates
from jobs.scoring.rows import (ROWS_PER_FILE, BatchScorer, kept_columns, passthrough_columns,
                             read_columns)

if TYPE_CHECKING:
    from aemodel import ModelArtifact
    from jobs.scoring.config import ScoreConfig


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def score_in_process(chunks: Iterator[pa.Table], scorer: BatchScorer, merged: MergedAggregates,
                     sink: Callable[[pa.Table], None], progress: Progress | None = None) -> None:
    """Score every chunk (in the scorer's model calls), write it with ``sink`` and add its accumulators.

    One thread prefetches the next chunk while this one scores; another writes and
    summarises the previous scored chunk. Exceptions from either surface here.
    """
    def finish(scored: pa.Table) -> list:
        return MergedAggregates.partial(scored, merged.aggs, sink)

    def collect(writing: tuple[Future, int] | None) -> None:
        if writing is not None:
            merged.add(writing[0].result())
            if progress is not None:
                progress.update(writing[1])

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="aescore-io") as pool:
        ahead: Future = pool.submit(next, chunks, None)
        writing: tuple[Future, int] | None = None
        try:
            while (table := ahead.result()) is not None:
                ahead = pool.submit(next, chunks, None)
                scored = scorer(table)
                collect(writing)
                writing = (pool.submit(finish, scored), scored.num_rows)
            collect(writing)
        except BaseException:
            # An error or an interrupt here: the prefetch thread may still be inside the chunk
            # generator; wait for it, so the caller's close() of the generator does not fail
            # with "generator already executing" in place of this error.
            wait([ahead])
            raise


def with_torch_threads(threads: int, fn: Callable[[], object]) -> object:
    """Run ``fn`` with ``threads`` torch intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def score_locally(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput, metadata: dict[str, str],
                  aggs: tuple, sink: Callable[[pa.Table], None], progress: Progress,
                  challenger: ModelArtifact | None = None) -> dict:
    """The ``local`` compute path: read -> score -> write ``data`` in this process with every usable core.

    Args:
        cfg: The run's options (``compute`` already resolved to ``local``).
        art: The loaded artefact: its schema decides the columns read, and the scorer uses
            a copy of it rather than loading the model from storage a second time.
        challenger: The loaded ``cfg.challenger`` artefact, likewise (None without one).
        metadata: Parquet key-value metadata of every row file.
        aggs: The summary's mergeable aggregations.
        sink: Writes one chunk of scored rows (``write_block``).
        progress: Counts scored rows.

    Returns:
        Aggregation name -> finalized value, as ``aggregate_blocks`` returns.
    """
    def go() -> dict:
        # A copy: BatchScorer sets a --threshold override on the artefact it gets.
        scorer = BatchScorer(cfg.model, passthrough_columns(cfg), cfg.threshold, cfg.use_gpu, threads,
                             lambda uri, _options: copy.copy(art if uri == cfg.model else challenger),
                             normalize_storage_options(cfg.storage_options),
                             cfg.top_k, cfg.column_errors, cfg.precision, metadata, partials=True,
                             challenger_uri=cfg.challenger, rows_per_call=cfg.batch_size)
        merged = MergedAggregates(tuple(aggs))
        chunks = data.iter_chunks(read_columns(cfg, art), art.preprocessor.specs, ROWS_PER_FILE,
                             keep=kept_columns(cfg, art))
        try:
            score_in_process(chunks, scorer, merged, sink, progress)
        finally:
            # A failed batch: close the open file's reader now, not at exit. "Generator already
            # executing" (a reader thread still in it) must never replace the error that got here.
            with contextlib.suppress(ValueError):
                chunks.close()
        return merged.result()

    threads = usable_cpus()
    return with_torch_threads(threads, go)
