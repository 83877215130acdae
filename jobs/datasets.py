"""Reading Parquet inputs into Ray Data: validation up front, splits, encoding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import ray.data

from aemodel.preprocess import Preprocessor
from aemodel.schema import ColumnSpec, check_schema
from jobs.errors import InputError
from jobs.storage import ParquetFileInfo, arrow_filesystem, inspect_parquet_files, list_parquet_files


@dataclass
class ParquetInput:
    """A validated Parquet input: the non-empty files and what was skipped."""

    uri: str
    fs: object  # fsspec filesystem
    files: list[ParquetFileInfo]
    skipped_empty: list[str]

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def schema(self) -> pa.Schema:
        return self.files[0].schema

    def read(self, columns: list[str] | None = None, include_row_hash: bool = False) -> ray.data.Dataset:
        """The files as a Ray Dataset (lazy), only ``columns`` if given."""
        ds = ray.data.read_parquet([f.path for f in self.files], filesystem=arrow_filesystem(self.fs),
                                   include_row_hash=include_row_hash, file_extensions=None)
        if columns is not None:
            ds = ds.select_columns(columns + (["row_hash"] if include_row_hash else []))
        return ds


def open_parquet_input(uri: str, storage_options: dict | None = None,
                       specs: list[ColumnSpec] | None = None) -> ParquetInput:
    """List and check a Parquet input without reading its data.

    Empty files are skipped (and reported); every other file must be readable Parquet
    and, when ``specs`` is given, hold every feature column with a compatible type.

    Raises:
        InputError: Missing path, no files, corrupt file, no rows at all.
        SchemaError: A file lacks a feature column or has an incompatible type.
    """
    fs, paths = list_parquet_files(uri, storage_options)
    infos = inspect_parquet_files(fs, paths)
    files = [f for f in infos if f.num_rows > 0]
    skipped = [f.uri for f in infos if f.num_rows == 0]
    if not files:
        raise InputError(f"{uri}: {len(infos)} Parquet file(s) but zero rows in total")
    for f in files:
        if specs is not None:
            check_schema(f.schema, specs, f.uri)
    return ParquetInput(uri=uri, fs=fs, files=files, skipped_empty=skipped)


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
    return int(round(val_fraction * 10_000))


def hash_split(ds: ray.data.Dataset, columns: list[str], val_fraction: float
               ) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """Deterministic train/validation split by row hash."""
    args = {"columns": columns, "cut": split_cut(val_fraction)}
    train = ds.map_batches(keep_split, fn_kwargs={**args, "validation": False}, batch_format="pyarrow",
                           batch_size=None, udf_modifying_row_count=True)
    val = ds.map_batches(keep_split, fn_kwargs={**args, "validation": True}, batch_format="pyarrow",
                         batch_size=None, udf_modifying_row_count=True)
    return train, val


def encode(ds: ray.data.Dataset, pp: Preprocessor) -> ray.data.Dataset:
    """Model-ready tensors per row: x_num, x_bin, x_cat, observed (see Preprocessor.transform)."""

    def transform(table: pa.Table) -> dict[str, np.ndarray]:
        enc = pp.transform(table)
        return {k: enc[k] for k in ("x_num", "x_bin", "x_cat", "observed")}

    return ds.map_batches(transform, batch_format="pyarrow", batch_size=4096)
