"""Ray Data's read of a checked Parquet input: read tasks made from the footers the driver read.

``ray.data.read_parquet`` lists the input again on the cluster: Ray 2.60 runs a listing
task that reads every footer a second time on a pool of footer-reading actors (32 by
default, each a Python process of its own) before the first read task starts. The driver
has read every footer already (``open_parquet_input``, the input checks), so
``ParquetInputDatasource`` (Ray Data's public ``Datasource`` API) makes the read tasks from
them: the first task starts when the plan runs, no listing task or actor shares the CPUs,
and each footer is read once (bench/score_throughput.py: the first rows of a job that
joins a running Ray, and the whole process). Each task reads its file parts in order with
``jobs.data.chunks``, the local path's reader: a row's type and ``row_hash`` do not depend
on the path that read it. Transient storage errors are retried by the filesystem (s3fs,
gcsfs); a task whose worker dies is retried by Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from jobs.data.chunks import ROW_HASH, FilePart, in_memory_bytes, iter_chunks, split_parts
from jobs.data.storage import ParquetFileInfo

READ_TASKS_PER_CPU = 4
"""Read tasks per CPU: enough that the last tasks do not leave CPUs idle, few enough that Ray
Data's gap between one task's end and the next one's start (about 0.15 s here) stays small."""
MIN_READ_TASK_BYTES, MAX_READ_TASK_BYTES = 16 * 2**20, 256 * 2**20
"""Bounds of a read task's bytes (in memory). A task yields chunks of ``CHUNK_ROWS`` rows,
which Ray Data joins into blocks of at most its ``target_max_block_size``, so a larger task
does not hold more of them in memory."""
CHUNK_ROWS = 100_000
"""Rows per table a read task yields."""
MAX_PARTS_PER_TASK = 2_000
"""File parts per read task, at most: a task is pickled with its parts' paths, and Ray Data
warns of (and may spill) a read task above 1 MiB."""


def task_bytes(size: int, cpus: float) -> int:
    """Bytes per read task for an input of ``size`` bytes on ``cpus`` CPUs (``READ_TASKS_PER_CPU`` each)."""
    return int(min(MAX_READ_TASK_BYTES, max(MIN_READ_TASK_BYTES, size / max(1.0, READ_TASKS_PER_CPU * cpus))))


def pack_tasks(parts: list[FilePart], width: int, max_bytes: int) -> list[list[FilePart]]:
    """Consecutive parts grouped into tasks of at most ``max_bytes`` (rows of ``width`` bytes; a larger part alone)
    and ``MAX_PARTS_PER_TASK`` parts."""
    tasks: list[list[FilePart]] = []
    held = 0
    for part in parts:
        size = part.num_rows * width
        if not tasks or held + size > max_bytes or len(tasks[-1]) >= MAX_PARTS_PER_TASK:
            tasks.append([])
            held = 0
        tasks[-1].append(part)
        held += size
    return tasks


class ParquetInputDatasource(Datasource):
    """The files of a ``ParquetInput`` as Ray Data read tasks, ``columns`` typed as ``schema``.

    Args:
        fs: The input's pyarrow filesystem (pickled into each task).
        files: The checked files, footers read.
        schema: The columns to read and their types (``ParquetInput.read_schema``).
        row_hash: Add the synthetic ``row_hash`` id.
        cpus: The cluster's CPUs, to size the tasks.
    """

    def __init__(self, fs: pafs.FileSystem, files: list[ParquetFileInfo], schema: pa.Schema, row_hash: bool,
                 cpus: float):
        super().__init__()
        self._fs, self._schema, self._row_hash = fs, schema, row_hash
        self._width = in_memory_bytes(schema, 1)
        self._size = sum(f.num_rows for f in files) * self._width
        per_task = task_bytes(self._size, cpus)
        self._tasks = pack_tasks(split_parts(files, self._width, per_task), self._width, per_task)

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    def estimate_inmemory_data_size(self) -> int:
        return self._size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object = None) -> list[ReadTask]:
        """One task per packed group of file parts (``parallelism`` is decided here, from the input's size)."""
        schema = self._schema.append(pa.field(ROW_HASH, pa.uint64())) if self._row_hash else self._schema
        tasks = []
        for parts in self._tasks:
            rows = sum(p.num_rows for p in parts)
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * self._width,
                                 exec_stats=None, input_files=list(dict.fromkeys(p.path for p in parts)))
            read = _reader(self._fs, parts, self._schema, self._row_hash)
            tasks.append(ReadTask(read, meta, schema=schema, per_task_row_limit=per_task_row_limit))
        return tasks


def _reader(fs: pafs.FileSystem, parts: list[FilePart], schema: pa.Schema, row_hash: bool) -> Callable[[], Iterator]:
    """A read task's function (Ray names a large task after its ``__name__``, which a partial lacks)."""
    def read_parts() -> Iterator[pa.Table]:
        return iter_chunks(fs, parts, schema, CHUNK_ROWS, row_hash)

    return read_parts


def read_source(source: ParquetInputDatasource, num_cpus: float = 1) -> ray.data.Dataset:
    """``source`` as a lazy Dataset, each read task of ``num_cpus`` CPUs, its output not split.

    Asked for fewer blocks than its default (200), Ray Data would split each task's output
    into pieces: smaller blocks, each a model call and a row file of its own.
    """
    return ray.data.read_datasource(source, override_num_blocks=source.num_tasks, num_cpus=num_cpus)
