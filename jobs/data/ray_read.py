"""Ray Data's Parquet read sized to the input: its listing and read-task knobs, decided on the driver.

Ray 2.60's Parquet read (``ReadFilesParquetV2``) lists the input in one task that reads
every file's footer again on a pool of footer-reading actors: 32 actors by default, each a
Python worker of its own, batches of 10 files per call and one object per file. On a
small cluster the actors' start-up is most of a short job's fixed cost, and 10,000 small
files became 10,000 results to fetch (bench/score_files.py). It then packs the listed
files into read tasks of up to 128 MiB (uncompressed, as the footers count it), so a small
input became one or two tasks however many CPUs wait, and a large one many tasks whose
scheduling gaps add up. Ray exposes these as environment variables, read when
``read_parquet`` builds the plan on the driver; ``read_settings`` sizes them from what the
input checks already know (files, rows, column types) and the cluster's CPUs. A value the
user has set in the environment is kept.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import pyarrow as pa

FILES_PER_FOOTER_ACTOR = 5_000
"""Footers one listing actor reads (its 128 concurrent reads keep up with an object store)."""
READ_TASKS_PER_CPU = 4
"""Read tasks per CPU: enough that the last tasks do not leave CPUs idle, few enough that Ray
Data's gap between one task's end and the next one's start (about 0.15 s here) stays small."""
MIN_READ_TASK_BYTES, MAX_READ_TASK_BYTES = 16 * 2**20, 256 * 2**20
"""Bounds of a read task's uncompressed bytes. A task streams its files in blocks of Ray's
``target_max_block_size``, so a larger task does not hold more of them in memory."""
UNKNOWN_WIDTH = 32
"""Bytes per value assumed for a column of variable width (strings, lists)."""


def in_memory_bytes(schema: pa.Schema, rows: int) -> int:
    """Estimated bytes of ``rows`` rows of ``schema`` as Arrow arrays (and uncompressed in Parquet)."""
    width = 0
    for f in schema:
        try:
            width += max(1, f.type.bit_width // 8)
        except ValueError:  # not a fixed-width type
            width += UNKNOWN_WIDTH
    return rows * width


def read_settings(files: int, size: int, cpus: float) -> dict[str, str]:
    """Ray Data's Parquet read knobs for an input of ``files`` files and ``size`` bytes.

    Args:
        files: Files in the input.
        size: Uncompressed bytes of the columns read (``in_memory_bytes`` of each file).
        cpus: The cluster's CPUs.

    Returns:
        Environment variable -> value.
    """
    actors = min(32, max(1, math.ceil(files / FILES_PER_FOOTER_ACTOR)))
    batch = min(500, max(10, math.ceil(files / (4 * actors))))
    task_bytes = size / max(1.0, READ_TASKS_PER_CPU * cpus)
    return {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": str(actors),
            "RAY_DATA_PARQUET_FOOTER_BATCH_SIZE": str(batch),
            "RAY_DATA_PARQUET_FOOTER_RESULT_BATCH_SIZE": str(batch),
            "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(int(min(MAX_READ_TASK_BYTES,
                                                              max(MIN_READ_TASK_BYTES, task_bytes))))}


@contextlib.contextmanager
def settings_in_environment(settings: dict[str, str]) -> Iterator[dict[str, str]]:
    """Set ``settings`` in this process's environment for the ``with`` block; yields those applied.

    A variable already set (by the user) keeps its value; the others are removed again after.
    """
    applied = {k: v for k, v in settings.items() if k not in os.environ}
    os.environ.update(applied)
    try:
        yield applied
    finally:
        for k in applied:
            os.environ.pop(k, None)
