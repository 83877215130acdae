"""A committed output survives what users and schedulers do: a stray file, a signal at any moment, two writers.

The rule (docs/reliability.md): once the pointer names a run, nothing deletes that run,
whatever fails afterwards; clean-up failures are warnings; a run that committed never says
it committed nothing. Interrupts are real signals sent to a real ``aescore`` process at the
moment named (``tests/paused_cli.py`` holds it there), never ``os._exit``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from aemodel import commit, load_artifact
from aemodel.commit import committed_run, read_committed_json
from jobs import score
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table, write_shards
from tests import paused_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _score_cfg(trained, data: str, out: Path, **kw) -> score.ScoreConfig:
    return score.ScoreConfig(model=trained.model_uri, data=data, out=str(out), id_columns=[ROW_ID], **kw)


def _complete(out: Path) -> dict:
    """The committed run: its folder exists with its summary, and its rows hold that many rows."""
    run = committed_run(str(out))
    assert run is not None and Path(run).is_dir(), f"the pointer names a run folder that is gone: {run}"
    summary = json.loads((Path(run) / "summary.json").read_text())
    assert pq.read_table(f"{run}/rows").num_rows == summary["row_count"]
    return summary


def test_a_stray_file_in_runs_and_a_failing_clean_up_never_undo_a_commit(trained, mixed_data, tmp_path, monkeypatch):
    out = tmp_path / "o"
    first = score.run(_score_cfg(trained, mixed_data["score"], out))
    (out / "runs" / ".DS_Store").write_bytes(b"x")  # Finder, an editor, a sync tool
    for top_k in (2, 1):  # every later run commits too, and the previous one is cleaned up
        again = score.run(_score_cfg(trained, mixed_data["score"], out, top_k=top_k))
        assert committed_run(str(out)) == again.run_uri and not again.warnings
        _complete(out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == [".DS_Store", Path(again.run_uri).name]
    assert not Path(first.run_uri).exists()

    def refuse(fs, paths):  # the old run folder cannot be deleted (permissions, a flaky store)
        raise PermissionError(f"denied: {paths[0]}")

    monkeypatch.setattr(commit, "_delete", refuse)
    last = score.run(_score_cfg(trained, mixed_data["score"], out, top_k=3))
    assert committed_run(str(out)) == last.run_uri and _complete(out)["row_count"] == 2000
    assert last.warnings and "committed, but the clean-up could not remove the older run folder" in last.warnings[0]
    assert "warning: " + last.warnings[0] in score.format_result(last)


def _signal_at(tmp_path: Path, target: str, match: str, sig: int, *cli: str, home: Path | None = None):
    """Run the CLI paused at ``target``, send ``sig`` there; returns (exit code, stdout, stderr, processes it had)."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, **({"HOME": str(home)} if home else {})}
    proc = subprocess.Popen(paused_cli.command(target, match, ready, go, *cli), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    paused_cli.wait_for(ready, proc)
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err, family


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_clean_up_keeps_the_run_it_committed(sig, trained, mixed_data, tmp_path):
    out = tmp_path / "o"
    before = score.run(_score_cfg(trained, mixed_data["score"], out))
    code, _, err, _ = _signal_at(tmp_path, "aemodel.commit:_delete", "/runs/", sig, "score", "--model",
                                 trained.model_uri, "--data", mixed_data["score"], "--out", str(out),
                                 "--id-columns", ROW_ID, "--top-k", "1")
    assert code == 128 + sig and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: interrupted by {signal.Signals(sig).name}; ") and "committed this run" in err
    run = committed_run(str(out))
    assert run != before.run_uri and run in err and _complete(out)["row_count"] == 2000
    after = score.run(_score_cfg(trained, mixed_data["score"], out, top_k=2))  # the next run cleans up
    assert [p.name for p in (out / "runs").iterdir()] == [Path(after.run_uri).name]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_rows_are_written_leaves_the_old_run_and_nothing_else(sig, trained, tmp_path):
    data = tmp_path / "in"
    write_shards(make_mixed_table(3000, seed=5, start_id=0), str(data), 3)
    out = tmp_path / "o"
    before = score.run(_score_cfg(trained, str(data), out))
    code, _, err, _ = _signal_at(tmp_path, "jobs.runtime.progress:Progress.update", "", sig, "score", "--model",
                                 trained.model_uri, "--data", str(data), "--out", str(out), "--id-columns", ROW_ID,
                                 "--top-k", "1", home=tmp_path)
    assert code == 128 + sig and err == f"error: interrupted by {signal.Signals(sig).name}\n", err
    assert committed_run(str(out)) == before.run_uri and _complete(out)["row_count"] == 3000
    assert [p.name for p in (out / "runs").iterdir()] == [Path(before.run_uri).name]  # its own folder is gone


def test_sigterm_while_ray_data_scores_ends_in_one_line_and_stops_its_ray(trained, tmp_path):
    """Ray's own SIGTERM handler exited from anywhere (native stack dump, exit 134); the job's handler cleans up."""
    data = tmp_path / "in"
    write_shards(make_mixed_table(6000, seed=6, start_id=0), str(data), 6)
    out = tmp_path / "o"
    code, stdout, err, family = _signal_at(
        tmp_path, "jobs.runtime.progress:Progress.update", "", signal.SIGTERM, "score", "--model", trained.model_uri,
        "--data", str(data), "--out", str(out), "--compute", "actors", "--concurrency", "1", "--cpus-per-worker",
        "0.5", "--batch-size", "500", home=tmp_path)
    assert code == 143 and err == "error: interrupted by SIGTERM\n", err  # no Ray log line either
    assert committed_run(str(out)) is None and not out.exists()  # a new --out is left as it was found
    assert family, "no private Ray was started"
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "the private Ray it started still runs"


def test_sigint_during_ray_train_exits_130_quietly_and_leaves_no_checkpoints(mixed_data, tmp_path):
    """Ray Train's SIGINT handler ended the run with exit 1 and no error line; its console doubled every epoch."""
    out = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "train", "--data", mixed_data["train"], "--out",
                             str(out), "--exclude-columns", f"{ROW_ID},{LABEL}", "--num-workers", "2",
                             "--cpus-per-worker", "0.5", "--epochs", "400", "--patience", "400", "--hidden-dims",
                             "[16]"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HOME": str(tmp_path)})
    lines = []
    for line in proc.stdout:  # the Train workers run; their epoch lines reach the console
        lines.append(line.rstrip("\n"))
        if line.startswith("epoch 40:"):
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=180)
    lines += rest.splitlines()
    assert proc.returncode == 130 and err == "error: interrupted by SIGINT\n", err
    # Only the job's own lines, each once: every 20th epoch (400 // 20), no Ray Train or Ray Data messages.
    assert lines[:3] == [ln for ln in lines if ln.startswith(("epoch 0:", "epoch 20:", "epoch 40:"))], lines
    assert all(ln.startswith("epoch ") for ln in lines) and len(set(lines)) == len(lines), lines
    assert not out.exists() and not (tmp_path / "ray_results").exists()  # Ray's default checkpoint folder


def test_two_trainings_into_one_new_out_one_commits_the_other_fails_clearly(mixed_data, tmp_path):
    """Both exited 0 once, the second announcing a version the artefact on disk did not have."""
    out, latest = tmp_path / "m", tmp_path / "LATEST.json"
    common = ["train", "--data", mixed_data["train"], "--out", str(out), "--exclude-columns", f"{ROW_ID},{LABEL}",
              "--hidden-dims", "[8]", "--publish-latest", str(latest), "--in-process", "true"]
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen(paused_cli.command("aemodel.commit:OutputCommit._swap_pointer", "", ready, go, *common,
                                                "--epochs", "3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    paused_cli.wait_for(ready, first)  # trained, about to commit
    second = subprocess.run([sys.executable, "-m", "jobs.cli", *common, "--epochs", "4"], capture_output=True,
                            text=True, timeout=300)
    go.touch()
    stdout, stderr = first.communicate(timeout=120)
    assert second.returncode == 0, second.stderr
    assert first.returncode == 2 and stderr == (f"error: another aescore run committed to {out} while this one was "
                                                "running (or its _SUCCESS was edited or removed); this run committed "
                                                "nothing (one writer per output prefix at a time)\n")
    version = second.stdout.split("(version ")[1].split(")")[0]
    assert load_artifact(str(out)).version == version == json.loads(latest.read_text())["version"]
    assert len(load_artifact(str(out)).history) == 4
    assert [p.name for p in (out / "runs").iterdir()] == [Path(load_artifact(str(out)).location).name]
    assert read_committed_json(str(out), "metrics.json")["version"] == version
