"""Scoring never loses a user's file and never writes a wrong score silently (issue: data safety).

Each case runs the real job (``score.run`` under the CLI's error contract, on the shared
2-CPU Ray): the exit code, the one ``error: ...`` line, and what is left on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aemodel import RowScorer, load_artifact
from jobs import score, train
from jobs.runtime.entry import run_cli
from aemodel.commit import OutputCommit, committed_run
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _table(n=300, seed=11):
    return make_mixed_table(n, seed=seed, start_id=70_000)


def _write(d: Path, tables: dict[str, pa.Table]) -> str:
    d.mkdir(parents=True, exist_ok=True)
    for name, t in tables.items():
        pq.write_table(t, d / name)
    return str(d)


def _cli_run(capsys, cfg: score.ScoreConfig, **kwargs) -> tuple[int, str, str]:
    code = run_cli(lambda: score.format_result(score.run(cfg, **kwargs)))
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
    return code, (errors[-1] if errors else ""), captured.out


def _expected_errors(model: str, table: pa.Table) -> dict[int, float]:
    scorer = RowScorer(load_artifact(model))
    return dict(zip(table[ROW_ID].to_pylist(), scorer.score_table(table)["recon_error"].tolist()))


def _scored(run_uri: str) -> dict[int, float]:
    rows = pq.read_table(f"{run_uri}/rows", columns=[ROW_ID, "recon_error"])
    return dict(zip(rows[ROW_ID].to_pylist(), rows["recon_error"].to_pylist()))


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def test_an_out_folder_with_user_files_is_refused_and_left_untouched(trained, mixed_data, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "rows").mkdir(parents=True)
    (out / "rows" / "keep.csv").write_text("a,b\n1,2\n")
    (out / "summary.json").write_text('{"mine": true}')
    before = _tree(out)
    code, line, _ = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"],
                                                        out=str(out), id_columns=[ROW_ID]))
    assert code == 2 and "already holds files that aescore did not write (rows, summary.json)" in line, line
    assert _tree(out) == before

    model = tmp_path / "model-out"
    model.mkdir()
    (model / "report.html").write_text("my own report")
    with pytest.raises(Exception, match="already holds files that aescore did not write"):
        train.run(train.TrainConfig(data=mixed_data["train"], out=str(model), exclude_columns=[ROW_ID, LABEL]))
    assert (model / "report.html").read_text() == "my own report"


@pytest.mark.parametrize("layout", ["data_inside_out", "out_inside_data"])
def test_overlapping_data_and_out_are_refused_before_ray(layout, trained, tmp_path, capsys):
    data = tmp_path / "v" / "rows"
    _write(data, {"a.parquet": _table()})
    out = tmp_path / "v" if layout == "data_inside_out" else data / "scores"
    before = _tree(tmp_path / "v")
    code, line, _ = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=str(data), out=str(out)))
    assert code == 2 and f"--out {out} overlaps --data {data}" in line, line
    assert _tree(tmp_path / "v") == before


def test_a_run_that_loses_the_race_to_commit_fails_clearly(trained, mixed_data, tmp_path, capsys):
    out = str(tmp_path / "o")
    winner: list[OutputCommit] = []

    def commit_another_run_first(summary: dict) -> dict[str, bytes]:
        other = OutputCommit(out)
        other.begin()
        other.commit({"summary.json": b'{"winner": true}'}, run_id="other")
        winner.append(other)
        return {}

    code, line, _ = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=out),
                             extra_files=commit_another_run_first)
    assert code == 2 and "another aescore run committed to" in line, line
    assert committed_run(out) == winner[0].run_uri
    assert [p.name for p in (tmp_path / "o" / "runs").iterdir()] == [winner[0].name]


def test_hive_folder_keys_never_replace_file_values(trained, tmp_path):
    """cat_0=zzz/ holds files with their own cat_0: the file's values are scored, as the footer check saw."""
    t = _table()
    data = _write(tmp_path / "in" / "cat_0=zzz", {"part.parquet": t})
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=str(tmp_path / "in"),
                                         out=str(tmp_path / "o"), id_columns=[ROW_ID]))
    assert data and result.summary["row_count"] == t.num_rows
    expected, got = _expected_errors(trained.model_uri, t), _scored(result.run_uri)
    assert got.keys() == expected.keys()
    assert np.allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("column, cast", [("cat_0", "dictionary"), ("flag_0", "int64"), ("num_0", "float32")])
def test_one_logical_type_stored_differently_across_shards_is_unified(column, cast, trained, tmp_path):
    t = _table(400)
    a, b = t.slice(0, 200), t.slice(200)
    i = b.schema.get_field_index(column)
    changed = pc.dictionary_encode(b[column]) if cast == "dictionary" else pc.cast(b[column], cast)
    _write(tmp_path / "in", {"a.parquet": a, "b.parquet": b.set_column(i, column, changed)})
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=str(tmp_path / "in"),
                                         out=str(tmp_path / "o"), id_columns=[ROW_ID]))
    expected, got = _expected_errors(trained.model_uri, t), _scored(result.run_uri)
    assert np.allclose([got[k] for k in expected], list(expected.values()), rtol=1e-4, atol=1e-5)


def test_an_error_raised_inside_ray_reaches_the_console_naming_the_file(trained, tmp_path):
    """A binary column holding a 2 fails in a Ray task; the real CLI prints the file and column, exit 2."""
    import ray

    t = _table(400)
    i = t.schema.get_field_index("flag_0")
    a, b = t.slice(0, 200), t.slice(200)
    flags = pc.cast(b["flag_0"], pa.int64()).to_numpy().copy()
    flags[7] = 2
    data = _write(tmp_path / "in", {"a.parquet": a.set_column(i, "flag_0", pc.cast(a["flag_0"], pa.int64())),
                                    "b.parquet": b.set_column(i, "flag_0", pa.array(flags))})
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "score", "--model", trained.model_uri, "--data", data,
                           "--out", str(out), "--ray-address", ray.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "b.parquet: binary column 'flag_0' has values other than 0/1" in errors[0], errors[0]
    assert not out.exists() or (not (out / "_SUCCESS").exists() and not list(out.rglob("*.parquet")))


def test_a_corrupt_data_page_names_the_file(trained, tmp_path, capsys):
    t = _table(400)
    _write(tmp_path / "in", {"a.parquet": t.slice(0, 200), "b.parquet": t.slice(200)})
    raw = bytearray((tmp_path / "in" / "b.parquet").read_bytes())
    for k in range(200, 1200):  # inside the data pages; the footer stays intact
        raw[k] ^= 0x5A
    (tmp_path / "in" / "b.parquet").write_bytes(bytes(raw))
    code, line, _ = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=str(tmp_path / "in"),
                                                        out=str(tmp_path / "o"), id_columns=[ROW_ID]))
    assert code == 2 and "b.parquet: " in line, line
    assert not (tmp_path / "o" / "_SUCCESS").exists()


@pytest.mark.parametrize("column", [ROW_ID, "num_0"])
def test_a_column_repeated_in_a_file_is_named(column, trained, tmp_path, capsys):
    t = _table()
    _write(tmp_path / "in", {"a.parquet": t, "b.parquet": t.append_column(column, t[column])})
    code, line, _ = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=str(tmp_path / "in"),
                                                        out=str(tmp_path / "o"), id_columns=[ROW_ID]))
    assert code == 2 and f"b.parquet: column(s) ['{column}'] appear more than once" in line, line


def test_files_without_the_parquet_extension_are_named_in_a_warning(trained, tmp_path, capsys):
    t = _table()
    _write(tmp_path / "in", {"a.parquet": t.slice(0, 150)})
    pq.write_table(t.slice(150), tmp_path / "in" / "b.snappy")
    code, _, stdout = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=str(tmp_path / "in"),
                                                          out=str(tmp_path / "o"), id_columns=[ROW_ID]))
    assert code == 0
    assert "warning: 1 file(s) in the input lack the .parquet extension, are not regular files, or sit under a " \
           "name starting with _ or . (markers, temporary output), and were not read" in stdout
    assert "b.snappy" in stdout


def test_a_missing_bucket_is_refused_not_created(trained, mixed_data, s3_server, capsys):
    import s3fs

    code, line, _ = _cli_run(capsys, score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"],
                                                        out="s3://aescore-no-such-bucket/scores"))
    assert code == 2 and "bucket 'aescore-no-such-bucket' does not exist" in line, line
    s3fs.S3FileSystem.clear_instance_cache()
    assert not s3fs.S3FileSystem().exists("aescore-no-such-bucket")
