"""Ray glue shared by the jobs: connecting to Ray and distributed aggregations."""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data.aggregate import AggregateFnV2
from ray.data.block import BlockAccessor

from aemodel.leakage import BloomFilter, row_hashes
from aemodel.metrics import ErrorStats
from aemodel.preprocess import merge_stats, partial_stats
from aemodel.schema import ColumnSpec
from jobs.progress import Progress, is_verbose


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster a job is pointed at: ``address``, else ``RAY_ADDRESS``; None for none."""
    return address or os.environ.get("RAY_ADDRESS") or None


def on_one_machine(address: str | None = None) -> bool:
    """Nothing points at a Ray cluster: no ``address``, no ``RAY_ADDRESS``, no multi-node Ray already joined."""
    return cluster_address(address) is None and not (ray.is_initialized() and alive_nodes() > 1)


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once per process.

    Under ``ray job submit`` (``RAY_ADDRESS`` set) this joins that cluster. Otherwise it
    starts a private local instance: ``ray.init()`` with no address would silently join
    any cluster already running on this machine.
    """
    if ray.is_initialized():
        return
    target = cluster_address(address) or "local"
    verbose = is_verbose()
    if not verbose:
        quiet_ray_console()
    # Workers' output still reaches the driver: a Train worker prints the epoch lines.
    ray.init(address=target, log_to_driver=True, logging_level=logging.INFO if verbose else logging.WARNING)
    if not verbose:
        quiet_ray_console()  # ray.init replaces the "ray" logger's handlers


class _RayConsoleNoise(logging.Filter):
    """Drops Ray's console messages that are about Ray itself, not about the job."""

    NOISE = ("Token authentication is enabled", "Progress bars disabled", "Progress bars for operators disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(n in str(record.msg) for n in self.NOISE)


def quiet_ray_console() -> None:
    """Ray's console shows warnings and errors only, and no progress blocks; its log files keep everything.

    Ray Data logs execution plans and (off a terminal) a progress block every few seconds
    at INFO on the console; Ray Train logs every report. The job prints its own progress
    (``jobs.progress``) instead. ``-v`` skips this.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
                if not any(isinstance(f, _RayConsoleNoise) for f in handler.filters):
                    handler.addFilter(_RayConsoleNoise())


def alive_nodes() -> int:
    """Alive nodes of the connected Ray cluster."""
    return sum(1 for n in ray.nodes() if n["Alive"])


class MergedAggregates:
    """Accumulators of mergeable aggregations, combined on the driver in arrival order.

    Exact for the mergeable accumulators used here; shared by ``aggregate_blocks`` (parts
    from Ray tasks) and the single-process scoring path (parts from this process).
    """

    def __init__(self, aggs: tuple[AggregateFnV2, ...]):
        self.aggs = aggs
        self._accs: list = [None] * len(aggs)

    @staticmethod
    def partial(table: pa.Table, aggs: tuple[AggregateFnV2, ...],
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
        # An empty dataset: aescore's aggregations finalize their empty accumulator b"";
        # Ray's built-ins (Sum, Mean) give None.
        return {a.name: a.finalize(acc) if acc is not None else
                (None if type(a).__module__.startswith("ray.") else a.finalize(b""))
                for a, acc in zip(self.aggs, self._accs)}


def aggregate_blocks(ds: ray.data.Dataset, *aggs: AggregateFnV2, sink: Callable[[pa.Table], None] | None = None,
                     progress: Progress | None = None, rows_per_call: int | None = None) -> dict:
    """``Dataset.aggregate(*aggs)`` as one map over blocks plus a merge on the driver.

    Each block yields one small accumulator per aggregation (never rows); the driver
    combines them (``MergedAggregates``). A keyless ``Dataset.aggregate`` in Ray 2.60 runs
    a hash shuffle through aggregator actors, which costs seconds of fixed overhead per
    call on a small cluster.

    Args:
        ds: The rows.
        aggs: Mergeable aggregations.
        sink: Called with each block first, in the worker (scoring writes it there), so the
            rows are written and summarised in one pass.
        progress: Counts the rows as their blocks finish.
        rows_per_call: Rows handed to ``sink`` and the accumulators at once (Ray Data
            bundles blocks up to it); default one block per call.
    """
    def partial(table: pa.Table) -> dict:
        return {"rows": [table.num_rows], "acc": [pickle.dumps(MergedAggregates.partial(table, aggs, sink))]}

    merged = MergedAggregates(aggs)
    for batch in ds.map_batches(partial, batch_format="pyarrow", batch_size=rows_per_call).iter_batches(
            batch_format="pyarrow", batch_size=None):
        for rows, blob in zip(batch.column("rows").to_pylist(), batch.column("acc").to_pylist()):
            merged.add(pickle.loads(blob))  # our own workers' output
            if progress is not None:
                progress.update(rows)
    return merged.result()


class ColumnStatsAggregate(AggregateFnV2):
    """Mergeable preprocessing statistics (``aemodel.preprocess.partial_stats``) per block."""

    def __init__(self, specs: list[ColumnSpec], train_filter=None, log_moments: bool = False):
        """Args: specs: feature columns; train_filter: table -> table keeping training rows;
        log_moments: also the signed-log moments (``partial_stats``)."""
        self._specs, self._filter, self._log = specs, train_filter, log_moments
        super().__init__("column_stats", zero_factory=lambda: b"", on=None, ignore_nulls=False)

    def aggregate_block(self, block) -> bytes:
        table = BlockAccessor.for_block(block).to_arrow()
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


class RowBloomAggregate(AggregateFnV2):
    """A Bloom filter of row hashes (``aemodel.leakage``), plus how many rows were already in ``against``.

    The accumulator is bytes: rows and overlap as two little-endian int64, then the bits.
    """

    def __init__(self, specs: list[ColumnSpec], n_bits: int, n_hashes: int, against: BloomFilter | None = None):
        self._specs, self._shape = specs, (n_bits, n_hashes)
        self._against = against.to_bytes() if against is not None else None
        super().__init__("row_bloom", zero_factory=lambda: b"", on=None, ignore_nulls=False)

    def aggregate_block(self, block) -> bytes:
        hashes = row_hashes(BlockAccessor.for_block(block).to_arrow(), self._specs)
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


class TopFeaturesAggregate(AggregateFnV2):
    """Per column: rows it leads (largest error), flagged rows it leads, rows it is in the top k, its share sum."""

    def __init__(self, on: str = "top_features"):
        super().__init__("top_features", zero_factory=lambda: b"", on=on, ignore_nulls=False)

    def aggregate_block(self, block) -> bytes:
        table = BlockAccessor.for_block(block).to_arrow()
        col = table.column(self.get_target_column()).combine_chunks()
        flat = pc.list_flatten(col)
        grouped = pa.table({"c": flat.field("column"), "s": flat.field("share")}).group_by("c").aggregate(
            [("s", "sum"), ("s", "count")])
        has_any = pc.greater(pc.list_value_length(col), 0)
        flagged = pc.and_(has_any, table.column("is_anomaly").combine_chunks()) if "is_anomaly" in table.column_names \
            else pc.and_(has_any, False)

        def leaders(mask) -> dict:
            counts = pc.value_counts(pc.list_element(col.filter(mask), 0).field("column"))
            return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))

        names = grouped.column("c").to_pylist()
        acc = {"top1_rows": leaders(has_any), "top1_flagged_rows": leaders(flagged),
               "topk_rows": dict(zip(names, grouped.column("s_count").to_pylist())),
               "share_sum": dict(zip(names, grouped.column("s_sum").to_pylist()))}
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


class ErrorStatsAggregate(AggregateFnV2):
    """``aemodel.metrics.ErrorStats`` over one float column, merged across blocks."""

    def __init__(self, on: str, edges: list[float], threshold: float | None,
                 extra_quantiles: dict[str, float] | None = None, with_sketch: bool = False):
        """``with_sketch`` adds the quantile sketch as ``sketch`` ([[bucket, count], ...])."""
        self._edges, self._threshold, self._extra, self._with_sketch = edges, threshold, extra_quantiles, with_sketch
        super().__init__(f"error_stats({on})", zero_factory=lambda: b"", on=on, ignore_nulls=False)

    def _new(self) -> ErrorStats:
        return ErrorStats(edges=self._edges, threshold=self._threshold)

    def aggregate_block(self, block) -> bytes:
        col = BlockAccessor.for_block(block).to_arrow().column(self.get_target_column())
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
