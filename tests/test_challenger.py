"""Champion and challenger in one read: the rows, comparison.json against pandas/scipy/sklearn, the Ray path."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from aemodel import load_artifact, read_scores
from aemodel.commit import committed_run
from aemodel.scoring import RowScorer
from jobs import score, train
from jobs.data import chunks
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(mixed_data, tmp_path_factory):
    """The champion: trained on this machine (no Ray), like the challenger."""
    out = tmp_path_factory.mktemp("champion") / "model"
    return train.run(train.TrainConfig(data=mixed_data["train"], out=str(out), exclude_columns=[ROW_ID, LABEL],
                                       epochs=5, hidden_dims=[16], latent_dim=3))


@pytest.fixture(scope="module")
def challenger(mixed_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("challenger") / "model"
    return train.run(train.TrainConfig(data=mixed_data["train"], out=str(out), exclude_columns=[ROW_ID, LABEL],
                                       epochs=5, hidden_dims=[16], latent_dim=2))


def _rows(out: str):
    return read_scores(out).sort_values(ROW_ID).reset_index(drop=True)


def test_one_read_scores_both_and_comparison_matches_an_independent_count(trained, challenger, mixed_data, tmp_path,
                                                                          monkeypatch):
    reference = tmp_path / "labelled.parquet"
    labelled = make_mixed_table(1200, seed=9, anomaly_fraction=0.1, start_id=5_000_000)
    pq.write_table(labelled, reference)
    read: list[int] = []
    iter_part_tables = chunks.iter_part_tables

    def counting(*args, **kwargs):  # every chunk of the scored input that is read, by rows
        for part, start, table in iter_part_tables(*args, **kwargs):
            if str(mixed_data["score"]) in part.uri:
                read.append(table.num_rows)
            yield part, start, table

    monkeypatch.setattr(chunks, "iter_part_tables", counting)
    both = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "ab"),
                                       id_columns=[ROW_ID], challenger=challenger.model_uri,
                                       reference_data=str(reference), label_column=LABEL, compute="local"))
    assert sum(read) == 2000  # the input read once, every row once
    alone = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "a"),
                                        id_columns=[ROW_ID], compute="local"))
    rows, plain = _rows(str(tmp_path / "ab")), _rows(str(tmp_path / "a"))
    assert list(rows.columns) == [*plain.columns, "challenger_score", "challenger_is_anomaly"]
    for col in plain.columns:  # the champion's columns are those of a run without a challenger
        assert rows[col].astype(str).tolist() == plain[col].astype(str).tolist(), col
    assert both.summary["anomaly_count"] == alone.summary["anomaly_count"]

    c = json.loads(open(f"{committed_run(str(tmp_path / 'ab'))}/comparison.json").read())
    a, b = rows["is_anomaly"].to_numpy(), rows["challenger_is_anomaly"].to_numpy()
    assert c["spearman"] == pytest.approx(spearmanr(rows["anomaly_score"], rows["challenger_score"]).statistic, abs=1e-9)
    assert c["flagged_overlap"] == {"both": int((a & b).sum()), "champion_only": int((a & ~b).sum()),
                                    "challenger_only": int((b & ~a).sum()), "either": int((a | b).sum()),
                                    "jaccard": pytest.approx((a & b).sum() / (a | b).sum())}
    top = lambda col: set(rows.nlargest(100, col)[ROW_ID])  # noqa: E731
    assert c["top_rows_overlap"]["shared"] == len(top("anomaly_score") & top("challenger_score"))
    val_rate = load_artifact(challenger.model_uri).threshold["validation_fpr"]
    assert c["challenger"]["anomaly_rate"] == pytest.approx(b.mean())
    assert c["challenger"]["rate_vs_validation"] == pytest.approx(b.mean() / val_rate)
    only = rows[b & ~a].nlargest(20, "challenger_score")[ROW_ID].tolist()
    assert [r[ROW_ID] for r in c["only_challenger"]] == only
    assert all(r["top_features"] for r in c["only_challenger"])
    labels = labelled.column(LABEL).to_numpy()
    for name, uri in (("champion", trained.model_uri), ("challenger", challenger.model_uri)):
        s = RowScorer(load_artifact(uri)).score_table(labelled)["anomaly_score"]
        assert c["reference"][name]["auroc"] == pytest.approx(roc_auc_score(labels, s), abs=1e-9)
    assert "challenger" in both.summary and "Rows only one model flags" in open(
        f"{committed_run(str(tmp_path / 'ab'))}/report.html").read()
    assert "flagged by both" in score.format_result(both)


def test_the_ray_path_writes_the_same_rows_and_figures(ray_start_2_cpus, trained, challenger, mixed_data, tmp_path):
    runs = {}
    for compute in ("local", "tasks"):
        runs[compute] = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"],
                                                    out=str(tmp_path / compute), id_columns=[ROW_ID],
                                                    challenger=challenger.model_uri, compute=compute))
    local, ray = _rows(str(tmp_path / "local")), _rows(str(tmp_path / "tasks"))
    assert np.array_equal(local["challenger_score"], ray["challenger_score"])
    assert local["challenger_is_anomaly"].tolist() == ray["challenger_is_anomaly"].tolist()
    assert runs["local"].summary["challenger"] == runs["tasks"].summary["challenger"] | {
        "uri": runs["local"].summary["challenger"]["uri"]}


def test_a_challenger_on_other_columns_is_refused_before_anything_is_written(trained, mixed_data, tmp_path):
    other = train.run(train.TrainConfig(data=mixed_data["train"], out=str(tmp_path / "other"), epochs=2,
                                        exclude_columns=[ROW_ID, LABEL, "num_0"], hidden_dims=[8]))
    with pytest.raises(Exception, match="its feature columns differ from the model's .*num_0"):
        score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=str(tmp_path / "o"),
                                    challenger=other.model_uri))
    assert not (tmp_path / "o").exists()
