"""Mergeable aggregations over blocks of rows: one small accumulator per block, combined in any order.

Shared by every path that summarises rows: Ray tasks (``jobs.runtime.ray_runtime.aggregate_blocks``)
and the single-process paths (``jobs.scoring.local``, ``jobs.training.local``). Plain Python
rather than subclasses of Ray's ``AggregateFnV2``: the accumulators never go through
``Dataset.aggregate`` (``aggregate_blocks`` says why), and the local paths then load
without importing Ray, about a second of a short run (bench/score_throughput.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aemodel.leakage import BloomFilter, row_hashes
from aemodel.metrics import ErrorStats
from aemodel.preprocess import merge_stats, partial_stats
from aemodel.schema import ColumnSpec


class BlockAggregate:
    """One mergeable aggregation.

    ``aggregate_block`` turns a block of rows into a small picklable accumulator,
    ``combine`` merges two (``None`` never reaches it), ``finalize`` gives the result and
    receives ``None`` when no block was seen.
    """

    name: str

    def aggregate_block(self, table: pa.Table):
        raise NotImplementedError

    def combine(self, current, new):
        raise NotImplementedError

    def finalize(self, accumulator):
        raise NotImplementedError


class Sum(BlockAggregate):
    """Sum of one numeric column, nulls skipped; None when no value was seen."""

    def __init__(self, on: str):
        self.name, self._on = on, on

    def aggregate_block(self, table: pa.Table):
        return pc.sum(table.column(self._on)).as_py()

    def combine(self, current, new):
        return new if current is None else current if new is None else current + new

    def finalize(self, accumulator):
        return accumulator


class Mean(BlockAggregate):
    """Mean of one numeric column, nulls skipped; None when no value was seen."""

    def __init__(self, on: str):
        self.name, self._on = on, on

    def aggregate_block(self, table: pa.Table) -> tuple[float, int]:
        col = table.column(self._on).cast(pa.float64())
        return pc.sum(col).as_py() or 0.0, pc.count(col).as_py()

    def combine(self, current: tuple[float, int], new: tuple[float, int]) -> tuple[float, int]:
        return current[0] + new[0], current[1] + new[1]

    def finalize(self, accumulator: tuple[float, int] | None) -> float | None:
        return accumulator[0] / accumulator[1] if accumulator and accumulator[1] else None


class MergedAggregates:
    """Accumulators of mergeable aggregations, combined on the driver in arrival order.

    Exact for the mergeable accumulators used here; shared by ``aggregate_blocks`` (parts
    from Ray tasks) and the single-process scoring path (parts from this process).
    """

    def __init__(self, aggs: tuple[BlockAggregate, ...]):
        self.aggs = aggs
        self._accs: list = [None] * len(aggs)

    @staticmethod
    def partial(table: pa.Table, aggs: tuple[BlockAggregate, ...],
                sink: Callable[[pa.Table], None] | None = None) -> list:
        """One block's accumulators, after handing the block to ``sink`` (if any)."""
        if sink is not None:
            sink(table)
        return [a.aggregate_block(table) for a in aggs]

    def add(self, parts: list) -> None:
        """Merge one block's accumulators (from ``partial``)."""
        for i, (agg, part) in enumerate(zip(self.aggs, parts)):
            if part is not None:
                self._accs[i] = part if self._accs[i] is None else agg.combine(self._accs[i], part)

    def result(self) -> dict:
        """Aggregation name -> finalized value."""
        return {a.name: a.finalize(acc) for a, acc in zip(self.aggs, self._accs)}


class ColumnStatsAggregate(BlockAggregate):
    """Mergeable preprocessing statistics (``aemodel.preprocess.partial_stats``) per block."""

    def __init__(self, specs: list[ColumnSpec], train_filter=None, log_moments: bool = False):
        """Args: specs: feature columns; train_filter: table -> table keeping training rows;
        log_moments: also the signed-log moments (``partial_stats``)."""
        self._specs, self._filter, self._log = specs, train_filter, log_moments
        self.name = "column_stats"

    def aggregate_block(self, table: pa.Table) -> bytes:
        if self._filter is not None:
            table = self._filter(table)
        return json.dumps(partial_stats(table, self._specs, self._log)).encode()

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current:
            return new
        if not new:
            return current
        return json.dumps(merge_stats(json.loads(current), json.loads(new))).encode()

    def finalize(self, accumulator: bytes) -> dict | None:
        return json.loads(accumulator) if accumulator else None


class RowBloomAggregate(BlockAggregate):
    """A Bloom filter of row hashes (``aemodel.leakage``), plus how many rows were already in ``against``.

    The accumulator is bytes: rows and overlap as two little-endian int64, then the bits.
    """

    def __init__(self, specs: list[ColumnSpec], n_bits: int, n_hashes: int, against: BloomFilter | None = None):
        self._specs, self._shape = specs, (n_bits, n_hashes)
        self._against = against.to_bytes() if against is not None else None
        self.name = "row_bloom"

    def aggregate_block(self, table: pa.Table) -> bytes:
        hashes = row_hashes(table, self._specs)
        overlap = 0
        if self._against is not None:
            overlap = int(BloomFilter(*self._shape, self._against).contains(hashes).sum())
        bits = BloomFilter(*self._shape).add(hashes).to_bytes()
        return np.array([len(hashes), overlap], dtype="<i8").tobytes() + bits

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current:
            return new
        if not new:
            return current
        counts = np.frombuffer(current[:16], dtype="<i8") + np.frombuffer(new[:16], dtype="<i8")
        bits = np.frombuffer(current[16:], dtype=np.uint8) | np.frombuffer(new[16:], dtype=np.uint8)
        return counts.astype("<i8").tobytes() + bits.tobytes()

    def finalize(self, accumulator: bytes) -> bytes:
        return accumulator  # bytes travel back to the driver as they are; see decode_bloom


def decode_bloom(accumulator: bytes | None, n_bits: int, n_hashes: int) -> tuple[BloomFilter, int, int]:
    """(filter, rows, rows found in ``against``) from a ``RowBloomAggregate`` result."""
    if not accumulator:
        return BloomFilter(n_bits, n_hashes), 0, 0
    rows, overlap = (int(x) for x in np.frombuffer(accumulator[:16], dtype="<i8"))
    return BloomFilter(n_bits, n_hashes, accumulator[16:]), rows, overlap


class TopFeaturesAggregate(BlockAggregate):
    """Per column: rows it leads (largest error), flagged rows it leads, rows it is in the top k, its share sum.

    Counts by the dictionary indices of ``top_features.column`` (``aemodel.scoring.TOP_FEATURE_TYPE``).
    """

    def __init__(self, on: str = "top_features"):
        self.name, self._on = "top_features", on

    def aggregate_block(self, table: pa.Table) -> bytes:
        col = table.column(self._on).combine_chunks()
        if len(col) == 0:
            return b""
        column, share = pc.list_flatten(col).flatten()[:2]  # flatten(): children with the slice's offset applied
        names, n = column.dictionary.to_pylist(), len(column.dictionary)
        idx = column.indices.to_numpy(zero_copy_only=False)
        offsets = col.offsets.to_numpy()
        first, has_any = offsets[:-1] - offsets[0], offsets[1:] > offsets[:-1]  # row i's first entry in idx
        flagged = has_any & np.asarray(table.column("is_anomaly").to_numpy(), dtype=bool) \
            if "is_anomaly" in table.column_names else np.zeros_like(has_any)
        in_topk = np.bincount(idx, minlength=n)
        shares = np.bincount(idx, weights=share.to_numpy(zero_copy_only=False), minlength=n)

        def per_column(values: np.ndarray, listed: np.ndarray) -> dict:
            return {names[i]: values[i].item() for i in np.flatnonzero(listed)}

        top1, top1_flagged = (np.bincount(idx[first[rows]], minlength=n) for rows in (has_any, flagged))
        acc = {"top1_rows": per_column(top1, top1), "top1_flagged_rows": per_column(top1_flagged, top1_flagged),
               "topk_rows": per_column(in_topk, in_topk), "share_sum": per_column(shares, in_topk)}
        return json.dumps(acc).encode()

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current:
            return new
        if not new:
            return current
        a, b = json.loads(current), json.loads(new)
        for key in a:
            for name, v in b[key].items():
                a[key][name] = a[key].get(name, 0) + v
        return json.dumps(a).encode()

    def finalize(self, accumulator: bytes) -> bytes:
        return accumulator or json.dumps({"top1_rows": {}, "top1_flagged_rows": {}, "topk_rows": {},
                                          "share_sum": {}}).encode()


class ErrorStatsAggregate(BlockAggregate):
    """``aemodel.metrics.ErrorStats`` over one float column, merged across blocks."""

    def __init__(self, on: str, edges: list[float], threshold: float | None,
                 extra_quantiles: dict[str, float] | None = None, with_sketch: bool = False):
        """``with_sketch`` adds the quantile sketch as ``sketch`` ([[bucket, count], ...])."""
        self._edges, self._threshold, self._extra, self._with_sketch = edges, threshold, extra_quantiles, with_sketch
        self.name, self._on = f"error_stats({on})", on

    def _new(self) -> ErrorStats:
        return ErrorStats(edges=self._edges, threshold=self._threshold)

    def aggregate_block(self, table: pa.Table) -> bytes:
        col = table.column(self._on)
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return _dump(self._new().update(values))

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current:
            return new
        if not new:
            return current
        return _dump(_load(current).merge(_load(new)))

    def finalize(self, accumulator: bytes) -> dict:
        stats = _load(accumulator) if accumulator else self._new()
        out = stats.summary(self._extra)
        if self._with_sketch:
            out["sketch"] = [[k, c] for k, c in stats.sketch.items()]
        return out


def _dump(stats: ErrorStats) -> bytes:
    d = dict(vars(stats))
    d["sketch"] = [[k, c] for k, c in stats.sketch.items()]  # JSON keys must be strings
    return json.dumps(d).encode()


def _load(data: bytes) -> ErrorStats:
    d = json.loads(data)
    d["sketch"] = {int(k): int(c) for k, c in d["sketch"]}
    return ErrorStats(**d)
