"""The console: the job's own progress lines, quiet by default, Ray's logs with -v."""

import io
import subprocess
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from jobs.runtime.progress import EpochProgress, Progress, split_verbose_flag
from jobs.data.chunks import synthetic_row_hashes
from jobs.scoring.rows import write_block


def test_verbose_flag_is_taken_out_before_the_job_parses_its_options():
    assert split_verbose_flag(["--data", "d", "-v"]) == (["--data", "d"], True)
    assert split_verbose_flag(["--verbose", "--out", "o"]) == (["--out", "o"], True)
    assert split_verbose_flag(["--", "python", "-v"]) == (["--", "python", "-v"], False)


def test_progress_off_a_terminal_prints_plain_lines():
    out = io.StringIO()
    p = Progress("scored", total=200, interval_s=0.0, stream=out)
    p.update(50)
    p.update(150)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("50 rows scored (25%), ") and lines[1].startswith("200 rows")
    assert lines[1].endswith(" rows/s")


def test_steady_rate_leaves_out_the_start_up(monkeypatch):
    """The rate after the first rows: a job's start-up (Ray, workers, the first block) is not in it."""
    from jobs.runtime import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = Progress("scored", stream=io.StringIO(), interval_s=1e9)
    p.update(0)  # nothing counted: not the first rows
    assert p.first_at is None and p.steady_rate() is None
    now[0] = 5.0
    p.update(100)
    assert p.first_at == 5.0 and p.steady_rate() is None
    now[0] = 7.0
    p.update(300)
    assert p.steady_rate() == pytest.approx(300 / 2.0)


def test_epoch_lines_every_k_epochs_and_the_last(capsys):
    p = EpochProgress(max_epochs=200, every=10)
    for e in range(23):
        p.epoch({"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "seconds": 0.1}, 1.0, last=e == 22)
    assert [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines()] == \
        ["epoch 0", "epoch 10", "epoch 20", "epoch 22"]


def test_a_retried_block_replaces_its_own_file_and_repeated_ids_do_not(tmp_path):
    table = pa.table({"id": [1, 2, 3], "anomaly_score": [0.1, 0.2, 0.3],
                      "row_hash": pa.array(synthetic_row_hashes("a.parquet", 0, 3), pa.uint64())})
    fs = pafs.LocalFileSystem()
    for _ in range(2):  # a task retried after a failure writes the same block again
        write_block(table, path=str(tmp_path / "rows"), filesystem=fs, keep_row_hash=False)
    write_block(table.slice(0, 2), path=str(tmp_path / "rows"), filesystem=fs, keep_row_hash=False)
    # The same ids from another input file (ids restarting per file): another block, another file.
    other = table.set_column(2, "row_hash", pa.array(synthetic_row_hashes("b.parquet", 0, 3), pa.uint64()))
    write_block(other, path=str(tmp_path / "rows"), filesystem=fs, keep_row_hash=False)
    files = sorted((tmp_path / "rows").iterdir())
    assert len(files) == 3 and sum(pq.read_metadata(f).num_rows for f in files) == 8
    assert all(pq.read_schema(f).names == ["id", "anomaly_score"] for f in files)


@pytest.mark.e2e
def test_the_demo_console_is_short_and_verbose_brings_rays_logs_back(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--out", str(tmp_path / "d"), "--rows", "2000",
                          "--shards", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stdout = out.stdout.splitlines()
    lines = stdout + out.stderr.splitlines()  # the whole console
    assert len(lines) <= 60, "\n".join(lines)
    assert len(set(lines)) == len(lines), "duplicated lines"
    assert not [ln for ln in lines if " INFO " in ln or "WARNING" in ln or "Progress" in ln], "\n".join(lines)
    (result,) = [ln for ln in stdout if ln.startswith("demo: AUROC=")]
    assert "precision=" in result and "recall=" in result, "\n".join(lines)
    verbose = subprocess.run([sys.executable, "-m", "jobs.cli", "train", "-v", "--data", str(tmp_path / "d/data/train"),
                              "--out", str(tmp_path / "m"), "--exclude-columns", "row_id,is_injected_anomaly",
                              "--epochs", "2", "--local-data", "false"], capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Started a local Ray instance" in verbose.stdout + verbose.stderr
    assert "Execution plan of Dataset" in verbose.stdout + verbose.stderr
