"""Demo wall time: `aescore demo` from process start to exit, as a user runs it.

    .venv/bin/python bench/demo_wall.py [--rows 20000]

Runs the demo in a fresh subprocess (Ray start-up included) and prints its wall time; the
demo's own lines give the split between training and scoring. The last line is
``demo_wall: ratio=<target seconds / wall> target=1.0 rows/s=<train+score rows / wall> peak_rss_mb=<demo process>``
(40 s on 2 cores is the target, training run to convergence, so a ratio of 1.0 or more passes).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 40.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="aescore-demo-") as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "jobs.demo", "--out", tmp, "--rows", str(args.rows)],
                              cwd=root, capture_output=True, text=True,
                              env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"demo failed ({proc.returncode}): {proc.stderr[-2000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("trained", "demo:", "reports:")):
            print(line)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = args.rows + args.rows // 2
    print(f"machine: {os.cpu_count()} CPUs")
    print(f"demo_wall: ratio={TARGET_S / wall:.2f} target=1.0 rows/s={rows / wall:.0f} peak_rss_mb={peak:.0f} "
          f"wall_s={wall:.1f}")


if __name__ == "__main__":
    main()
