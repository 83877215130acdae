"""The deterministic train/validation split: a hash of each row's feature values.

Identical rows always land on the same side, so no validation row is also a training row
(no leakage), and the split is the same in every process, run and machine, whether Ray
Data, the single-machine path or the Python API (``aemodel.estimator``) makes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def _row_buckets(table: pa.Table, columns: list[str]) -> np.ndarray:
    """A stable bucket in [0, 10000) per row from a hash of its feature values.

    pandas' hash is seeded with a fixed key, so the split is the same in every process,
    run and machine; identical rows always land on the same side (no leakage).
    """
    h = pd.util.hash_pandas_object(table.select(columns).to_pandas(), index=False).to_numpy()
    return (h % np.uint64(10_000)).astype(np.int64)


def keep_split(table: pa.Table, columns: list[str], cut: int, validation: bool) -> pa.Table:
    """The rows of ``table`` on one side of the row-hash split (bucket < cut: validation)."""
    in_val = _row_buckets(table, columns) < cut
    return table.filter(pa.array(in_val if validation else ~in_val))


def split_cut(val_fraction: float) -> int:
    """The bucket below which a row is a validation row, for ``val_fraction``."""
    return int(round(val_fraction * 10_000))
