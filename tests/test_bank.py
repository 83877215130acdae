"""Model banks: routing to each entity's model or the global one, threshold shrinkage, S3, bad input."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aemodel import AnomalyAutoencoder, load_artifact, read_scores, read_summary
from aemodel.bank import ModelBank, shrink_threshold
from aemodel.scoring import RowScorer
from jobs import score, train
from jobs.data.synthetic import ENTITY, KIND, LABEL, ROW_ID, make_entity_table, write_shards

pytestmark = pytest.mark.e2e
EXCLUDE = [ROW_ID, LABEL, KIND]
SMALL = "e00006"


def _training_table() -> pa.Table:
    """Six entities of 300 rows, one of 100 (below --min-entity-rows), 20 rows without an entity."""
    t = make_entity_table(7, 300, seed=11, anomaly_fraction=0.0)
    keep = pc.invert(pc.and_(pc.equal(t[ENTITY], SMALL), pc.greater_equal(t[ROW_ID], 6 * 300 + 100)))
    t = t.filter(keep)
    ids = t[ENTITY].to_pylist()
    for i in range(0, 400, 20):
        ids[i] = None
    return t.set_column(t.schema.get_field_index(ENTITY), ENTITY, pa.array(ids, pa.string()))


@pytest.fixture(scope="module")
def bank(ray_start_2_cpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    write_shards(_training_table(), str(root / "train"), 2)
    # The scored rows: known entities, the small one, two unseen ones, rows without an entity.
    t = make_entity_table(9, 60, seed=11, anomaly_fraction=0.1, sample=1, start_id=10**6)
    ids = t[ENTITY].to_pylist()
    ids[5] = ids[300] = None
    t = t.set_column(t.schema.get_field_index(ENTITY), ENTITY, pa.array(ids, pa.string()))
    write_shards(t, str(root / "score"), 2)
    cfg = train.TrainConfig(data=str(root / "train"), out=str(root / "model"), exclude_columns=EXCLUDE,
                            entity_columns=[ENTITY], min_entity_rows=200, epochs=8, hidden_dims=[16], latent_dim=2)
    result = train.run(cfg)
    return {"root": root, "cfg": cfg, "result": result, "art": load_artifact(cfg.out), "score_table": t}


def test_training_reports_the_bank(bank):
    b = bank["result"].bank
    assert b["entities"]["models"] == 6 and b["entities"]["too_few_rows"] == 1 and b["rows"]["null_entity"] == 20
    assert b["rows"]["entity_models"] == sum(1 for e in _training_table()[ENTITY].to_pylist()
                                             if e is not None and e != SMALL)
    assert "bank: 6 entity models of 7 entities" in train.format_result(bank["result"])
    index = json.loads(open(glob.glob(f"{bank['cfg'].out}/runs/*/entities/index.json")[0]).read())
    assert index["entities"][SMALL] == {"rows": 100, "status": "too_few_rows"}
    assert bank["art"].bank["index_sha256"] and bank["art"].bank == b
    html = open(glob.glob(f"{bank['cfg'].out}/runs/*/report.html")[0]).read()
    assert "model bank" in html and "6 entity models" in html


def test_each_row_is_scored_by_its_entitys_model_or_the_global_one(bank, tmp_path):
    art, root = bank["art"], bank["root"]
    result = score.run(score.ScoreConfig(model=bank["cfg"].out, data=str(root / "score"), out=str(tmp_path / "s"),
                                         id_columns=[ROW_ID]))
    rows = read_scores(str(tmp_path / "s")).sort_values(ROW_ID).reset_index(drop=True)
    table = bank["score_table"].to_pandas().sort_values(ROW_ID).reset_index(drop=True)
    assert len(rows) == len(table) and (rows[ROW_ID] == table[ROW_ID]).all()
    assert rows[ENTITY].equals(table[ENTITY])
    models = ModelBank(art)
    own = table[ENTITY].isin([f"e{i:05d}" for i in range(6)])
    assert (rows.loc[own, "model_scope"] == "entity").all() and (rows.loc[~own, "model_scope"] == "global").all()
    for key, group in table[own].groupby(ENTITY):
        scorer = RowScorer(models.artifact(key))
        alone = scorer.score_table(pa.Table.from_pandas(group, preserve_index=False))
        np.testing.assert_allclose(rows.loc[group.index, "anomaly_score"], alone["anomaly_score"], rtol=1e-5)
        assert (rows.loc[group.index, "is_anomaly"] == (alone["anomaly_score"] > scorer.threshold)).all()
    fallback = RowScorer(art).score_table(pa.Table.from_pandas(table[~own], preserve_index=False))
    np.testing.assert_allclose(rows.loc[~own, "anomaly_score"], fallback["anomaly_score"], rtol=1e-5)
    summary = read_summary(str(tmp_path / "s"))
    assert summary["anomaly_count"] == int(rows["is_anomaly"].sum()) == result.summary["anomaly_count"]
    assert summary["entities"]["rows_by_scope"] == {"entity": int(own.sum()), "global": int((~own).sum())}
    assert summary["entities"]["entities"] == table[ENTITY].fillna("(null)").nunique()


def test_an_entity_model_is_the_model_trained_alone_on_its_rows(bank):
    """The bank's model of one entity equals AnomalyAutoencoder fitted on that entity's rows alone."""
    art = bank["art"]
    rows = _training_table().filter(pc.equal(_training_table()[ENTITY], "e00002"))
    cfg = bank["cfg"]
    alone = AnomalyAutoencoder(exclude_columns=EXCLUDE + [ENTITY], epochs=cfg.epochs, hidden_dims=cfg.hidden_dims,
                               latent_dim=cfg.latent_dim).fit(rows, preprocessor=art.preprocessor)
    banked = RowScorer(ModelBank(art).artifact("e00002"))
    probe = bank["score_table"].filter(pc.equal(bank["score_table"][ENTITY], "e00002"))
    np.testing.assert_allclose(banked.score_table(probe)["anomaly_score"], alone.decision_function(probe), rtol=1e-5)
    # Only its threshold differs: shrunk towards the global model's.
    assert banked.artifact.threshold["entity_value"] == pytest.approx(alone.threshold_)
    assert banked.threshold == pytest.approx(shrink_threshold(
        {"value": alone.threshold_}, art.threshold_value, alone.artifact_.threshold["validation_rows"],
        cfg.quantile)["value"])


def test_threshold_shrinkage_weighs_the_rows_above_the_threshold():
    t = shrink_threshold({"value": 8.0}, 2.0, validation_rows=1000, quantile=0.99)  # 10 expected rows above
    assert t["shrinkage_weight"] == pytest.approx(0.5) and t["value"] == pytest.approx(4.0)  # geometric mean
    assert shrink_threshold({"value": 8.0}, 2.0, 100_000, 0.99)["value"] == pytest.approx(8.0, rel=0.02)
    assert shrink_threshold({"value": 8.0}, 2.0, 0, 0.99)["value"] == pytest.approx(2.0)


def test_a_bank_on_s3_scores_on_the_ray_path_reading_only_the_entities_it_meets(bank, bucket, tmp_path):
    from aemodel.bank import BankScorer

    cfg = bank["cfg"]
    s3 = train.run(train.TrainConfig(data=cfg.data, out=f"{bucket}/model", exclude_columns=EXCLUDE,
                                     entity_columns=[ENTITY], min_entity_rows=200, epochs=8, hidden_dims=[16],
                                     latent_dim=2))
    assert s3.bank["entities"] == bank["result"].bank["entities"]
    score.run(score.ScoreConfig(model=f"{bucket}/model", data=str(bank["root"] / "score"), out=f"{bucket}/s",
                                id_columns=[ROW_ID], compute="tasks"))
    local = score.run(score.ScoreConfig(model=cfg.out, data=str(bank["root"] / "score"), out=str(tmp_path / "s"),
                                        id_columns=[ROW_ID]))
    on_ray = read_scores(f"{bucket}/s").sort_values(ROW_ID).reset_index(drop=True)
    here = read_scores(local.out).sort_values(ROW_ID).reset_index(drop=True)
    np.testing.assert_allclose(on_ray["anomaly_score"], here["anomaly_score"], rtol=1e-5)
    assert (on_ray["model_scope"] == here["model_scope"]).all()
    scorer = BankScorer(load_artifact(f"{bucket}/model"))
    scorer.output_table(bank["score_table"].filter(pc.equal(bank["score_table"][ENTITY], "e00001")))
    assert list(scorer.bank.models) == ["e00001"]


def test_a_damaged_entity_model_is_refused_by_name(bank, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(bank["cfg"].out, model)
    index = json.loads(open(glob.glob(f"{model}/runs/*/entities/index.json")[0]).read())["entities"]
    entry = index["e00003"]
    part = glob.glob(f"{model}/runs/*/{entry['part']}")[0]
    data = bytearray(open(part, "rb").read())
    data[entry["offset"] + entry["bytes"] - 1] ^= 0xFF
    open(part, "wb").write(bytes(data))
    code = score.main(["--model", str(model), "--data", str(bank["root"] / "score"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "entity 'e00003' does not match its checksum" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("flags, message", [
    (["--entity-columns", "user"], "no entity column 'user'"),
    (["--entity-columns", ENTITY, "--feature-columns", f"x0,x1,{ENTITY}"], "is also in --feature-columns"),
    (["--entity-columns", "x1"], "entity column 'x1' is double"),
])
def test_bad_entity_columns_are_one_error_line(bank, tmp_path, capsys, flags, message):
    code = train.main(["--data", bank["cfg"].data, "--out", str(tmp_path / "m"), "--exclude-columns",
                       ",".join(EXCLUDE), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "m").exists()


def test_a_nightly_compares_a_bank_with_its_own_validation_rows(bank, tmp_path):
    """Drift against the bank's pooled validation distribution, not the global model's (a false alarm otherwise)."""
    from aemodel import drift
    from jobs import nightly
    from jobs.scoring.config import ScoreOptions

    clean = make_entity_table(6, 300, seed=11, anomaly_fraction=0.0, sample=3, start_id=2 * 10**6)
    write_shards(clean, str(tmp_path / "events" / "dt=2026-12-01"), 2)
    [night] = nightly.run(nightly.NightlyConfig(model=bank["cfg"].out, data=str(tmp_path / "events" / "dt={date}"),
                                                out=str(tmp_path / "out" / "dt={date}"), date="2026-12-01",
                                                score=ScoreOptions(id_columns=[ROW_ID])))
    reference = bank["art"].bank["reference"]
    vs = night.drift["vs_validation"]
    assert vs["reference_anomaly_rate"] == pytest.approx(reference["above_threshold_fraction"])
    against_global = drift.compare(read_summary(night.out), bank["art"].reference)
    assert vs["psi"] < against_global["psi"] and vs["psi"] < 0.2


def test_an_empty_batch_scores_to_an_empty_table(bank):
    from aemodel.bank import BankScorer

    empty = bank["score_table"].slice(0, 0)
    for scorer in (RowScorer(bank["art"]), BankScorer(bank["art"])):
        out = scorer.output_table(empty, [ROW_ID], 3, True, True)
        assert out.num_rows == 0 and "anomaly_score" in out.column_names
