"""Ray glue shared by the jobs: connecting to Ray and distributed aggregations.

Ray is imported inside the functions that use it: the single-process paths import this
module (``on_one_machine``) and never load Ray, about a second of a short run
(bench/score_throughput.py).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from aemodel.aggregates import BlockAggregate, MergedAggregates
from jobs.runtime.entry import on_exit
from jobs.runtime.signals import reinstall_signal_handlers
from jobs.runtime.errors import InputError
from jobs.runtime.progress import EPOCH_LINE, Progress, is_verbose

if TYPE_CHECKING:
    import ray.data


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster a job is pointed at: ``address``, else ``RAY_ADDRESS``; None for none."""
    return address or os.environ.get("RAY_ADDRESS") or None


def on_one_machine(address: str | None = None) -> bool:
    """Nothing points at a Ray cluster: no ``address``, no ``RAY_ADDRESS``, no multi-node Ray already joined."""
    ray = sys.modules.get("ray")  # a Ray this process never imported is not running in it
    return cluster_address(address) is None and not (ray is not None and ray.is_initialized() and alive_nodes() > 1)


def check_gpu(use_gpu: bool, address: str | None = None) -> None:
    """Refuse ``--use-gpu`` up front where no GPU can ever come: one machine without CUDA.

    Without this Ray waits forever for a GPU resource that no node has. A cluster is not
    checked: its autoscaler may add GPU nodes when the job asks for one.

    Raises:
        InputError: ``use_gpu`` on a machine without a CUDA device and no Ray cluster given.
    """
    if use_gpu and on_one_machine(address):
        import torch

        if not torch.cuda.is_available():
            raise InputError("--use-gpu: this machine has no CUDA GPU that torch can use and no Ray cluster was "
                             "given (--ray-address or RAY_ADDRESS); drop --use-gpu to run on CPUs")


def ensure_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to Ray once per process.

    ``log_to_driver`` False keeps the workers' output (Ray Train's and Ray Data's own
    messages, and the epoch lines) out of this console: a sweep prints a line per trial instead.

    Under ``ray job submit`` (``RAY_ADDRESS`` set) this joins that cluster. Otherwise it
    starts a private local instance: ``ray.init()`` with no address would silently join
    any cluster already running on this machine.
    """
    import ray

    if ray.is_initialized():
        return
    target = cluster_address(address) or "local"
    verbose = is_verbose()
    if not verbose:
        quiet_ray_console()
    # Workers' output still reaches the driver: a Train worker prints the epoch lines. A private
    # Ray runs no dashboard: it would end with the job, and its processes start with Ray and
    # share the job's CPUs (bench/score_throughput.py, the Ray Data processes).
    ray.init(address=target, log_to_driver=log_to_driver, logging_level=logging.INFO if verbose else logging.WARNING,
             include_dashboard=False if target == "local" else None)
    if log_to_driver and not verbose:
        show_only_job_lines()
    if not verbose:
        filter_ray_stderr()
    # A private local Ray's node installs a SIGTERM handler that exits from wherever the job is;
    # the job's own handler (jobs.runtime.signals) lets its clean-up run first.
    reinstall_signal_handlers()
    if not verbose:
        quiet_ray_console()  # ray.init replaces the "ray" logger's handlers


def show_only_job_lines() -> None:
    """Of the workers' output, the driver's console shows the job's own progress lines only.

    With ``log_to_driver`` Ray prints every line its workers and actors write, prefixed with
    their name: Ray Train's controller and workers log each report, Ray Data its plans,
    Ray's core its warnings. Those stay in Ray's log files (``/tmp/ray/session_latest/logs``);
    ``-v`` shows them here too. Ray 2.60 has no public switch for this, so the driver's
    log handler (``ray_print_logs``) is replaced by one that keeps the epoch lines.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    def job_lines(batch: dict) -> None:
        for line in batch.get("lines", []):
            if line.startswith(EPOCH_LINE):
                sys.stdout.write(line + "\n")
        sys.stdout.flush()

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.remove_handler("aescore_job_lines")
    global_worker_stdstream_dispatcher.add_handler("aescore_job_lines", job_lines)


_RAY_LOG_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?(?:\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] \S+:\d+: "
                           r"|\((?:raylet|gcs_server|autoscaler|monitor)[^)]*\))")
"""A line Ray itself writes to the driver's stderr: its C++ core's log format, or a message its
raylet pushes to the driver ("(raylet) WARNING: ... worker processes have been started")."""


def filter_ray_stderr() -> None:
    """This process's stderr (fd 2) passes through a thread that drops Ray's own log lines.

    The driver's C++ core worker logs errors straight to fd 2 (on the actors path, a warning
    about actor constructor arguments each run) and the raylet's notices are printed by a
    Ray thread; no Ray setting silences either without silencing the raylet's own log files.
    Installed after ``ray.init`` (the processes it starts keep the real stderr); undone by
    ``jobs.runtime.entry.exit_process``. Every other line, the job's ``error:`` line included, passes.
    """
    import threading

    real = os.dup(2)
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as src:
            for line in src:
                if not _RAY_LOG_LINE.match(line.decode("utf-8", "replace")):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="aescore-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump drains it and ends
        thread.join(timeout=5)

    on_exit(restore)


class _RayConsoleNoise(logging.Filter):
    """Drops Ray's console messages that are about Ray itself, not about the job."""

    NOISE = ("Token authentication is enabled", "Progress bars disabled", "Progress bars for operators disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(n in str(record.msg) for n in self.NOISE)


def quiet_ray_console() -> None:
    """Ray's console shows warnings and errors only, and no progress blocks; its log files keep everything.

    Ray Data logs execution plans and (off a terminal) a progress block every few seconds
    at INFO on the console; Ray Train logs every report. The job prints its own progress
    (``jobs.runtime.progress``) instead. ``-v`` skips this.
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
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


def block_summary(table: pa.Table, aggs: tuple[BlockAggregate, ...],
                  sink: Callable[[pa.Table], None] | None = None) -> dict:
    """One block's part of an aggregation: its row count and pickled accumulators (never its rows).

    ``sink`` is called with the block first, in the worker (scoring writes it there), so the
    rows are written and summarised in one pass. ``merge_block_summaries`` adds the parts up.
    """
    return {"rows": [table.num_rows], "acc": [pickle.dumps(MergedAggregates.partial(table, aggs, sink))]}


def merge_block_summaries(ds: ray.data.Dataset, aggs: tuple[BlockAggregate, ...],
                          progress: Progress | None = None) -> dict:
    """Run ``ds``, whose rows are ``block_summary`` parts, and merge them on the driver.

    Args:
        ds: One row per block: ``rows`` and ``acc`` (``block_summary``).
        aggs: The aggregations the parts were taken with.
        progress: Counts the rows as their blocks finish.
    """
    merged = MergedAggregates(aggs)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for rows, blob in zip(batch.column("rows").to_pylist(), batch.column("acc").to_pylist()):
            merged.add(pickle.loads(blob))  # our own workers' output
            if progress is not None:
                progress.update(rows)
    return merged.result()


def aggregate_blocks(ds: ray.data.Dataset, *aggs: BlockAggregate, sink: Callable[[pa.Table], None] | None = None,
                     progress: Progress | None = None, rows_per_call: int | None = None) -> dict:
    """``Dataset.aggregate(*aggs)`` as one map over blocks plus a merge on the driver.

    Each block yields one small accumulator per aggregation (never rows); the driver
    combines them (``MergedAggregates``). A keyless ``Dataset.aggregate`` in Ray 2.60 runs
    a hash shuffle through aggregator actors, which costs seconds of fixed overhead per
    call on a small cluster.

    Args:
        ds: The rows.
        aggs: Mergeable aggregations.
        sink: Called with each block first, in the worker (``block_summary``).
        progress: Counts the rows as their blocks finish.
        rows_per_call: Rows handed to ``sink`` and the accumulators at once (Ray Data
            bundles blocks up to it); default one block per call, which lets Ray Data fuse
            the map with the one before it (a read included).
    """
    parts = ds.map_batches(functools.partial(block_summary, aggs=aggs, sink=sink), batch_format="pyarrow",
                           batch_size=rows_per_call)
    return merge_block_summaries(parts, aggs, progress)
