"""Reading Parquet inputs (into Ray Data, or in this process): validation up front, splits, encoding."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from aemodel.preprocess import Preprocessor
from aemodel.split import keep_split, split_cut
from aemodel.schema import READ_TYPES, ColumnSpec, SchemaError, check_schema
from jobs.runtime.errors import InputError, describe, error_chain, find_user_error
from jobs.data.chunks import ROW_HASH, iter_chunks, iter_part_tables, whole_files
from jobs.data.storage import ParquetFileInfo, arrow_filesystem, inspect_parquet_files, list_parquet_files

if TYPE_CHECKING:
    import ray.data

    from jobs.data.ray_read import ParquetInputDatasource



@dataclass
class ParquetInput:
    """A validated Parquet input: the non-empty files and what was skipped."""

    uri: str
    fs: object  # fsspec filesystem
    files: list[ParquetFileInfo]
    skipped_empty: list[str]
    skipped_other: list[str] = field(default_factory=list)
    """Files in the input folder without the .parquet extension (not read)."""

    @functools.cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem the data is read with (``jobs.data.storage.arrow_filesystem``)."""
        return arrow_filesystem(self.fs)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    @property
    def schema(self) -> pa.Schema:
        return self.files[0].schema

    def read_schema(self, columns: list[str], specs: list[ColumnSpec] | None = None,
                    keep: tuple[str, ...] = ()) -> pa.Schema:
        """One Arrow type per column for every file: canonical for features, unified for the rest.

        Args:
            columns: The columns to read.
            specs: The feature columns (read as float64 or string by kind).
            keep: Columns read with their own (unified) type even if they are features: id
                columns are written back as they came (an int64 id stays int64); the
                preprocessing converts the feature's copy itself.

        Raises:
            InputError: A non-feature column (an id, a label) has types in two files that
                do not unify; names both files.
        """
        kinds = {s.name: s.kind for s in specs or [] if s.name not in keep}
        fields = []
        for name in columns:
            if name in kinds:
                # One type per feature in every file (aemodel.schema.READ_TYPES): cast per file while
                # reading, instead of failing when Ray Data merges the files' schemas.
                fields.append(pa.field(name, READ_TYPES[kinds[name]]))
                continue
            first, target = None, None
            for f in self.files:
                t = f.schema.field(name).type
                t = t.value_type if pa.types.is_dictionary(t) else t
                try:
                    target = t if target is None else pa.unify_schemas(
                        [pa.schema([pa.field(name, target)]), pa.schema([pa.field(name, t)])],
                        promote_options="permissive").field(name).type
                except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError) as e:
                    raise InputError(f"{f.uri}: column {name!r} has type {t}, which does not match {target} "
                                     f"in {first}") from e
                first = first or f.uri
            fields.append(pa.field(name, target))
        return pa.schema(fields)

    def read(self, columns: list[str], specs: list[ColumnSpec] | None = None,
             include_row_hash: bool = False, keep: tuple[str, ...] = (), num_cpus: float = 1) -> ray.data.Dataset:
        """The files as a Ray Dataset (lazy): only ``columns``, each with one type in every file.

        Read tasks come from the footers already read (``jobs.data.ray_read``); folder names
        are never read as columns (no hive partitioning), so a ``key=value`` folder can
        neither replace a file's values nor become a feature by accident. ``include_row_hash``
        adds ``row_hash`` (file and position; ``jobs.data.chunks.synthetic_row_hashes``).
        ``num_cpus``: the CPUs of each read task; Ray Data fuses the read only into a map
        that asks for the same resources.
        """
        from jobs.data.ray_read import read_source  # here: the single-process paths never load Ray

        return read_source(self.ray_source(columns, specs, include_row_hash, keep), num_cpus)

    def ray_source(self, columns: list[str], specs: list[ColumnSpec] | None = None, include_row_hash: bool = False,
                   keep: tuple[str, ...] = ()) -> ParquetInputDatasource:
        """The Ray Data source ``read`` reads (its ``num_tasks`` sizes what follows it)."""
        import ray

        from jobs.data.ray_read import ParquetInputDatasource

        return ParquetInputDatasource(self.arrow_fs, self.files, self.read_schema(columns, specs, keep),
                                      include_row_hash, ray.cluster_resources().get("CPU", 1))

    def iter_tables(self, columns: list[str], specs: list[ColumnSpec] | None = None,
                    rows: int = 100_000, keep: tuple[str, ...] = ()) -> Iterator[tuple[ParquetFileInfo, int, pa.Table]]:
        """The files' ``columns`` in this process, in chunks of at most ``rows`` rows, typed as ``read`` types them.

        Yields:
            (file, index of the chunk's first row in that file, chunk), file by file in order.
        """
        parts = iter_part_tables(self.arrow_fs, whole_files(self.files), self.read_schema(columns, specs, keep), rows)
        files = {f.path: f for f in self.files}
        return ((files[part.path], start, table) for part, start, table in parts)

    def iter_chunks(self, columns: list[str], specs: list[ColumnSpec], rows: int,
                    keep: tuple[str, ...] = ()) -> Iterator[pa.Table]:
        """The input's ``columns`` plus ``row_hash`` in this process, as a Ray read task reads them
        (``jobs.data.chunks.iter_chunks``; ``keep``: columns read with their own type)."""
        return iter_chunks(self.arrow_fs, whole_files(self.files), self.read_schema(columns, specs, keep), rows)

    def locate(self, columns: list[str], specs: list[ColumnSpec] | None = None,
               check: Callable[[pa.Table], object] | None = None,
               budget_s: float = 300.0) -> tuple[str, Exception] | None:
        """After a failed pipeline: the first file whose ``columns`` fail to read or fail ``check``.

        Reads file by file on the driver, so it runs only after a failure, for at most
        ``budget_s`` seconds.
        """
        deadline, schema = time.monotonic() + budget_s, self.read_schema(columns, specs)
        for part in whole_files(self.files):
            if time.monotonic() > deadline:
                return None
            try:  # with the reader that failed: the same filesystem client, casts and errors
                table = pa.concat_tables(t for _, _, t in iter_part_tables(self.arrow_fs, [part], schema, part.num_rows))
                if check is not None:
                    check(table)
            except Exception as e:  # noqa: BLE001 - any failure on this file is the answer
                return part.uri, e
        return None


def skipped_files_warning(where: str, skipped: list[str]) -> str | None:
    """The warning for entries of an input folder left unread: no .parquet extension, not a regular
    file (a FIFO, a socket), or a Parquet file under a ``_``/``.`` name; None if there are none."""
    if not skipped:
        return None
    return (f"{len(skipped)} file(s) in {where} lack the .parquet extension, are not regular files, or sit under a "
            f"name starting with _ or . (markers, temporary output), and were not read (e.g. {skipped[0]}); rename "
            "them or pass a glob that names them")


def check_columns(f: ParquetFileInfo, needed: list[str]) -> None:
    """Refuse a file whose schema repeats a column that a run reads."""
    names = f.schema.names
    dup = sorted({n for n in needed if names.count(n) > 1})
    if dup:
        raise InputError(f"{f.uri}: column(s) {dup} appear more than once in the file")


def check_features(f: ParquetFileInfo, specs: list[ColumnSpec]) -> None:
    """Refuse a file whose feature columns cannot be read as the model reads them.

    Raises:
        InputError: A repeated column; a feature named ``row_hash`` (the synthetic row id:
            reading adds it, and a column of that name would be replaced); a numeric or
            binary feature holding integers float64 cannot represent (beyond +/- 2**53,
            from the footer statistics).
        SchemaError: A missing feature column or an incompatible type.
    """
    check_columns(f, [s.name for s in specs])
    if any(s.name == ROW_HASH for s in specs):
        raise InputError(f"{f.uri}: column {ROW_HASH!r} is a feature, but aescore reserves that name for its "
                         "synthetic row id (reading adds it, replacing a column of that name); rename the column, "
                         f"or leave it out (--exclude-columns {ROW_HASH})")
    check_schema(f.schema, specs, f.uri)
    for s in specs:
        if s.kind != "categorical" and s.name in f.wide_integers:
            raise InputError(f"{f.uri}: column {s.name!r} holds integers up to {f.wide_integers[s.name]:.3g}, beyond "
                             f"2**53, which a float64 cannot hold exactly; if it is an id or a hash, leave it out "
                             f"(--exclude-columns {s.name}), if it is a quantity, store it as float64")


def open_parquet_input(uri: str, storage_options: dict | None = None,
                       specs: list[ColumnSpec] | None = None) -> ParquetInput:
    """List and check a Parquet input without reading its data.

    Empty files are skipped (and reported); every other file must be readable Parquet
    and, when ``specs`` is given, hold every feature column with a compatible type.

    Raises:
        InputError: Missing path, no files, corrupt file, no rows at all, a repeated column.
        SchemaError: A file lacks a feature column or has an incompatible type.
    """
    fs, paths, other = list_parquet_files(uri, storage_options)
    infos = inspect_parquet_files(fs, paths)
    files = [f for f in infos if f.num_rows > 0]
    skipped = [f.uri for f in infos if f.num_rows == 0]
    if not files:
        raise InputError(f"{uri}: {len(infos)} Parquet file(s) but zero rows in total")
    for f in files:
        if specs is None:
            check_columns(f, f.schema.names)
        else:
            check_features(f, specs)
    return ParquetInput(uri=uri, fs=fs, files=files, skipped_empty=skipped, skipped_other=other)


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


def explain_failure(exc: BaseException, data: ParquetInput, columns: list[str], specs: list[ColumnSpec] | None,
                    check: Callable[[pa.Table], object] | None) -> InputError | None:
    """A user error naming the input file behind a failed Ray pipeline, when one file is at fault.

    Errors raised inside Ray tasks (a binary column holding a 2, a corrupt data page) do
    not know which file their rows came from. When the failure is a user error without a
    file name, or a read error, the files are re-checked one by one on the driver.
    """
    user = find_user_error(exc)
    if user is not None and (any(f.uri in str(user) for f in data.files) or not isinstance(user, (InputError,
                                                                                                 SchemaError))):
        return None
    if user is None and not any(isinstance(e, (OSError, pa.ArrowException)) for e in error_chain(exc)):
        return None
    found = data.locate(columns, specs, check)
    if found is None:
        return None
    uri, err = found
    return InputError(f"{uri}: {describe(err)}")
