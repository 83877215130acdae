"""The Python API: an estimator that trains as ``aescore train`` does, the same artefact both ways, one-line readers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aemodel import AnomalyAutoencoder, load_artifact, read_drift, read_scores, read_summary
from aemodel.commit import OutputError
from aemodel.estimator import NotFittedError
from aemodel.outputs import NothingCommittedError
from jobs import score, train
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table

OPTIONS = {"exclude_columns": [ROW_ID, LABEL], "epochs": 6, "hidden_dims": [16, 8]}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    (root / "train").mkdir()
    (root / "score").mkdir()
    fit = make_mixed_table(2500, seed=1, anomaly_fraction=0.03)
    new = make_mixed_table(800, seed=2, anomaly_fraction=0.05, start_id=10_000)
    pq.write_table(fit, root / "train" / "part-0.parquet")
    pq.write_table(new, root / "score" / "part-0.parquet")
    return {"root": root, "fit": fit, "new": new}


def _cli_rows(model: str, data: str, out: Path) -> pd.DataFrame:
    score.run(score.ScoreConfig(model=model, data=data, out=str(out), id_columns=[ROW_ID], top_k=3,
                                column_errors=True))
    return read_scores(str(out)).sort_values(ROW_ID).reset_index(drop=True)


def _api_rows(det: AnomalyAutoencoder, table: pa.Table) -> pd.DataFrame:
    rows = det.score_samples(table.to_pandas(), id_columns=[ROW_ID], top_k=3, column_errors=True)
    return rows.sort_values(ROW_ID).reset_index(drop=True)


def test_python_and_the_cli_train_the_same_model_and_score_identically(tables, tmp_path):
    root = tables["root"]
    cli = train.run(train.TrainConfig(data=str(root / "train"), out=str(tmp_path / "cli-model"), **OPTIONS))
    det = AnomalyAutoencoder(**OPTIONS).fit(tables["fit"].to_pandas())
    cli_art = load_artifact(cli.model_uri)
    # The same statistics, split, loop and calibration: the same weights, bit for bit.
    assert all(torch.equal(w, cli_art.state_dict[k]) for k, w in det.artifact_.state_dict.items())
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in hs] for hs in (cli_art.history, det.history_)]
    assert det.threshold_ == cli.threshold and untimed[0] == untimed[1]

    # Fitted in Python, scored by the CLI; trained by the CLI, scored in Python: identical rows.
    det.save(str(tmp_path / "py-model"))
    by_cli = _cli_rows(str(tmp_path / "py-model"), str(root / "score"), tmp_path / "s1")
    pd.testing.assert_frame_equal(by_cli, _api_rows(det, tables["new"]))
    loaded = AnomalyAutoencoder.load(cli.model_uri)
    assert loaded.epochs == 6 and loaded.hidden_dims == [16, 8] and loaded.threshold_ == cli.threshold
    by_cli = _cli_rows(cli.model_uri, str(root / "score"), tmp_path / "s2")
    pd.testing.assert_frame_equal(by_cli, _api_rows(loaded, tables["new"]))
    flagged = dict(zip(tables["new"][ROW_ID].to_pylist(), loaded.predict(tables["new"])))
    assert [flagged[i] for i in by_cli[ROW_ID]] == by_cli["is_anomaly"].astype(int).tolist()


def test_scikit_learn_conventions(tables):
    from sklearn.base import clone

    det = AnomalyAutoencoder(**OPTIONS, seed=3)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        det.predict(tables["new"])
    twin = clone(det)  # parameters only, re-checked
    assert twin.get_params() == det.get_params() and twin is not det and not hasattr(twin, "artifact_")
    assert twin.set_params(epochs=2, latent_dim=3) is twin and (twin.epochs, twin.latent_dim) == (2, 3)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        twin.set_params(epoch=2)
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        twin.set_params(latent_dim=0)
    det.fit(tables["fit"])  # an Arrow table works as well as a DataFrame
    scores = det.decision_function(tables["new"])
    assert scores.dtype == np.float32 and np.array_equal(det.predict(tables["new"]), (scores > det.threshold_))
    assert list(det.feature_names_in_) == [c for c in tables["fit"].column_names if c not in (ROW_ID, LABEL)]
    assert repr(det) == "AnomalyAutoencoder(exclude_columns=['row_id', 'is_injected_anomaly'], hidden_dims=[16, 8], " \
                        "epochs=6, seed=3)"
    label = tables["new"][LABEL].to_numpy()
    assert scores[label].mean() > scores[~label].mean()
    grid = AnomalyAutoencoder(epochs=2, hidden_dims=[4]).fit(np.random.default_rng(0).normal(size=(300, 3)))
    assert list(grid.feature_names_in_) == ["x0", "x1", "x2"]  # a 2-D array works too


def test_save_commits_like_train_and_never_replaces_what_it_should_not(tables, tmp_path):
    det = AnomalyAutoencoder(epochs=2, hidden_dims=[8], exclude_columns=[ROW_ID, LABEL]).fit(tables["fit"])
    version = det.save(str(tmp_path / "m"))
    with pytest.raises(OutputError, match="already holds a model artefact; pass overwrite=True"):
        det.save(str(tmp_path / "m"))
    assert det.save(str(tmp_path / "m"), overwrite=True) == version == load_artifact(str(tmp_path / "m")).version
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(OutputError, match="already holds files that aescore did not write"):
        det.save(str(tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_readers_return_the_committed_run_in_one_line(trained, mixed_data, tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(NothingCommittedError, match="holds no committed scoring run"):
        read_scores(out)
    result = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=out,
                                         id_columns=[ROW_ID]))
    (tmp_path / "o" / "runs" / "notes.html").write_text("<p>beside the rows</p>")  # pd.read_parquet(out) fails
    rows = read_scores(out, run_id=True)
    assert len(rows) == result.summary["row_count"] == 2000 and set(rows["run_id"]) == {result.summary["run_id"]}
    assert list(read_scores(out, columns=[ROW_ID, "anomaly_score"]).columns) == [ROW_ID, "anomaly_score"]
    assert read_scores(out, dataset=True).count_rows() == 2000
    summary = read_summary(out)
    assert summary == result.summary and read_drift(out) is None
    # Absolute locations in the summary and the manifest: they are read from anywhere.
    assert summary["run_uri"] == str(Path(result.run_uri).absolute()) and Path(summary["run_uri"]).is_absolute()
    assert Path(summary["input"]["uri"]).is_absolute() and Path(summary["model"]["uri"]).is_absolute()


def test_the_readmes_python_section_runs(tmp_path):
    """The README's Python example, run as written (its data and model under a temporary folder)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AUROC" in proc.stdout
