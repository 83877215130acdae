"""Cases a fresh adversarial pass found after the commit rules were tightened; each failed before its fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aemodel.commit import committed_run
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table, write_shards
from tests import paused_cli
from tests.test_adversarial_inputs import _cli, _one_error

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_parquet_files_under_underscore_or_dot_names_are_named_not_skipped_silently(trained, mixed_data, tmp_path):
    data = tmp_path / "in"
    write_shards(mixed_data["score_table"], str(data), 4)
    for sub, name in (("_late", "part-00001.parquet"), (".cache", "part-00002.parquet"), ("", "part-00003.parquet")):
        (data / sub).mkdir(exist_ok=True)
        shutil.move(data / name, data / sub / (name if sub else "_extra.parquet"))
    (data / "_SUCCESS").write_text("")  # a marker: not worth a word
    proc = _cli("score", "--model", trained.model_uri, "--data", str(data), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0 and "scored 500 rows" in proc.stdout
    assert "warning: 3 file(s) in the input lack the .parquet extension, are not regular files, or sit under a name " \
           "starting with _ or ." in proc.stdout and "_SUCCESS" not in proc.stdout.split("warning:")[1]


def test_an_input_file_replaced_while_it_is_read_is_never_committed(trained, tmp_path):
    data = tmp_path / "in"
    write_shards(make_mixed_table(3000, seed=8, start_id=0), str(data), 3)
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen(paused_cli.command("jobs.runtime.progress:Progress.update", "", ready, go, "score", "--model",
                                               trained.model_uri, "--data", str(data), "--out", str(tmp_path / "o"),
                                               "--id-columns", ROW_ID), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    paused_cli.wait_for(ready, proc)  # the first file is scored; the others are about to be read
    shutil.copy(data / "part-00000.parquet", data / "part-00002.parquet")  # the same rows again, 1000 of them
    go.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "part-00002.parquet changed while this run read it" in err, err
    assert committed_run(str(tmp_path / "o")) is None and not (tmp_path / "o").exists()


def test_bad_pointers_thresholds_paths_and_folders_are_one_line_and_leave_nothing(trained, mixed_data, tmp_path):
    score = ["score", "--model", trained.model_uri, "--data", mixed_data["score"]]
    out = tmp_path / "o"
    out.mkdir()
    (out / "_aescore.json").write_text('{"format": "aescore-output", "kind": "scores"}')
    (out / "_SUCCESS").write_text("garbage")  # edited by hand
    _one_error(_cli(*score, "--out", str(out)), r"_SUCCESS is not an aescore commit pointer \(edited\?\)")
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_aescore.json"]  # no run folder left behind
    _one_error(_cli(*score, "--out", str(tmp_path / "t"), "--threshold", "1e400"),
               r"--threshold must be a finite number >= 0, got inf")
    (tmp_path / "lock").mkdir()
    (tmp_path / "lock" / "_commit.lock").mkdir()  # aescore's lock file made a folder
    (tmp_path / "lock" / "_aescore.json").write_text('{"format": "aescore-output", "kind": "scores"}')
    _one_error(_cli(*score, "--out", str(tmp_path / "lock")), r"an entry aescore keeps there .* is not what aescore wrote")
    long_out = str(tmp_path / "/".join(["a" * 200] * 20))
    _one_error(_cli(*score, "--out", long_out), r"a path is longer than this system allows")
    assert not (tmp_path / ("a" * 200)).exists()
    scores = tmp_path / "s"
    assert _cli(*score, "--out", str(scores)).returncode == 0
    _one_error(_cli("score", "--model", str(scores), "--data", mixed_data["score"], "--out", str(tmp_path / "x")),
               r"holds aescore scores output, not a model artefact")
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(f"cd {gone} && rmdir {gone} && {sys.executable} -m jobs.cli --version", shell=True,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    _one_error(proc, r"the current directory no longer exists")


def test_publish_latest_inside_the_new_out_is_refused_before_training(mixed_data, tmp_path):
    out = tmp_path / "m"
    _one_error(_cli("train", "--data", mixed_data["train"], "--out", str(out), "--exclude-columns",
                    f"{ROW_ID},{LABEL}", "--epochs", "1", "--publish-latest", str(out / "_SUCCESS")),
               r"--publish-latest .*/m/_SUCCESS lies inside --out .*/m; the pointer file must be outside")
    assert not out.exists()


def test_a_users_pointer_temp_file_and_sweep_files_are_never_replaced(mixed_data, tmp_path):
    """--publish-latest writes through a temporary name of its own; a folder is adopted as an older
    sweep only if it holds nothing but that sweep."""
    import json as _json

    from aemodel import AnomalyAutoencoder, read_scores, read_summary
    from aemodel.outputs import NotScoresError
    from jobs import sweep

    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "LATEST.json.tmp").write_text("mine")
    proc = _cli("train", "--data", mixed_data["train"], "--out", str(tmp_path / "m"), "--exclude-columns",
                f"{ROW_ID},{LABEL}", "--epochs", "2", "--publish-latest", str(pub / "LATEST.json"))
    assert proc.returncode == 0, proc.stderr
    assert (pub / "LATEST.json.tmp").read_text() == "mine" and sorted(os.listdir(pub)) == ["LATEST.json",
                                                                                             "LATEST.json.tmp"]
    with pytest.raises(NotScoresError, match="not a scoring run"):
        read_scores(str(tmp_path / "m"))
    with pytest.raises(NotScoresError):
        read_summary(str(tmp_path / "m"))

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sweep.json").write_text(_json.dumps({"recommended_latent_dim": 2, "rows": [{"latent_dim": 2}]}))
    (mine / "sweep.csv").write_text("my numbers")
    assert not sweep._legacy_sweep(str(mine), {})  # a sweep.json alone is not a sweep's prefix
    old = tmp_path / "old"
    (old / "latent-2").parent.mkdir()
    AnomalyAutoencoder(epochs=1, hidden_dims=[8], latent_dim=2).fit(
        mixed_data["train_table"].drop_columns([ROW_ID, LABEL]).slice(0, 400)).save(str(old / "latent-2"))
    (old / "sweep.json").write_text((mine / "sweep.json").read_text())
    assert sweep._legacy_sweep(str(old), {})
    (old / "notes.md").write_text("mine")
    assert not sweep._legacy_sweep(str(old), {})


def test_sweep_labels_of_one_class_or_not_0_1_are_refused_before_any_trial(mixed_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import sweep
    from jobs.runtime.errors import InputError

    table = mixed_data["score_table"]
    cases = {"one class": (np.zeros(table.num_rows, bool), "holds 0 anomalies and 2000 normal rows; AUROC needs both"),
             "not binary": (np.full(table.num_rows, 2.5), "holds 2.5; it must hold 0/1")}
    for name, (labels, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table.set_column(table.schema.get_field_index(LABEL), LABEL, pa.array(labels)), path)
        cfg = sweep.SweepConfig(data=mixed_data["train"], out=str(tmp_path / "sw"), latent=[2], label_data=str(path),
                                label_column=LABEL, train=sweep.TrainOptions(exclude_columns=[ROW_ID]))
        with pytest.raises(InputError, match=message):
            sweep.check_inputs(cfg, {})
        assert not (tmp_path / "sw").exists()


def test_values_near_float_max_are_one_error_line_naming_the_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    huge = rng.normal(size=500)
    huge[:5] = 1.7e308
    pq.write_table(pa.table({"id": np.arange(500), "a": huge, "b": rng.normal(size=500)}), tmp_path / "t.parquet")
    proc = _cli("train", "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "m"), "--exclude-columns",
                "id", "--epochs", "2")
    _one_error(proc, r"column 'a' holds values too large to standardise \(up to 1\.7e\+308")
    assert not (tmp_path / "m").exists()


def test_an_error_while_the_next_chunk_is_read_stays_the_error(monkeypatch):
    """The scorer fails while the prefetch thread is inside the chunk generator: the caller sees that failure,
    never "generator already executing" from closing the generator."""
    import threading
    import time

    from jobs.scoring import local as score_local

    inside = threading.Event()

    import pyarrow as pa

    def chunks():
        yield pa.table({"x": [1, 2]})
        inside.set()
        time.sleep(0.5)  # the prefetch thread is here when the scorer fails
        yield pa.table({"x": [3]})

    def scorer(_table):
        inside.wait(5)
        raise KeyboardInterrupt  # what the signal handler's Interrupted is

    def interrupted_shutdown(self, wait=True, **kwargs):  # the signal lands while the pool joins its threads
        raise KeyboardInterrupt

    monkeypatch.setattr(score_local.ThreadPoolExecutor, "shutdown", interrupted_shutdown)
    gen = chunks()
    with pytest.raises(KeyboardInterrupt):
        try:
            score_local.score_in_process(gen, scorer, None, lambda t: None)
        finally:
            gen.close()  # as score_locally does: must not raise ValueError


def test_a_failure_after_a_swallowed_signal_reports_the_signal():
    """fsspec's bare except can swallow the handler's exception; the error that follows is not what happened."""
    import signal as _signal

    from jobs.runtime import entry

    def job() -> str:
        try:
            _signal.raise_signal(_signal.SIGTERM)
        except BaseException:  # noqa: BLE001 - a library that swallows everything
            pass
        raise FileNotFoundError("no complete model artefact at ../model")

    assert entry.run_cli(job) == 143


def test_a_clean_up_cut_short_keeps_its_attempt_marker_so_the_next_run_finishes_it(tmp_path, monkeypatch):
    """The marker went first, so an interrupted clean-up left an orphan no later run would touch."""
    from fsspec.implementations.local import LocalFileSystem

    from aemodel import commit

    run = tmp_path / "runs" / "20261201T000000Z-0123abcd"
    (run / "rows").mkdir(parents=True)
    for name in ("_attempt.json", "comparison.json", "summary.json", "rows/part-0.parquet"):
        (run / name).write_text("x")
    real, calls = commit._delete, []

    def cut_short(fs, paths):
        calls.append(paths)
        real(fs, paths[:1])
        raise KeyboardInterrupt

    monkeypatch.setattr(commit, "_delete", cut_short)
    with pytest.raises(KeyboardInterrupt):
        commit.remove_own_files(LocalFileSystem(), str(run))
    assert (run / "_attempt.json").exists() and not any(p.endswith("_attempt.json") for p in calls[0])
    monkeypatch.setattr(commit, "_delete", real)
    assert commit.remove_own_files(LocalFileSystem(), str(run)) == [] and not run.exists()  # all aescore's
