"""Fixed cost of training: `aescore train` on a 1k-row table, whole process, as a user runs it.

    .venv/bin/python bench/train_wall.py [--rows 1000] [--repeats 2]

Runs ``aescore train`` in fresh subprocesses (Python start-up included) on the same small
table, alternating three paths so they are measured side by side in one run on the same
machine: the default on one machine (the data read and encoded in the driver, training
in the driver, no Ray started: ``jobs/training/local.py``), ``--local-data false`` (Ray
started, statistics and encoding as Ray Data jobs, training in the driver: the default
before), and ``--no-in-process`` (that plus a Ray Train worker actor, the default before
that). The job's own result line gives the seconds inside ``train.run``. The last line is
``train_wall: ratio=<target seconds / default wall> target=1.0 wall_s=<default> ray_data_wall_s=<..> actor_wall_s=<..>``
(issue target: 20 s on 2 cores, so a ratio of 1.0 or more passes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 20.0


def _table(path: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(rows, 8)), columns=[f"c{i}" for i in range(8)]).to_parquet(path)


def _train(root: Path, data: Path, out: Path, extra: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--data", str(data), "--out", str(out), *extra],
                          cwd=root, capture_output=True, text=True,
                          env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"train failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("trained"))
    return wall, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    modes = {"default": [], "ray_data": ["--local-data", "false"], "actor": ["--no-in-process"]}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="aescore-train-wall-") as tmp:
        data = Path(tmp) / "table.parquet"
        _table(data, args.rows)
        for i in range(args.repeats):
            for mode, extra in modes.items():
                wall, line = _train(root, data, Path(tmp) / f"model-{mode}-{i}", extra)
                walls[mode].append(wall)
                print(f"{mode:8s} wall {wall:5.1f}s  {line}", flush=True)
    default, ray_data, actor = (statistics.median(walls[m]) for m in modes)
    print(f"train_wall: ratio={TARGET_S / default:.2f} target=1.0 wall_s={default:.1f} ray_data_wall_s={ray_data:.1f} "
          f"actor_wall_s={actor:.1f} rows={args.rows}")

if __name__ == "__main__":
    main()
