"""Preprocessing statistics and the Bloom filter of training rows: one pass per input, local or on Ray.

``fit_statistics`` takes either input kind: ``RayInput`` (a Ray Data job over the files)
or ``jobs.train_local.LocalInput`` (tables already read into this process); both run the
same mergeable aggregations.
"""

from __future__ import annotations

import functools

from aemodel.leakage import BloomFilter, id_like_columns
from jobs.datasets import ParquetInput, keep_split, split_cut
from jobs.errors import TrainingError
from jobs.aggregates import ColumnStatsAggregate, RowBloomAggregate, decode_bloom
from jobs.ray_runtime import aggregate_blocks
from jobs.train_config import TrainConfig


class RayInput:
    """An input's feature columns as a Ray Data job: the Ray counterpart of ``train_local.LocalInput``."""

    def __init__(self, data: ParquetInput, specs: list):
        self.data, self.specs, self.num_rows = data, specs, data.num_rows

    def aggregate(self, *aggs) -> dict:
        return aggregate_blocks(self.data.read([s.name for s in self.specs], self.specs), *aggs)


def fit_statistics(cfg: TrainConfig, specs: list, train_in, val_in) -> tuple[dict, BloomFilter, dict]:
    """Preprocessing statistics of the training rows and a Bloom filter of all rows seen.

    One pass over the training input (``train_local.LocalInput`` or ``RayInput``) computes both; with
    a separate validation input, a second pass over it adds its rows and counts those
    already in training.
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
