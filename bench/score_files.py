"""An input of many small files: listing, planning and scoring time, and the row files written.

    .venv/bin/python bench/score_files.py [--files 10000] [--rows-per-file 100] [--compute local tasks]

Writes ``--files`` Parquet files of ``--rows-per-file`` rows (32 float32 columns and an id,
``bench.score_throughput.make_shards``), trains a small model on a separate shard, then per
compute path times, in this one run:

* listing: ``jobs.data.datasets.list_parquet_files``, the input's files;
* planning: ``jobs.data.datasets.open_parquet_input``, the listing again plus every file's
  footer (schema and row count), read before anything is scored;
* ``score.run`` as a whole (listing and planning again, scoring, writing, committing);

and counts the row files the run committed. The reference for the file count is the
same rows in one file: ``ceil(rows / ROWS_PER_FILE)`` row files.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.score_throughput import make_shards  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rows-per-file", type=int, default=100)
    parser.add_argument("--compute", nargs="+", default=["local", "tasks"], choices=["local", "tasks", "actors"])
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import fsspec

    from jobs import score, train
    from jobs.data.datasets import list_parquet_files, open_parquet_input
    from jobs.scoring.rows import ROWS_PER_FILE

    rows = args.files * args.rows_per_file
    with tempfile.TemporaryDirectory(prefix="aescore-files-") as tmp:
        root = Path(tmp)
        (root / "train").mkdir()
        (root / "data").mkdir()
        make_shards(root / "train", 20_000, 1, seed=1)
        t0 = time.perf_counter()
        make_shards(root / "data", rows, args.files)
        print(f"wrote {args.files:,} files of {args.rows_per_file:,} rows in {time.perf_counter() - t0:.1f}s",
              flush=True)
        train.run(train.TrainConfig(data=str(root / "train"), out=str(root / "model"), exclude_columns=["id"],
                                    epochs=2))
        fs = fsspec.filesystem("file")
        t0 = time.perf_counter()
        listed = list_parquet_files(str(root / "data"))[1]
        listing = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = open_parquet_input(str(root / "data"))
        planning = time.perf_counter() - t0
        assert len(listed) == len(data.files) == args.files
        print(f"listing {listing:.2f}s, planning (every footer) {planning:.2f}s", flush=True)
        for compute in args.compute:
            out = root / f"out-{compute}"
            t0 = time.perf_counter()
            result = score.run(score.ScoreConfig(model=str(root / "model"), data=str(root / "data"), out=str(out),
                                                 id_columns=["id"], compute=compute))
            seconds = time.perf_counter() - t0
            written = [p for p in fs.find(str(out)) if p.endswith(".parquet")]
            print(f"score_files: compute={compute} files={args.files} rows={result.summary['row_count']} "
                  f"seconds={seconds:.1f} rows/s={rows / seconds:,.0f} row_files={len(written)} "
                  f"one_file_reference={math.ceil(rows / ROWS_PER_FILE)} listing_s={listing:.2f} "
                  f"planning_s={planning:.2f}", flush=True)


if __name__ == "__main__":
    main()
