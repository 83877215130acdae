"""The training statistics pass and the encoded tensors, over tables in this process.

``fit_statistics`` runs the mergeable aggregations (``aemodel.aggregates``) that fit the
preprocessing and the Bloom filter of the rows seen, on any input that can ``aggregate``:
``TableInput`` here, or ``jobs.training.stats.RayInput`` on Ray Data. ``encode_tables`` turns
tables into the model's input tensors. The single-machine path of ``aescore train`` and the
Python API (``aemodel.estimator``) both use them, so both fit the same statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from aemodel.aggregates import ColumnStatsAggregate, MergedAggregates, RowBloomAggregate, decode_bloom
from aemodel.errors import TrainingError
from aemodel.leakage import BloomFilter, id_like_columns
from aemodel.options import TrainingOptions
from aemodel.preprocess import Preprocessor
from aemodel.split import keep_split, split_cut
from aemodel.training import MODEL_INPUTS

CHUNK_ROWS = 100_000
"""Rows per table a statistics pass and the encoding handle at once (a file is read in chunks of this)."""


class TableInput:
    """Tables in this process, with the ``aggregate`` of the statistics pass."""

    def __init__(self, tables: Iterable[pa.Table]):
        self.tables = list(tables)
        self.num_rows = sum(t.num_rows for t in self.tables)

    @classmethod
    def of(cls, table: pa.Table) -> TableInput:
        """One table, in chunks of ``CHUNK_ROWS`` (as a single file of it is read)."""
        return cls([table.slice(i, CHUNK_ROWS) for i in range(0, max(table.num_rows, 1), CHUNK_ROWS)])

    def aggregate(self, *aggs) -> dict:
        """What ``jobs.runtime.ray_runtime.aggregate_blocks`` returns for the same aggregations over these rows."""
        merged = MergedAggregates(aggs)
        for table in self.tables:
            merged.add(MergedAggregates.partial(table, aggs))
        return merged.result()

    def chunks(self) -> Iterator[pa.Table]:
        return iter(self.tables)


def encode_tables(pp: Preprocessor, tables: Iterable[pa.Table]) -> dict[str, torch.Tensor]:
    """The model inputs of ``tables`` (``Preprocessor.transform``), concatenated (at least one table)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in MODEL_INPUTS}
    for table in tables:
        enc = pp.transform(table)
        for k in MODEL_INPUTS:
            parts[k].append(enc[k])
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}


def split_tables(tables: Iterable[pa.Table], names: list[str], val_fraction: float,
                 validation: bool) -> Iterator[pa.Table]:
    """One side of the row-hash split (``aemodel.split``) of each table."""
    cut = split_cut(val_fraction)
    return (keep_split(t, names, cut, validation=validation) for t in tables)


def fit_statistics(cfg: TrainingOptions, specs: list, train_in, val_in) -> tuple[dict, BloomFilter, dict]:
    """Preprocessing statistics of the training rows and a Bloom filter of all rows seen.

    One pass over the training input computes both; with a separate validation input, a
    second pass over it adds its rows and counts those already in training.

    Args:
        cfg: The training options (``val_fraction``, ``log_skewness``).
        specs: The feature columns.
        train_in, val_in: Inputs with ``num_rows`` and ``aggregate(*aggs)``: ``TableInput``
            (tables in this process) or ``jobs.training.stats.RayInput`` (a Ray Data job).

    Raises:
        TrainingError: The training split holds no row.
    """
    names = [s.name for s in specs]
    log = cfg.log_skewness is not None  # log-scale moments only where they can be used
    seen = BloomFilter.for_rows(train_in.num_rows + (val_in.num_rows if val_in else 0))
    shape = (seen.n_bits, seen.n_hashes)
    if val_in is None:
        keep_train = functools.partial(keep_split, columns=names, cut=split_cut(cfg.val_fraction), validation=False)
        agg = train_in.aggregate(ColumnStatsAggregate(specs, keep_train, log), RowBloomAggregate(specs, *shape))
        overlap = {"train_val_overlap_rows": 0, "method": "row-hash split: identical rows always share a side"}
    else:
        agg = train_in.aggregate(ColumnStatsAggregate(specs, log_moments=log), RowBloomAggregate(specs, *shape))
    seen, rows, _ = decode_bloom(agg["row_bloom"], *shape)
    if val_in is not None:
        val_agg = val_in.aggregate(RowBloomAggregate(specs, *shape, against=seen))
        val_seen, val_rows, hits = decode_bloom(val_agg["row_bloom"], *shape)
        fpr = seen.false_positive_rate
        overlap = {"train_val_overlap_rows": hits, "train_val_overlap_fraction": hits / max(val_rows, 1),
                   "expected_false_matches": fpr * val_rows, "method": "Bloom filter of training row hashes"}
        seen.merge(val_seen)
        rows += val_rows
    stats = agg["column_stats"]
    if stats is None or stats["__rows__"]["n"] == 0:
        raise TrainingError("the training split is empty")
    leakage = {**overlap, "id_like_columns": id_like_columns(specs, stats),
               "training_rows": {"rows": rows, "false_positive_rate": seen.false_positive_rate}}
    return stats, seen, leakage
