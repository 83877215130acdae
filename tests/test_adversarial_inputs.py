"""Valid but unusual input scores right; bad input is one bounded ``error:`` line naming it, exit 2.

Each case was found by trying the tool as a hostile user would: repeated ids, colliding
names, integers float64 cannot hold, id types, secrets in options, YAML bombs, template
typos, out-of-range dates, object-store paths, denied credentials, FIFOs, a backfill whose
last night is broken.
"""

from __future__ import annotations

import decimal
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aemodel.commit import committed_run
from jobs import score
from jobs.data.synthetic import ROW_ID, make_mixed_table, write_shards

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _one_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    import re

    assert re.search(pattern, proc.stderr), proc.stderr


@pytest.mark.parametrize("compute", ["local", "tasks"])
@pytest.mark.parametrize("ids", ["restarting", "constant"])
def test_repeated_ids_across_shards_score_every_row_once(ids, compute, trained, tmp_path):
    """Row files were named by a hash of their ids: equal ids in two files wrote one file over the other."""
    data = tmp_path / "in"
    data.mkdir()
    for i in range(3):  # the same rows, with the same ids, in three files
        t = make_mixed_table(400, seed=3, start_id=0)
        t = t.set_column(0, ROW_ID, pa.array(np.zeros(400, np.int64) if ids == "constant" else np.arange(400)))
        pq.write_table(t, data / f"part-{i}.parquet")
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=str(data), out=str(tmp_path / "o"),
                                         id_columns=[ROW_ID], compute=compute))
    rows = pq.read_table(f"{committed_run(str(tmp_path / 'o'))}/rows")
    assert result.summary["row_count"] == rows.num_rows == 1200 and rows.column_names[0] == ROW_ID
    assert "row_hash" not in rows.column_names  # named the files, not written


def _model_with_feature(tmp_path: Path, name: str, values) -> tuple[str, pa.Table]:
    rng = np.random.default_rng(0)
    t = pa.table({"x": rng.normal(size=300), "y": rng.normal(size=300), name: values})
    (tmp_path / "train").mkdir()
    pq.write_table(t, tmp_path / "train" / "part-0.parquet")
    return str(tmp_path / "train"), t


def test_a_feature_named_row_hash_is_refused_up_front(trained, tmp_path):
    """Reading adds the synthetic row id under that name (Ray Data replaces such a column): two 'row_hash' fields."""
    data, _ = _model_with_feature(tmp_path, "row_hash", np.arange(300) % 7)
    _one_error(_cli("train", "--data", data, "--out", str(tmp_path / "m"), "--epochs", "1"),
               r"part-0\.parquet: column 'row_hash' is a feature, but aescore reserves that name .*--exclude-columns")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind", ["int64", "uint64", "no statistics"])
def test_integers_float64_cannot_hold_are_refused_naming_the_column(kind, tmp_path):
    big = np.array([1, 2**60 + 1, 3] * 100, dtype=np.uint64 if kind == "uint64" else np.int64)
    data, t = _model_with_feature(tmp_path, "bytes", big)
    if kind == "no statistics":  # found only while reading: the cast error still names file and column
        pq.write_table(t, Path(data) / "part-0.parquet", write_statistics=False)
        pattern = r"part-0\.parquet: column 'bytes' \(int64\) cannot be read as double"
    else:
        pattern = r"part-0\.parquet: column 'bytes' holds integers up to 1\.15e\+18, beyond 2\*\*53"
    _one_error(_cli("train", "--data", data, "--out", str(tmp_path / "m"), "--epochs", "1"), pattern)


@pytest.mark.parametrize("compute", ["local", "tasks"])
def test_an_id_column_that_is_also_a_feature_keeps_its_type(compute, ray_start_2_cpus, tmp_path):
    """Ids came back as double: int64 ids lost their type, decimals gained digits."""
    rng = np.random.default_rng(1)
    n = 400
    t = pa.table({"id": pa.array(np.arange(10**15, 10**15 + n), pa.int64()), "x": rng.normal(size=n),
                  "price": pa.array([decimal.Decimal(f"{v:.2f}") for v in rng.uniform(1, 99, n)], pa.decimal128(9, 2))})
    (tmp_path / "d").mkdir()
    pq.write_table(t, tmp_path / "d" / "part-0.parquet")
    from jobs import train

    model = train.run(train.TrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / f"m-{compute}"), epochs=2,
                                        hidden_dims=[8], in_process=True))
    score.run(score.ScoreConfig(model=model.model_uri, data=str(tmp_path / "d"), out=str(tmp_path / "o"),
                                id_columns=["id", "price"], compute=compute))
    rows = pq.read_table(f"{committed_run(str(tmp_path / 'o'))}/rows").sort_by("id")
    assert rows.schema.field("id").type == pa.int64() and rows.schema.field("price").type == pa.decimal128(9, 2)
    assert rows["id"].equals(t["id"]) and rows["price"].equals(t["price"])


SECRET = "s3cr3t-VALUE-42"


@pytest.mark.parametrize("how", [["--storage-options", "{secret: " + SECRET], ["--storage-options", f"[{SECRET}]"],
                                 ["--storage-options", "{a: {secret: " + SECRET + "}}"],
                                 ["--storage-options", SECRET], ["config", f'storage_options: "secret={SECRET}"'],
                                 ["config", f"storage_options: [{SECRET}]"],
                                 ["config", f"storage_options:\n  a:\n    b: {SECRET}"]],
                         ids=["broken-mapping", "list", "nested", "bare", "yaml-string", "yaml-list", "yaml-nested"])
def test_a_storage_option_value_is_never_printed(how, tmp_path):
    if how[0] == "config":
        (tmp_path / "c.yaml").write_text(how[1] + "\n")
        how = ["--config", str(tmp_path / "c.yaml")]
    proc = _cli("score", "--model", "m", "--data", "d", "--out", str(tmp_path / "o"), *how)
    assert proc.returncode == 2 and SECRET not in proc.stdout + proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "storage" in proc.stderr


def test_yaml_aliases_are_refused_and_an_error_line_stays_short(tmp_path):
    """A billion-laughs config ran past 300 s at 3 GB; a huge value printed a 25 MB error line."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nid_columns: *a9\n")
    proc = _cli("score", "--model", "m", "--data", "d", "--out", "o", "--config", str(tmp_path / "bomb.yaml"))
    _one_error(proc, r"YAML aliases \(\*a0\) are not accepted")
    (tmp_path / "big.yaml").write_text("top_k: [" + ",".join(["x" * 1000] * 500) + "]\n")
    proc = _cli("score", "--model", "m", "--data", "d", "--out", "o", "--config", str(tmp_path / "big.yaml"))
    _one_error(proc, r"--top-k: expected int")
    assert len(proc.stderr) < 600


@pytest.mark.parametrize("args, pattern", [
    (["--data", "in/{region}/{date}"], r"--data in/\{region\}/\{date\}: placeholder \{region\} is not filled in"),
    (["--data", "in/{}/{date}"], r"placeholder \{\} is not filled in"),
    (["--out", "out/{date:%Y}"], r"placeholder \{date:%Y\} is not filled in"),
    (["--history-nights", "1000000"], r"--history-nights must be between 0 and 3660"),
    (["--date", "0001-01-03"], r"0001-01-03 minus --history-nights 7 days is before the year 1"),
    (["--start", "0001-01-01", "--end", "9999-12-31"], r"is 3652059 nights; a backfill runs at most 3660"),
])
def test_nightly_options_that_raised_raw_exceptions_are_one_line(args, pattern, tmp_path):
    base = {"--data": "in/{date}", "--out": "out/{date}"}
    base.update(dict(zip(args[::2], args[1::2])))
    _one_error(_cli("nightly", "--model", "m", *[x for kv in base.items() for x in kv]), pattern)


def test_object_store_paths_and_denied_credentials_name_the_location(trained, mixed_data, bucket, s3_server, tmp_path):
    from aemodel.artifact import artifact_folder
    from tests.s3_fault_proxy import FaultProxy

    write_shards(mixed_data["score_table"], f"{bucket}/in", 1)
    _one_error(_cli("score", "--model", trained.model_uri, "--data", f"{bucket}/in", "--out", f"{bucket}/out//x"),
               rf"--out {bucket}/out//x has an empty path segment")  # was found only after scoring
    import s3fs

    for f in Path(artifact_folder(trained.model_uri)).iterdir():
        s3fs.S3FileSystem().put(str(f), f"{bucket[5:]}/model/{f.name}")
    model = f"{bucket}/model"  # a run folder loads on its own
    assert _cli("score", "--model", model, "--data", f"{bucket}/in", "--out", f"{bucket}/ok").returncode == 0
    for denied, pattern in ((f"{bucket[5:]}/model", rf"model artefact at {model}: access denied"),
                            (f"{bucket[5:]}/scores", rf"{bucket}/scores: access denied")):
        with FaultProxy(s3_server["endpoint"], deny=denied) as proxy:
            proc = _cli("score", "--model", model, "--data", f"{bucket}/in", "--out", f"{bucket}/scores",
                        env={"AWS_ENDPOINT_URL": proxy.url})
        _one_error(proc, pattern + r" \((Forbidden|Access Denied)\); check the credentials for this location")


def test_a_fifo_named_parquet_is_skipped_not_read_forever(trained, mixed_data, tmp_path):
    data = tmp_path / "in"
    write_shards(mixed_data["score_table"], str(data), 2)
    os.mkfifo(data / "stream.parquet")
    proc = _cli("score", "--model", trained.model_uri, "--data", str(data), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0 and "are not regular files" in proc.stdout and "were not read (e.g. file://" in proc.stdout
    _one_error(_cli("score", "--model", trained.model_uri, "--data", str(data / "stream.parquet"), "--out",
                    str(tmp_path / "o2")), r"stream\.parquet is not a regular file or a folder")


def test_a_backfill_checks_every_nights_footers_before_the_first(trained, tmp_path):
    for day in ("2026-10-01", "2026-10-02", "2026-10-03"):
        t = make_mixed_table(300, seed=int(day[-1]), start_id=0)
        write_shards(t.drop_columns(["num_3"]) if day.endswith("3") else t, str(tmp_path / f"in/dt={day}"), 1)
    proc = _cli("nightly", "--model", trained.model_uri, "--data", str(tmp_path / "in/dt={date}"), "--out",
                str(tmp_path / "out/dt={date}"), "--start", "2026-10-01", "--end", "2026-10-03",
                "--score.id_columns", ROW_ID)
    _one_error(proc, r"dt=2026-10-03/part-00000\.parquet: missing feature column\(s\) \['num_3'\]")
    assert not (tmp_path / "out").exists()  # no night was committed before the broken one was found


def test_the_cli_process_ends_without_interpreter_finalization(trained, tmp_path):
    """Finalization with pyarrow pool threads still decoding aborted (exit 134) after the error line."""
    script = ("import atexit, sys; atexit.register(lambda: open(sys.argv[1], 'w').close()); "
              "from jobs.cli import entry; sys.argv = ['aescore'] + sys.argv[2:]; entry()")
    marker = tmp_path / "finalized"
    proc = subprocess.run([sys.executable, "-c", script, str(marker), "score", "--model", trained.model_uri,
                           "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: input path does not exist")
    assert not marker.exists()
    bad = tmp_path / "bad"  # the observed case: a value check fails while the next file is being read
    write_shards(make_mixed_table(2000, seed=4, start_id=0), str(bad), 8)
    t = pq.read_table(bad / "part-00003.parquet")
    flag = t["flag_0"].cast(pa.int64()).to_numpy().copy()
    flag[7] = 2
    pq.write_table(t.set_column(t.schema.get_field_index("flag_0"), "flag_0", pa.array(flag)), bad / "part-00003.parquet")
    for _ in range(4):
        _one_error(_cli("score", "--model", trained.model_uri, "--data", str(bad), "--out", str(tmp_path / "o")),
                   r"part-00003\.parquet: binary column 'flag_0' has values other than 0/1")
