"""Scoring throughput: `aescore score` (task and actor paths) against a fused single-process loop.

    .venv/bin/python bench/score_throughput.py [--rows N] [--shards N]

Generates N rows of 32 float32 columns as Parquet shards, trains a small model on one
shard, then times, side by side in this one run:

* pipeline (tasks): ``score.run`` with the default CPU path (scorer fused with the read);
* pipeline (actors): ``score.run`` with ``--compute actors`` (one actor per CPU but one);
* fused loop: one process reads each shard with pyarrow, scores it with the same scorer
  class and outputs as the pipeline (``BatchScorer``: anomaly_score, score_percentile, recon_error, is_anomaly, cell
  counts, top_features, seen_in_training) using every core, and writes Parquet: the
  practical limit on one machine.

``--mixed`` uses the demo's mixed numeric/binary/categorical columns instead. Besides
end-to-end seconds, the pipeline part alone (read -> score -> staged write, from
``summary.json`` ``timings``) is reported; the rest is the summary pass and the commit.

Ray's start-up is timed separately and excluded from the pipeline figures. The last line is
``score_throughput: ratio=<tasks/fused> target=0.9 rows/s=<tasks> peak_rss_mb=<driver>``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_shards(root: Path, rows: int, shards: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 32)).astype(np.float32)
    per = rows // shards
    for i in range(shards):
        z = rng.normal(size=(per, 4)).astype(np.float32)
        x = z @ w + 0.1 * rng.normal(size=(per, 32)).astype(np.float32)
        cols = {"id": pa.array(np.arange(i * per, (i + 1) * per, dtype=np.int64))}
        cols.update({f"f{j}": pa.array(x[:, j]) for j in range(32)})
        pq.write_table(pa.table(cols), root / f"part-{i:05d}.parquet")


def make_mixed_shards(root: Path, rows: int, shards: int) -> None:
    from jobs.synthetic import make_mixed_table

    per = rows // shards
    for i in range(shards):
        t = make_mixed_table(per, seed=i, start_id=i * per).rename_columns(
            lambda n: "id" if n == "row_id" else n)
        pq.write_table(t.drop_columns(["is_injected_anomaly"]), root / f"part-{i:05d}.parquet")


def fused_loop(model_uri: str, data: Path, out: Path) -> float:
    """Read, score and write every shard in this process; returns seconds."""
    import torch

    from jobs.score_rows import BatchScorer

    scorer = BatchScorer(model_uri, ["id"], threads=os.cpu_count() or 1, top_k=3)
    torch.set_num_threads(os.cpu_count() or 1)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for path in sorted(data.glob("*.parquet")):
        pq.write_table(scorer(pq.read_table(path)), out / path.name)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--mixed", action="store_true", help="mixed numeric/binary/categorical columns")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    import ray

    from jobs import score, train

    with tempfile.TemporaryDirectory(prefix="aescore-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        (make_mixed_shards if args.mixed else make_shards)(data, args.rows, args.shards)
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        train.run(train.TrainConfig(data=str(data / "part-00000.parquet"), out=str(root / "model"),
                                    exclude_columns=["id"], epochs=2, cpus_per_worker=0.5,
                                    storage_path=str(root / "ray")))
        model = str(root / "model")

        fused_s = fused_loop(model, data, root / "fused")
        results, parts = {}, {}
        # Actors must leave CPUs for the Parquet reads: a pool that reserves every CPU hangs.
        actors = max(1, (os.cpu_count() or 2) - 1)
        for name, extra in (("tasks", {}), ("actors", {"compute": "actors", "concurrency": actors,
                                                        "cpus_per_worker": 1.0})):
            t0 = time.perf_counter()
            res = score.run(score.ScoreConfig(model=model, data=str(data), out=str(root / f"out-{name}"),
                                              id_columns=["id"], batch_size=65536, **extra))
            results[name] = time.perf_counter() - t0
            parts[name] = res.summary["timings"]["read_score_write_s"]
        ray.shutdown()

    rows = args.rows // args.shards * args.shards
    fused_rate = rows / fused_s
    print(f"machine: {os.cpu_count()} CPUs; rows={rows} shards={args.shards} {'mixed' if args.mixed else '32 float'} "
          f"columns; Ray start-up {startup:.1f}s (excluded)")
    print(f"fused loop          : {fused_s:7.2f}s {fused_rate:12,.0f} rows/s")
    for name, seconds in results.items():
        print(f"pipeline ({name:6s})  : {seconds:7.2f}s {rows / seconds:12,.0f} rows/s  ratio {fused_s / seconds:.2f}"
              f"  (read->score->write alone {parts[name]:.2f}s, ratio {fused_s / parts[name]:.2f})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"score_throughput: ratio={fused_s / results['tasks']:.2f} target=0.9 rows/s={rows / results['tasks']:.0f} "
          f"peak_rss_mb={peak:.0f}")


if __name__ == "__main__":
    main()
