"""Ray glue shared by the jobs: connecting to Ray and distributed aggregations."""

from __future__ import annotations

import json
import os

import numpy as np
import ray
from ray.data.aggregate import AggregateFnV2
from ray.data.block import BlockAccessor

from aemodel.metrics import ErrorStats
from aemodel.preprocess import merge_stats, partial_stats
from aemodel.schema import ColumnSpec


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once per process.

    Under ``ray job submit`` (``RAY_ADDRESS`` set) this joins that cluster. Otherwise it
    starts a private local instance: ``ray.init()`` with no address would silently join
    any cluster already running on this machine.
    """
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=target, log_to_driver=True)


class ColumnStatsAggregate(AggregateFnV2):
    """Mergeable preprocessing statistics (``aemodel.preprocess.partial_stats``) per block."""

    def __init__(self, specs: list[ColumnSpec]):
        self._specs = specs
        super().__init__("column_stats", zero_factory=lambda: b"", on=None, ignore_nulls=False)

    def aggregate_block(self, block) -> bytes:
        table = BlockAccessor.for_block(block).to_arrow()
        return json.dumps(partial_stats(table, self._specs)).encode()

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current:
            return new
        if not new:
            return current
        return json.dumps(merge_stats(json.loads(current), json.loads(new))).encode()

    def finalize(self, accumulator: bytes) -> dict | None:
        return json.loads(accumulator) if accumulator else None


class ErrorStatsAggregate(AggregateFnV2):
    """``aemodel.metrics.ErrorStats`` over one float column, merged across blocks."""

    def __init__(self, on: str, edges: list[float], threshold: float | None,
                 extra_quantiles: dict[str, float] | None = None):
        self._edges, self._threshold, self._extra = edges, threshold, extra_quantiles
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
        return (_load(accumulator) if accumulator else self._new()).summary(self._extra)


def _dump(stats: ErrorStats) -> bytes:
    d = dict(vars(stats))
    d["sketch"] = [[k, c] for k, c in stats.sketch.items()]  # JSON keys must be strings
    return json.dumps(d).encode()


def _load(data: bytes) -> ErrorStats:
    d = json.loads(data)
    d["sketch"] = {int(k): int(c) for k, c in d["sketch"]}
    return ErrorStats(**d)
