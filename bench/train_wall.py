"""Fixed cost of training: `aescore train` on a 1k-row table, whole process, as a user runs it.

    .venv/bin/python bench/train_wall.py [--rows 1000] [--repeats 2]

Runs ``aescore train`` in fresh subprocesses (Python and Ray start-up included) on the same
small table, alternating the default (one CPU worker on a single node trains in the driver
process: Ray Train's local mode) with ``--no-in-process`` (a Ray Train worker actor, the
behaviour before), so both are measured side by side in one run on the same machine. The
job's own result line gives the seconds inside ``train.run``. The last line is
``train_wall: ratio=<target seconds / default wall> target=1.0 wall_s=<default> actor_wall_s=<--no-in-process>``
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
    walls: dict[str, list[float]] = {"default": [], "actor": []}
    with tempfile.TemporaryDirectory(prefix="aescore-train-wall-") as tmp:
        data = Path(tmp) / "table.parquet"
        _table(data, args.rows)
        for i in range(args.repeats):
            for mode, extra in (("default", []), ("actor", ["--no-in-process"])):
                wall, line = _train(root, data, Path(tmp) / f"model-{mode}-{i}", extra)
                walls[mode].append(wall)
                print(f"{mode:8s} wall {wall:5.1f}s  {line}", flush=True)
    default, actor = statistics.median(walls["default"]), statistics.median(walls["actor"])
    print(f"train_wall: ratio={TARGET_S / default:.2f} target=1.0 wall_s={default:.1f} actor_wall_s={actor:.1f} "
          f"rows={args.rows}")


if __name__ == "__main__":
    main()
