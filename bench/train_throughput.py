"""Training throughput: `aescore train` on one machine vs a plain single-process torch loop.

    .venv/bin/python bench/train_throughput.py [--rows 200000] [--epochs 5]

Same data (N rows of 32 float32 columns), same model, same optimizer, same global batch,
same step functions (``train_step``, ``eval_step``), and both evaluate the job's default
validation split (``val_fraction``, by row hash) every epoch. Ours: the median of the
per-epoch seconds that the training loop records (start-up and data preparation excluded
and reported separately). Plain loop: tensors in memory, shuffled each epoch, torch's
default threads (every core), as a user's script runs.

Ours is measured four ways in one run: the default on one machine (``--local-data``: the
data read and encoded in the driver, one in-process worker with one torch thread; the
headline), the same with ``--cpus-per-worker`` set to every core (the plain loop's
threads), then 2 Ray Train workers x 1 thread with the default in-memory shard cache, and
the same streamed from Ray Data every epoch (``--cache-shard-mb 0``). The last line is
``train_throughput: ratio=<default epoch / plain epoch> target=1.3 rows/s=<ours> same_threads_ratio=<..> ray_2_workers_ratio=<..> peak_rss_mb=<driver>``
(at or below the target passes).
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
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.score_throughput import make_shards  # noqa: E402


def plain_loop(data: Path, art, epochs: int, batch_size: int, threads: int, seed: int = 0) -> list[float]:
    """Per-epoch seconds of a hand-written loop over the job's split with the job's step functions.

    Same validation split as ``aescore train`` (its default ``val_fraction`` through
    ``keep_split``), same ``train_step``/``eval_step``, same model and optimizer; only the
    batches come from tensors in memory instead of Ray Train's dataset shards.
    """
    from aemodel import TabularAutoencoder
    from aemodel.split import keep_split, split_cut
    from jobs.training.config import TrainConfig
    from jobs.training.loop import eval_step, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    table = pq.read_table(data)
    names = [s.name for s in art.preprocessor.specs]
    cut = split_cut(TrainConfig(data="d", out="o").val_fraction)
    tr_enc = art.preprocessor.transform(keep_split(table, names, cut, validation=False))
    va_enc = art.preprocessor.transform(keep_split(table, names, cut, validation=True))
    tr, va = ({k: torch.from_numpy(e[k]) for k in ("x_num", "x_bin", "x_cat", "observed")} for e in (tr_enc, va_enc))
    model = TabularAutoencoder(art.model_config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    base = torch.tensor(art.preprocessor.baselines)
    times = []
    n = tr["x_num"].shape[0]
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            train_step(model, opt, {k: v[perm[i:i + batch_size]] for k, v in tr.items()}, base)
        for i in range(0, va["x_num"].shape[0], 8192):
            eval_step(model, {k: v[i:i + 8192] for k, v in va.items()}, base)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256, help="per worker")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()  # what a user's script gets
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from aemodel import load_artifact
    from jobs import train

    with tempfile.TemporaryDirectory(prefix="aescore-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        make_shards(data, args.rows, 4)
        # patience=epochs, min_delta=0: never stop early, so every epoch is timed.
        fixed = {"exclude_columns": ["id"], "epochs": args.epochs, "patience": args.epochs, "min_delta": 0.0}
        t0 = time.perf_counter()
        runs = {"local": train.run(train.TrainConfig(data=str(data), out=str(root / "model-local"), local_data=True,
                                                     batch_size=2 * args.batch_size, **fixed))}
        local_wall = time.perf_counter() - t0
        runs["threads"] = train.run(train.TrainConfig(data=str(data), out=str(root / "model-threads"),
                                                      local_data=True, cpus_per_worker=os.cpu_count(),
                                                      batch_size=2 * args.batch_size, **fixed))
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        for label, cache_mb in (("ray", 1024), ("streamed", 0)):
            runs[label] = train.run(train.TrainConfig(
                data=str(data), out=str(root / f"model-{label}"), num_workers=2, cpus_per_worker=0.5,
                batch_size=args.batch_size, storage_path=str(root / "ray"), cache_shard_mb=cache_mb, **fixed))
        ray.shutdown()
        result = runs["local"]
        ours = [h["seconds"] for h in result.history]
        plain = plain_loop(data, load_artifact(result.model_uri), args.epochs, 2 * args.batch_size,
                           threads=default_threads)

    # The first epoch includes warm-up; the median is steady state.
    our_epoch, plain_epoch = float(np.median(ours)), float(np.median(plain))
    rows = result.train_rows
    print(f"machine: {os.cpu_count()} CPUs; rows={args.rows} (train {rows}), epochs={args.epochs}, "
          f"global batch {2 * args.batch_size}")
    print(f"ours (default, local data, 1 process, 1 thread): epochs {[round(s, 2) for s in ours]} s, median {our_epoch:.2f}s, "
          f"{rows / our_epoch:,.0f} rows/s")
    medians = {}
    for label, text in (("threads", f"local data, --cpus-per-worker {os.cpu_count()}"),
                        ("ray", "2 Ray Train workers, shard cached"), ("streamed", "2 workers, --cache-shard-mb 0")):
        epochs = [h["seconds"] for h in runs[label].history]
        medians[label] = float(np.median(epochs))
        print(f"ours ({text}): epochs {[round(x, 2) for x in epochs]} s, median {medians[label]:.2f}s, "
              f"ratio {medians[label] / plain_epoch:.2f}")
    print(f"plain: epochs {[round(s, 2) for s in plain]} s, median {plain_epoch:.2f}s, {rows / plain_epoch:,.0f} rows/s")
    print(f"fixed costs: default path train.run {local_wall:.1f}s wall of which epochs {sum(ours):.1f}s; "
          f"Ray start-up (2-worker runs only) {startup:.1f}s; 2-worker train.run {runs['ray'].wall_seconds:.1f}s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"train_throughput: ratio={our_epoch / plain_epoch:.2f} target=1.3 rows/s={rows / our_epoch:.0f} "
          f"same_threads_ratio={medians['threads'] / plain_epoch:.2f} ray_2_workers_ratio={medians['ray'] / plain_epoch:.2f} "
          f"peak_rss_mb={peak:.0f}")

if __name__ == "__main__":
    main()
