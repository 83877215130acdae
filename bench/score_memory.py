"""Scoring memory: peak memory of a whole `aescore score` run at N and 10N rows, and a pandas peer.

    .venv/bin/python bench/score_memory.py [--rows 1000000] [--scale 10]
    .venv/bin/python bench/score_memory.py --rows 10000000 --scale 10 --shards 200 --compute tasks --no-peer

For N and scale*N rows of 32 float32 columns (20 Parquet shards each), this runs
``score.run`` on a fresh private local Ray (one per size) while a sampler thread adds up the proportional set
size (PSS: shared pages such as the object store are split between the processes that map
them, so the sum is the true total) of this driver and every process it started (raylet,
GCS, Ray workers), every 0.2 s. The peer is a plain script in a subprocess: pandas reads
every shard, scores the whole table with the same ``RowScorer``, writes one Parquet file;
its peak is the subprocess's max RSS. The last line is
``score_memory: ratio=<peak(scale*N)/peak(N)> target=1.3 rows/s=<at scale*N> peak_rss_mb=<peak at scale*N>``
(the ratio must stay at or below the target: flat memory as data grows).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.score_throughput import make_shards  # noqa: E402

PEER = r"""
import sys, glob, resource
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from aemodel import RowScorer, load_artifact
model, data, out = sys.argv[1:4]
df = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(data + "/*.parquet"))], ignore_index=True)
res = RowScorer(load_artifact(model)).score_table(pa.Table.from_pandas(df, preserve_index=False))
pd.DataFrame({"id": df["id"], "recon_error": res["recon_error"]}).to_parquet(out)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


class TreeMemorySampler:
    """Peak total PSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_mb, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total_mb(self) -> float:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._total_mb())
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemorySampler:
        self.baseline_mb = self._total_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--compute", default="auto", choices=["auto", "local", "tasks", "actors"],
                        help="ScoreConfig.compute (auto: what aescore score picks; tasks/actors: the Ray Data path)")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the pandas peer (it holds every row: 100M rows of 32 columns need ~26 GB)")
    parser.add_argument("--object-store-limit-mb", type=int, default=None,
                        help="ScoreConfig.object_store_limit_mb (default: the product's; 0: Ray's own budget)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from jobs import score, train

    results = {}
    extra = {} if args.object_store_limit_mb is None else {"object_store_limit_mb": args.object_store_limit_mb}
    with tempfile.TemporaryDirectory(prefix="aescore-bench-") as tmp:
        root = Path(tmp)
        for n in (args.rows, args.rows * args.scale):
            data = root / f"data-{n}"
            data.mkdir()
            make_shards(data, n, args.shards)
            if not (root / "model").exists():
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                train.run(train.TrainConfig(data=str(data / "part-00000.parquet"), out=str(root / "model"),
                                            exclude_columns=["id"], epochs=2, cpus_per_worker=0.5,
                                            storage_path=str(root / "ray")))
                ray.shutdown()
            # A fresh Ray per size: idle workers left by an earlier run would count against this one.
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            with TreeMemorySampler() as mem:
                t0 = time.perf_counter()
                score.run(score.ScoreConfig(model=str(root / "model"), data=str(data), out=str(root / f"out-{n}"),
                                            id_columns=["id"], batch_size=65536, compute=args.compute, **extra))
                seconds = time.perf_counter() - t0
            peer_mb = float("nan")
            if not args.no_peer:
                peer = subprocess.run([sys.executable, "-c", PEER, str(root / "model"), str(data),
                                       str(root / f"peer-{n}")], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
                peer_mb = float(peer.stdout.strip().splitlines()[-1])
            results[n] = {"peak_mb": mem.peak_mb, "idle_mb": mem.baseline_mb, "seconds": seconds, "peer_mb": peer_mb}
            print(f"rows={n:>10}: aescore score peak {mem.peak_mb:8.0f} MB (Ray idle before the run "
                  f"{mem.baseline_mb:.0f} MB), "
                  f"{seconds:6.1f}s; pandas read-all peer peak {results[n]['peer_mb']:8.0f} MB", flush=True)
            for d in (data, root / f"out-{n}", root / f"peer-{n}"):
                subprocess.run(["rm", "-rf", str(d)], check=True)
            ray.shutdown()
    small, large = (results[n] for n in sorted(results))
    big = max(results)
    print(f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    print(f"score_memory: compute={args.compute} ratio={large['peak_mb'] / small['peak_mb']:.2f} target=1.3 "
          f"rows/s={big / large['seconds']:.0f} peak_rss_mb={large['peak_mb']:.0f} "
          f"peer_ratio={large['peer_mb'] / small['peer_mb']:.2f}")


if __name__ == "__main__":
    main()
