"""Reading Parquet files in this process: file parts, typed chunks and the synthetic row id.

The one reader of both paths: the local path iterates ``iter_chunks`` over the whole input,
and each Ray Data read task (``jobs.data.ray_read``) over its share of the input's file
parts, so a row is typed, chunked and named (``row_hash``) the same whichever path read it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.data.storage import ParquetFileInfo
from jobs.runtime.errors import InputError

ROW_HASH = "row_hash"
"""The synthetic row id reading adds (file and position): the rows' id when no --id-columns
are given, and what names each written row file."""
UNKNOWN_WIDTH = 32
"""Bytes per value assumed for a column of variable width (strings, lists)."""


@dataclass(frozen=True)
class FilePart:
    """Row groups ``groups`` of the file at ``path`` (None: the whole file), from row ``first_row`` of the file.

    Only what reading needs: a Ray read task carries thousands of these for an input of
    small files.
    """

    path: str
    uri: str
    num_rows: int
    groups: tuple[int, ...] | None = None
    first_row: int = 0


def in_memory_bytes(schema: pa.Schema, rows: int) -> int:
    """Estimated bytes of ``rows`` rows of ``schema`` as Arrow arrays (and uncompressed in Parquet)."""
    width = 0
    for f in schema:
        try:
            width += max(1, f.type.bit_width // 8)
        except ValueError:  # not a fixed-width type
            width += UNKNOWN_WIDTH
    return rows * width


def whole_files(files: list[ParquetFileInfo]) -> list[FilePart]:
    """Each file as one part."""
    return [FilePart(f.path, f.uri, f.num_rows) for f in files]


def split_parts(files: list[ParquetFileInfo], width: int, max_bytes: int) -> list[FilePart]:
    """The files as parts of at most ``max_bytes`` (rows of ``width`` bytes), cut at row-group boundaries.

    A file within ``max_bytes`` stays whole; a larger one becomes runs of consecutive row
    groups, each within ``max_bytes`` unless one row group alone is larger.
    """
    parts = []
    for f in files:
        if f.num_rows * width <= max_bytes or len(f.row_groups) <= 1:
            parts.append(FilePart(f.path, f.uri, f.num_rows))
            continue
        run: list[int] = []
        run_rows = first = 0
        for g, rows in enumerate(f.row_groups):
            if run and (run_rows + rows) * width > max_bytes:
                parts.append(FilePart(f.path, f.uri, run_rows, tuple(run), first))
                run, first, run_rows = [], first + run_rows, 0
            run.append(g)
            run_rows += rows
        parts.append(FilePart(f.path, f.uri, run_rows, tuple(run), first))
    return parts


def synthetic_row_hashes(path: str, start_row: int, num_rows: int) -> np.ndarray:
    """uint64 ids of rows ``start_row ..`` of the file at ``path``, as Ray Data's ``include_row_hash``.

    Ray 2.60 hashes the file path with MD5 (first 8 bytes, little-endian), adds the row
    positions and mixes each with the splitmix64 finalizer; reproduced here so that the id
    is the one Ray's own Parquet read would give the row. A test pins it to Ray's output.
    """
    seed = np.uint64(int.from_bytes(hashlib.md5(path.encode("utf-8")).digest()[:8], byteorder="little"))
    with np.errstate(over="ignore"):
        keys = seed + np.arange(start_row, start_row + num_rows, dtype=np.uint64)
        keys ^= keys >> np.uint64(30)
        keys *= np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(27)
        keys *= np.uint64(0x94D049BB133111EB)
        keys ^= keys >> np.uint64(31)
    return keys


def cast_table(table: pa.Table, schema: pa.Schema, uri: str) -> pa.Table:
    """``table`` cast to ``schema`` column by column; a value that does not convert names its file and column.

    Raises:
        InputError: A cell does not convert (an integer beyond 2**53 in a file without
            footer statistics, a string where a number is expected).
    """
    if table.schema.equals(schema):
        return table
    columns = []
    for name, target in zip(schema.names, schema.types):
        col = table.column(name)
        try:
            columns.append(col if col.type == target else col.cast(target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InputError(f"{uri}: column {name!r} ({col.type}) cannot be read as {target}: {e}") from e
    return pa.Table.from_arrays(columns, schema=schema)


def iter_part_tables(fs: pafs.FileSystem, parts: list[FilePart], schema: pa.Schema,
                     rows: int) -> Iterator[tuple[FilePart, int, pa.Table]]:
    """The parts' columns (``schema``'s names, cast to it), in chunks of at most ``rows`` rows.

    ``fs`` is the input's pyarrow filesystem (``jobs.data.storage.arrow_filesystem``: S3's
    native client, with its retries).

    Each file's reader is closed before the next opens, and when the caller stops early
    (a failed batch): no Parquet decode is left running in pyarrow's threads.

    Yields:
        (part, index of the chunk's first row in the part's file, chunk), part by part in order.
    """
    columns = schema.names
    for part in parts:
        with fs.open_input_file(part.path) as fh, pq.ParquetFile(fh) as pf:
            start = part.first_row
            for batch in pf.iter_batches(batch_size=rows, row_groups=part.groups, columns=columns, use_threads=False):
                table = cast_table(pa.Table.from_batches([batch]).select(columns), schema, part.uri)
                yield part, start, table
                start += table.num_rows


def iter_chunks(fs: pafs.FileSystem, parts: list[FilePart], schema: pa.Schema, rows: int,
                row_hash: bool = True) -> Iterator[pa.Table]:
    """The parts' columns (plus ``row_hash`` unless ``row_hash`` is False), in chunks of ``rows`` rows or more.

    Consecutive small files are joined into one chunk (under ``2 * rows``): each chunk is
    scored in ``batch_size`` calls and written as one row file, so 10,000 files of 100 rows
    make ten chunks, not 10,000 model calls and row files (bench/score_files.py).
    """
    pending: list[pa.Table] = []
    held = 0
    for part, start, table in iter_part_tables(fs, parts, schema, rows):
        if row_hash:
            hashes = synthetic_row_hashes(part.path, start, table.num_rows)
            table = table.append_column(ROW_HASH, pa.array(hashes, type=pa.uint64()))
        pending.append(table)
        held += table.num_rows
        if held >= rows:
            yield pa.concat_tables(pending)
            pending, held = [], 0
    if pending:
        yield pa.concat_tables(pending)
