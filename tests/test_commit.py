"""The output commit protocol without Ray: ownership, a kill at every step, concurrent writers.

A subprocess runs a real commit of a "new" run over a committed "old" run and is killed
(``os._exit``, no clean-up code runs) just before its k-th storage mutation, for every k;
after each kill a reader must find one complete run, old or new, and the next commit must
succeed and leave one run folder. Run on a local disk and on the local S3 server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from aemodel.commit import RUNS, OutputCommit, claim_prefix, committed_run, read_committed_json
from jobs.runtime.errors import OutputError
from aemodel.store import url_to_fs, write_bytes

_SCRIPT = textwrap.dedent("""
    import os, sys
    from aemodel import commit
    uri, kill_at = sys.argv[1], int(sys.argv[2])
    ops = [0]

    def counted(fn):
        def wrapper(*args, **kwargs):
            ops[0] += 1
            if ops[0] == kill_at:
                os._exit(137)  # like SIGKILL: no finally, no atexit
            return fn(*args, **kwargs)
        return wrapper

    commit.write_bytes, commit.remove, commit._rename, commit._delete = (
        counted(commit.write_bytes), counted(commit.remove), counted(commit._rename), counted(commit._delete))
    out = commit.OutputCommit(uri)
    fs = out.fs
    if hasattr(fs, "call_s3"):
        fs.call_s3 = counted(fs.call_s3)
    out.begin()
    commit.write_bytes(fs, out.path_of("rows/part-0.parquet"), b"new")
    out.commit({"summary.json": b'{"v": "new"}'}, run_id="new")
    print(ops[0])
""")


def _commit_version(uri: str, version: str) -> OutputCommit:
    out = OutputCommit(uri)
    out.begin()
    write_bytes(out.fs, out.path_of("rows/part-0.parquet"), version.encode())
    out.commit({"summary.json": json.dumps({"v": version}).encode()}, run_id=version)
    return out


def _visible_version(uri: str) -> str:
    """What a reader sees; the committed run must be complete and self-consistent."""
    summary = read_committed_json(uri, "summary.json")
    fs, path = url_to_fs(committed_run(uri))
    with fs.open(f"{path}/rows/part-0.parquet", "rb") as f:
        assert f.read().decode() == summary["v"]
    return summary["v"]


def _run_folders(uri: str) -> list[str]:
    fs, path = url_to_fs(uri)
    fs.invalidate_cache()
    return fs.ls(f"{path}/{RUNS}", detail=False) if fs.isdir(f"{path}/{RUNS}") else []


def _kill_at(uri: str, k: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SCRIPT, uri, str(k)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_kill_at_every_step_of_the_commit_leaves_the_old_or_the_new_run(store, tmp_path, request):
    root = request.getfixturevalue("bucket") if store == "s3" else str(tmp_path)
    _commit_version(f"{root}/count", "old")
    full = _kill_at(f"{root}/count", 0)
    assert full.returncode == 0, full.stderr
    steps = int(full.stdout.split()[-1])
    assert steps >= 6  # marker check, attempt, rows, summary, run _SUCCESS, pointer, clean-up
    seen = set()
    for k in range(1, steps + 1):
        uri = f"{root}/k{k}"
        _commit_version(uri, "old")
        killed = _kill_at(uri, k)
        assert killed.returncode == 137, (k, killed.stderr)
        seen.add(_visible_version(uri))
        _commit_version(uri, "next")  # the next run commits and cleans up whatever the kill left
        assert _visible_version(uri) == "next" and len(_run_folders(uri)) == 1, k
    assert seen == {"old", "new"}  # early kills keep the old run, late ones the new


@pytest.mark.parametrize("store", ["local", "s3"])
def test_concurrent_writers_one_wins_the_other_fails_clearly(store, tmp_path, request):
    root = request.getfixturevalue("bucket") if store == "s3" else str(tmp_path)
    uri = f"{root}/out"
    first, second = OutputCommit(uri), OutputCommit(uri)
    first.begin()
    second.begin()
    first.commit({"summary.json": b'{"v": "first"}'}, run_id="first")
    assert second.lost_race()
    with pytest.raises(OutputError, match="another aescore run committed to .* while this one was running"):
        second.commit({"summary.json": b'{"v": "second"}'}, run_id="second")
    second.abort()
    assert read_committed_json(uri, "summary.json") == {"v": "first"}
    assert [p.rsplit("/", 1)[-1] for p in _run_folders(uri)] == [first.name]

    # A run that begins after a commit's pointer swap but before its clean-up survives it.
    third, late = OutputCommit(uri), OutputCommit(uri)
    third.begin()
    third.commit({"summary.json": b'{"v": "third"}'}, run_id="third")
    fourth = OutputCommit(uri)
    fourth.begin()
    fourth._swap_pointer(json.dumps({"run": f"{RUNS}/{fourth.name}", "run_id": "fourth"}).encode())
    late.begin()
    fourth._cleanup()
    assert late.name in {p.rsplit("/", 1)[-1] for p in _run_folders(uri)}
    assert not late.lost_race()


def test_only_empty_or_own_prefixes_are_written_and_nothing_else_is_deleted(tmp_path):
    user = tmp_path / "user"
    (user / "rows").mkdir(parents=True)
    (user / "rows" / "keep.csv").write_text("mine")
    (user / "summary.json").write_text("{}")
    with pytest.raises(OutputError, match=r"already holds files that aescore did not write \(rows, summary.json\)"):
        OutputCommit(str(user)).begin()
    assert (user / "rows" / "keep.csv").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == \
        ["rows", "summary.json"]

    own = str(tmp_path / "own")
    _commit_version(own, "a")
    (tmp_path / "own" / "notes.txt").write_text("a user's note beside the output")
    _commit_version(own, "b")
    assert (tmp_path / "own" / "notes.txt").exists() and _visible_version(own) == "b"
    with pytest.raises(OutputError, match="holds aescore scores output, not model"):
        claim_prefix(own, "model")

    # A failed first run leaves the prefix as it found it: an empty folder empty, a new path absent.
    (tmp_path / "empty").mkdir()
    for prefix in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        fresh = OutputCommit(str(prefix))
        fresh.begin()
        fresh.abort()
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "new").exists()


def test_an_output_of_the_previous_layout_is_replaced_file_by_file(tmp_path):
    """aescore 0.1 wrote rows/ and summary.json at the top, with an empty _SUCCESS."""
    old = tmp_path / "old"
    (old / "rows").mkdir(parents=True)
    (old / "rows" / "part-0.parquet").write_bytes(b"legacy")
    (old / "rows" / "keep.csv").write_text("not listed in the manifest: not ours")
    (old / "summary.json").write_text('{"v": "legacy"}')
    (old / "manifest.json").write_text(json.dumps({"kind": "aescore-score",
                                                    "outputs": [{"path": "rows/part-0.parquet"}]}))
    (old / "_SUCCESS").write_bytes(b"")
    assert read_committed_json(str(old), "summary.json") == {"v": "legacy"}  # nightly history still reads it
    _commit_version(str(old), "new")
    assert _visible_version(str(old)) == "new"
    assert sorted(p.name for p in old.iterdir()) == ["_SUCCESS", "_aescore.json", "_commit.lock", "rows", "runs"]
    assert [p.name for p in (old / "rows").iterdir()] == ["keep.csv"]


def test_the_clean_up_deletes_only_what_aescore_wrote(tmp_path):
    """A fresh adversarial pass: an old manifest listing ../victim, a user's _SUCCESS.mine.tmp, a note in a run folder."""
    old = tmp_path / "old"
    (old / "rows").mkdir(parents=True)
    (old / "rows" / "part-0.parquet").write_bytes(b"legacy")
    (old / "rows" / "keep.csv").write_text("mine")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    listed = [{"path": p} for p in ("../victim", "rows", "/etc/hostname", "rows/part-0.parquet")]
    (old / "manifest.json").write_text(json.dumps({"kind": "aescore-score", "outputs": listed}))
    (old / "_SUCCESS").write_bytes(b"")
    first = _commit_version(str(old), "new")
    assert (victim / "thesis.txt").read_text() == "precious" and (old / "rows" / "keep.csv").exists()
    assert not (old / "rows" / "part-0.parquet").exists() and not (old / "manifest.json").exists()

    (old / "_SUCCESS.mine.tmp").write_text("a user's file with a pointer-like name")
    (old / "runs" / first.name / "notes.md").write_text("a note put into aescore's run folder")
    (old / "runs" / "emptyuser").mkdir()
    second = OutputCommit(str(old))
    second.begin()
    write_bytes(second.fs, second.path_of("rows/part-0.parquet"), b"next")
    warnings = second.commit({"summary.json": b'{"v": "next"}'}, run_id="next")
    assert _visible_version(str(old)) == "next"
    assert (old / "_SUCCESS.mine.tmp").exists() and (old / "runs" / "emptyuser").is_dir()
    assert sorted(p.name for p in (old / "runs" / first.name).iterdir()) == ["notes.md"]  # aescore's files gone
    assert warnings == [f"{old}: runs/{first.name} also holds files aescore did not write (notes.md); they stay"]
