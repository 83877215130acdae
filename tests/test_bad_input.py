"""Bad-input matrix: each case names the file/column/problem and commits nothing.

Error cases go through the real CLI (exit code 2, one ``error:`` line); cases the system
handles (extra columns, NaN/inf, empty files, unseen categories, an all-NaN column at
scoring time) are scored and reported.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aemodel.artifact import artifact_folder
from jobs import score
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=300)


def _table(n=200, seed=7):
    return make_mixed_table(n, seed=seed, start_id=50_000)


def _write(dirpath: Path, tables: dict[str, pa.Table]) -> str:
    dirpath.mkdir(parents=True, exist_ok=True)
    for name, t in tables.items():
        pq.write_table(t, dirpath / name)
    return str(dirpath)


def _case_missing_column(d):
    return _write(d, {"ok.parquet": _table(), "bad.parquet": _table().drop_columns(["num_3"])}), \
        r"bad\.parquet: missing feature column\(s\) \['num_3'\]"


def _case_type_changed(d):
    t = _table()
    t = t.set_column(t.schema.get_field_index("num_0"), "num_0", pa.array([str(v) for v in t["num_0"].to_pylist()]))
    return _write(d, {"part.parquet": t}), r"part\.parquet: column 'num_0' has type string"


def _case_numbers_became_booleans(d):
    t = _table()
    t = t.set_column(t.schema.get_field_index("num_0"), "num_0", pc.greater(t["num_0"], 0))
    return _write(d, {"part.parquet": t}), r"part\.parquet: column 'num_0' has type bool, .* \(trained on double\)"


def _case_categories_became_codes(d):
    t = _table()
    codes = pc.cast(pc.dictionary_encode(t["cat_0"]).combine_chunks().indices, pa.int64())
    return _write(d, {"part.parquet": t.set_column(t.schema.get_field_index("cat_0"), "cat_0", codes)}), \
        r"part\.parquet: column 'cat_0' has type int64, .* \(trained on string\)"


def _case_zero_rows(d):
    return _write(d, {"a.parquet": _table().slice(0, 0), "b.parquet": _table().slice(0, 0)}), \
        "2 Parquet file\\(s\\) but zero rows in total"


def _case_corrupt_file(d):
    path = _write(d, {"good.parquet": _table(), "torn.parquet": _table()})
    data = (d / "torn.parquet").read_bytes()
    (d / "torn.parquet").write_bytes(data[: len(data) // 2])
    return path, r"torn\.parquet: not a readable Parquet file"


def _case_not_parquet(d):
    d.mkdir(parents=True)
    (d / "events.parquet").write_text("id,value\n1,2\n")
    return str(d), r"events\.parquet: not a readable Parquet file"


def _case_missing_path(d):
    return str(d / "nowhere"), "input path does not exist: .*nowhere"


def _case_other_models_schema(d):
    rng = np.random.default_rng(0)
    t = pa.table({"price": rng.normal(size=50), "zip": rng.choice(["a", "b"], 50)})
    return _write(d, {"other.parquet": t}), r"other\.parquet: missing feature column\(s\) \['num_0', 'num_1'"


SCORE_INPUT_CASES = {
    "missing_feature_column": _case_missing_column,
    "column_type_changed": _case_type_changed,
    "numbers_became_booleans": _case_numbers_became_booleans,
    "categories_became_integer_codes": _case_categories_became_codes,
    "zero_rows_in_total": _case_zero_rows,
    "truncated_parquet": _case_corrupt_file,
    "not_parquet": _case_not_parquet,
    "nonexistent_path": _case_missing_path,
    "schema_of_another_model": _case_other_models_schema,
}


def _assert_failed_cleanly(out: subprocess.CompletedProcess, pattern: str, out_dir: Path) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-2000:]
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not (out_dir / "_SUCCESS").exists() and not (out_dir / "runs").exists()


@pytest.mark.parametrize("case", sorted(SCORE_INPUT_CASES))
def test_bad_scoring_input(case, trained, tmp_path):
    data, pattern = SCORE_INPUT_CASES[case](tmp_path / "in")
    out_dir = tmp_path / "new" / "out"
    result = _cli("score", "--model", trained.model_uri, "--data", data, "--out", str(out_dir))
    _assert_failed_cleanly(result, pattern, out_dir)
    assert not (tmp_path / "new").exists()  # the folders it created are gone again


def test_nonexistent_bucket(trained, tmp_path, s3_server):
    out_dir = tmp_path / "out"
    result = _cli("score", "--model", trained.model_uri, "--data", "s3://no-such-bucket-aescore/x/",
                  "--out", str(out_dir))
    _assert_failed_cleanly(result, "no-such-bucket-aescore", out_dir)


@pytest.mark.parametrize("damage, pattern", [
    ("delete_weights", "model artefact at .* is incomplete"),
    ("flip_weight_byte", "does not match its checksum"),
    ("edit_metadata", "does not match its version hash"),
    ("remove_success", "no complete model artefact"),
])
def test_damaged_model_artefact(damage, pattern, trained, mixed_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained.model_uri, model)
    files = Path(artifact_folder(str(model)))  # the committed run folder
    if damage == "delete_weights":
        (files / "model.safetensors").unlink()
    elif damage == "flip_weight_byte":
        data = bytearray((files / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 0x01
        (files / "model.safetensors").write_bytes(bytes(data))
    elif damage == "edit_metadata":
        meta = json.loads((files / "model.json").read_text())
        meta["threshold"]["value"] *= 10
        (files / "model.json").write_text(json.dumps(meta))
    else:
        (model / "_SUCCESS").unlink()
    out_dir = tmp_path / "out"
    result = _cli("score", "--model", str(model), "--data", mixed_data["score"], "--out", str(out_dir))
    _assert_failed_cleanly(result, pattern, out_dir)


@pytest.mark.parametrize("flags, pattern", [
    (["--latent-dim", "-4"], "--latent-dim must be >= 1, got -4"),
    (["--column-types", "num_0=ordinal"], "num_0=ordinal: unknown column type"),
    (["--epochs", "ten"], "--epochs: expected int. Got value: ten"),
    (["--feature-columns", "num_0,nope"], r"feature column\(s\) \['nope'\] not in the data"),
])
def test_invalid_training_config_rejected_before_ray(flags, pattern, mixed_data, tmp_path):
    out_dir = tmp_path / "model"
    result = _cli("train", "--data", mixed_data["train"], "--out", str(out_dir), *flags)
    _assert_failed_cleanly(result, pattern, out_dir)
    assert "Started a local Ray instance" not in result.stderr


@pytest.mark.parametrize("command", ["train", "score"])
def test_out_that_is_a_file_is_refused_and_left_alone(command, trained, mixed_data, tmp_path):
    mine = tmp_path / "scores.parquet"
    mine.write_bytes(b"my own file")
    args = ["--data", mixed_data["score"], "--out", str(mine)]
    result = _cli(command, *args, *(["--model", trained.model_uri] if command == "score" else []))
    _assert_failed_cleanly(result, r"--out .*scores\.parquet is a file; aescore writes a folder", tmp_path / "none")
    assert mine.read_bytes() == b"my own file"


def test_train_out_holding_a_spark_output_is_refused_as_the_users(mixed_data, tmp_path):
    """A _SUCCESS file alone does not make a folder an aescore model (Spark writes one too)."""
    spark = tmp_path / "spark"
    spark.mkdir()
    (spark / "_SUCCESS").write_text("")
    (spark / "part-00000.parquet").write_bytes(b"theirs")
    result = _cli("train", "--data", mixed_data["train"], "--out", str(spark))
    _assert_failed_cleanly(result, r"spark already holds files that aescore did not write \(_SUCCESS, part-00000",
                           tmp_path / "none")
    assert sorted(p.name for p in spark.iterdir()) == ["_SUCCESS", "part-00000.parquet"]


@pytest.mark.parametrize("command", ["train", "score", "sweep"])
def test_use_gpu_without_a_gpu_or_cluster_is_refused_instead_of_waiting_forever(command, trained, mixed_data,
                                                                                 tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    data = mixed_data["score" if command == "score" else "train"]
    flags = {"train": ["--use-gpu"], "score": ["--use-gpu", "--model", trained.model_uri], "sweep": ["--train.use-gpu"]}
    result = _cli(command, "--data", data, "--out", str(tmp_path / "o"), *flags[command])
    _assert_failed_cleanly(result, r"--use-gpu: this machine has no CUDA GPU", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_training_on_too_few_rows_names_the_input_before_ray(tmp_path):
    data = _write(tmp_path / "in", {"one.parquet": _table().slice(0, 1)})
    result = _cli("train", "--data", data, "--out", str(tmp_path / "m"))
    _assert_failed_cleanly(result, r"--data .*in: 1 row\(s\); training needs at least 10", tmp_path / "m")
    assert "Started a local Ray instance" not in result.stderr and not (tmp_path / "m").exists()


DEMO_CASES = {  # where the user's file sits -> the folder the refusal names
    "data/train/notes.txt": "data/train", "data/score/notes.txt": "data/score",
    "model/mine.txt": "model", "scores/mine.txt": "scores", "mine.txt": "demo",
}


@pytest.mark.parametrize("where", sorted(DEMO_CASES))
def test_demo_out_holding_a_users_files_is_refused_before_anything_is_written(where, tmp_path):
    """The demo deletes its own earlier data only: a user's file anywhere it writes stops it, untouched."""
    out = tmp_path / "demo"
    # A new folder of the user's; a folder an earlier demo run marked as its own (where a file at
    # the top is simply left alone: the demo writes only into its sub-folders).
    for marked in (False, True) if "/" in where else (False,):
        mine = out / where
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.write_text("keep")
        if marked:
            (out / "_aescore.json").write_text('{"format": "aescore-output", "kind": "demo"}')
        result = _cli("demo", "--out", str(out), "--rows", "500", "--epochs", "1")
        named = str(out if DEMO_CASES[where] == "demo" or not marked else out / DEMO_CASES[where])
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {named} already holds files that aescore "
                                                                 "did not"), result.stderr
        assert mine.read_text() == "keep"
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
            sorted([where, *(["_aescore.json"] if marked else [])])


def _labelled(d: Path, change) -> str:
    return _write(d, {"l.parquet": change(_table(300))})


SWEEP_CASES = {
    "out holds a user's sweep.csv": (lambda d: [], r"already holds files that aescore did not write \(sweep\.csv\)"),
    "a trial's folder holds a user's file": (lambda d: [], r"sweep/latent-2 already holds files that aescore did not "
                                                           r"write \(notes\.txt\)"),
    "missing --data": (lambda d: ["--data", str(d / "nowhere")], r"does not exist: .*nowhere"),
    "no such label column": (lambda d: ["--label-column", "nosuch"], r"label column 'nosuch' not found"),
    "text label column": (lambda d: ["--label-data", _labelled(d / "l", lambda t: t.set_column(
        t.schema.get_field_index(LABEL), LABEL, pa.array(["yes"] * t.num_rows)))],
        rf"label column '{LABEL}' is string; it must hold 0/1"),
    "label data lacks a feature": (lambda d: ["--label-data", _labelled(d / "l", lambda t: t.drop_columns(["num_0"]))],
                                   r"missing feature column\(s\) \['num_0'\]"),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_sweep_input_is_refused_before_ray_and_leaves_out_alone(case, mixed_data, tmp_path):
    """Checked on the driver before any trial: exit 2, one line, and a user's file in --out untouched."""
    extra, pattern = SWEEP_CASES[case]
    out = tmp_path / "sweep"
    out.mkdir()
    if case.startswith("out holds"):
        (out / "sweep.csv").write_text("my own table\n")
    if case.startswith("a trial's"):  # a sweep's prefix from an earlier run, a user's file in one model folder
        (out / "_aescore.json").write_text('{"format": "aescore-output", "kind": "sweep"}')
        (out / "latent-2").mkdir()
        (out / "latent-2" / "notes.txt").write_text("mine\n")
    args = {"--data": mixed_data["train"], "--out": str(out), "--latent": "2", "--label-data": mixed_data["score"],
            "--label-column": LABEL, "--train.exclude-columns": ROW_ID}
    flags = extra(tmp_path)
    args.update(zip(flags[::2], flags[1::2]))
    result = _cli("sweep", *[x for kv in args.items() for x in kv])
    _assert_failed_cleanly(result, pattern, out)
    assert "Started a local Ray instance" not in result.stderr
    before = {"out holds": ["sweep.csv"], "a trial's": ["_aescore.json", "latent-2"]}
    assert sorted(p.name for p in out.iterdir()) == next((v for k, v in before.items() if case.startswith(k)), [])
    if case.startswith("a trial's"):
        assert [p.name for p in (out / "latent-2").iterdir()] == ["notes.txt"]
    if case.startswith("out holds"):
        assert (out / "sweep.csv").read_text() == "my own table\n"


def test_all_nan_column_in_training_names_the_column(ray_start_2_cpus, tmp_path):
    t = _table(400)
    t = t.set_column(t.schema.get_field_index("num_2"), "num_2", pa.array(np.full(400, np.nan)))
    data = _write(tmp_path / "in", {"a.parquet": t})
    from jobs import train
    from jobs.runtime.errors import describe

    with pytest.raises(Exception) as err:
        train.run(train.TrainConfig(data=data, out=str(tmp_path / "m"), exclude_columns=[ROW_ID, LABEL], epochs=1))
    assert describe(err.value).startswith("column 'num_2' has no non-missing value in the training data")
    assert not (tmp_path / "m" / "_SUCCESS").exists()


def test_handled_inputs_are_scored_and_reported(trained, tmp_path):
    """Extra columns, NaN/inf, an all-NaN column, unseen categories, an empty file."""
    t = _table(300)
    num = t["num_4"].to_numpy(zero_copy_only=False).copy()
    num[:3] = [np.nan, np.inf, -np.inf]
    t = t.set_column(t.schema.get_field_index("num_4"), "num_4", pa.array(num))
    t = t.set_column(t.schema.get_field_index("num_6"), "num_6", pa.array(np.full(300, np.nan)))
    cats = t["cat_0"].to_pylist()
    cats[10:15] = ["never-seen"] * 5
    t = t.set_column(t.schema.get_field_index("cat_0"), "cat_0", pa.array(cats))
    t = t.append_column("comment", pa.array(["x"] * 300))
    data = _write(tmp_path / "in", {"a.parquet": t, "empty.parquet": t.slice(0, 0)})
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=data, out=str(tmp_path / "o"),
                                         id_columns=[ROW_ID]))
    s = result.summary
    assert s["row_count"] == 300 and s["nonfinite"] == 0
    assert s["input"]["ignored_columns"] == ["comment", LABEL]
    assert [p.rsplit("/", 1)[-1] for p in s["input"]["skipped_empty_files"]] == ["empty.parquet"]
    assert s["unseen_cells"] == 5
    rows = pq.read_table(f"{result.run_uri}/rows").sort_by(ROW_ID)
    missing = rows["missing_cells"].to_numpy()
    base = (~np.isfinite(t.sort_by(ROW_ID)["num_1"].to_numpy(zero_copy_only=False))).astype(int)  # demo's own gaps
    expected = base + 1  # num_6 everywhere
    expected[np.isin(rows[ROW_ID].to_numpy(), t[ROW_ID].to_numpy()[:3])] += 1
    assert missing.tolist() == expected.tolist()
    assert s["missing_cells"] == int(expected.sum())
    assert np.all(np.isfinite(rows["recon_error"].to_numpy()))
    # num_6 gone missing: more missing cells than in training, said (the rows still score, as documented)
    assert s["training_missing_cell_fraction"] < s["missing_cell_fraction"] - 0.05
    assert any(w.startswith(f"{100 * s['missing_cell_fraction']:.1f}% of the feature cells are missing (training: ")
               for w in s["warnings"]), s["warnings"]


def test_scoring_warns_about_rows_with_nothing_observed_and_about_most_rows_flagged():
    from jobs.scoring.summary import summary_warnings

    base = {"row_count": 500, "missing_cells": 0, "missing_cell_fraction": 0.0, "training_missing_cell_fraction": 0.0,
            "anomaly_rate": 0.02, "reference_anomaly_rate": 0.0055, "rows_all_missing": 0}
    assert summary_warnings(base) == []
    empty = summary_warnings({**base, "rows_all_missing": 500, "missing_cell_fraction": 1.0})
    assert empty[0].startswith("500 rows have every feature missing") and empty[1].startswith(
        "100.0% of the feature cells are missing (training: 0.0%)")
    assert summary_warnings({**base, "anomaly_rate": 0.982})[0].startswith(
        "98.2% of the rows are flagged, against 0.55% of the model's validation rows")
    assert summary_warnings({**base, "anomaly_rate": 0.982, "reference_anomaly_rate": None}) == []  # user's threshold


def _case_model_json_list(model: Path, tmp: Path) -> tuple[list[str], str]:
    (Path(artifact_folder(str(model))) / "model.json").write_text("[]")
    return ["--model", str(model)], "model.json holds a list, not an aescore model description"


def _case_pointer_with_a_number(model: Path, tmp: Path) -> tuple[list[str], str]:
    (tmp / "LATEST.json").write_text('{"model_uri": 5}')
    return ["--model", str(tmp / "LATEST.json")], "model_uri is not a URI string: 5"


def _case_config_is_a_folder(model: Path, tmp: Path) -> tuple[list[str], str]:
    (tmp / "conf").mkdir()
    return ["--model", str(model), "--config", str(tmp / "conf")], "--config: Path is not a file: .*conf"


def _case_storage_options_malformed(model: Path, tmp: Path) -> tuple[list[str], str]:
    return ["--model", str(model), "--storage-options", "secret=hunter2-secret,anon"], \
        "--storage-options: expected comma-separated key=value pairs"


@pytest.mark.parametrize("case", [_case_model_json_list, _case_pointer_with_a_number, _case_config_is_a_folder,
                                  _case_storage_options_malformed], ids=lambda c: c.__name__[6:])
def test_bad_model_pointer_config_and_options_are_one_sentence_exit_2(case, trained, mixed_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained.model_uri, model)
    args, pattern = case(model, tmp_path)
    out_dir = tmp_path / "out"
    result = _cli("score", "--data", mixed_data["score"], "--out", str(out_dir), *args)
    _assert_failed_cleanly(result, pattern, out_dir)
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr
