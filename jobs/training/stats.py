"""The training statistics pass on Ray Data: ``RayInput`` for ``aemodel.statistics.fit_statistics``.

``fit_statistics`` takes either input kind: ``RayInput`` (a Ray Data job over the files)
or ``jobs.training.local.LocalInput`` (tables already read into this process); both run the
same mergeable aggregations.
"""

from __future__ import annotations

from jobs.data.datasets import ParquetInput
from jobs.runtime.ray_runtime import aggregate_blocks


class RayInput:
    """An input's feature columns as a Ray Data job: the Ray counterpart of ``train_local.LocalInput``."""

    def __init__(self, data: ParquetInput, specs: list):
        self.data, self.specs, self.num_rows = data, specs, data.num_rows

    def aggregate(self, *aggs) -> dict:
        """``aggregate_blocks`` of the aggregations over the input's feature columns."""
        return aggregate_blocks(self.data.read([s.name for s in self.specs], self.specs), *aggs)
