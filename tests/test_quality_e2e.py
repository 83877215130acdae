"""End to end: training diagnostics, leakage checks, per-column errors, reports and the latent sweep."""

import json
from pathlib import Path
import tempfile
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aemodel import load_artifact
from jobs import score, sweep, train
from jobs.runtime.errors import TrainingError
from jobs.data.synthetic import LABEL, ROW_ID
from jobs.training.config import TrainOptions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _noise(path, rows: int, seed: int) -> str:
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    pq.write_table(pa.table({f"x{i}": rng.normal(size=rows) for i in range(12)}), f"{path}/part-0.parquet")
    return str(path)


def test_tiny_training_set_with_a_big_model_is_flagged_and_can_fail_the_run(ray_start_2_cpus, tmp_path):
    """48 rows of noise, a 256-wide ReLU network: it memorises the rows, validation stays bad.

    ReLU, not the tanh default: measured here, this setup reaches validation/training 20x with
    ReLU but only 1.8-2.3x with tanh (bounded units memorise more slowly), too close to the limit.
    """
    cfg = train.TrainConfig(data=_noise(tmp_path / "train", 48, 0), val_data=_noise(tmp_path / "val", 200, 1),
                            out=str(tmp_path / "model"), hidden_dims=[256, 256], latent_dim=8, batch_size=8,
                            epochs=30, patience=30, learning_rate=3e-3, activation="relu", max_overfit_ratio=2.0)
    with pytest.raises(TrainingError, match="overfitting: validation loss .* the training loss"):
        train.run(cfg)
    assert not (tmp_path / "model" / "_SUCCESS").exists()  # a failed run publishes nothing


@pytest.mark.parametrize("val_split", ["fraction", "val_data"])
def test_log_skewness_reaches_the_artefact(ray_start_2_cpus, tmp_path, val_split):
    """Both statistics passes (hash split, separate validation input) gather the log-scale moments."""
    rng = np.random.default_rng(3)

    def table(n: int) -> pa.Table:
        return pa.table({"amount": rng.lognormal(3.0, 1.5, n), "x": rng.normal(size=n)})

    data = tmp_path / "train"
    data.mkdir()
    pq.write_table(table(600), data / "part-0.parquet")
    extra = {"val_data": str(tmp_path / "val")} if val_split == "val_data" else {}
    if extra:
        os.makedirs(extra["val_data"])
        pq.write_table(table(200), f"{extra['val_data']}/part-0.parquet")
    res = train.run(train.TrainConfig(data=str(data), out=str(tmp_path / "model"), epochs=3, log_skewness=1.0,
                                      **extra))
    numeric = load_artifact(res.model_uri).preprocessor.numeric
    assert numeric["amount"]["transform"] == "signed_log1p" and numeric["x"]["transform"] == "identity"
    assert numeric["amount"]["skewness"] > 1.0


def test_scoring_output_has_top_features_column_errors_and_a_report(trained, mixed_data, tmp_path):
    out = str(tmp_path / "scores")
    res = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["score"], out=out,
                                      id_columns=[ROW_ID, LABEL], top_k=2, column_errors=True))
    rows = pq.read_table(f"{res.run_uri}/rows")
    art = load_artifact(trained.model_uri)
    names = [s.name for s in art.preprocessor.specs]
    err = np.column_stack([rows[f"err_{n}"].to_numpy(zero_copy_only=False) for n in names])
    top = rows["top_features"].to_pylist()
    for i in range(0, rows.num_rows, 97):  # the listed columns are the row's largest errors
        order = [names[j] for j in np.argsort(-np.nan_to_num(err[i], nan=-1))[:2]]
        assert [f["column"] for f in top[i]] == order
        assert sum(f["share"] for f in top[i]) <= 1.0 + 1e-5
    assert res.summary["training_overlap"]["rows"] <= 3  # fresh rows: only Bloom false positives
    means = res.summary["columns"]["mean_error"]
    assert means[names[0]] == pytest.approx(np.nanmean(err[:, 0]), rel=1e-4)
    assert sum(res.summary["columns"]["top1_rows"].values()) == rows.num_rows
    page = open(f"{res.run_uri}/report.html").read()
    assert page.count("data:image/png;base64,") == 5 and "Columns by mean error" in page  # + the columns' drift
    assert os.path.exists(os.path.join(trained.artifact_uri, "report.html"))
    metrics = json.load(open(os.path.join(trained.artifact_uri, "metrics.json")))
    assert {c["check"] for c in metrics["diagnostics"]} >= {"overfitting", "vs_mean_baseline", "latent_size"}


def test_scoring_the_training_data_is_reported_as_leakage_and_changes_nothing(trained, mixed_data, tmp_path):
    before = load_artifact(trained.model_uri)
    res = score.run(score.ScoreConfig(model=trained.model_uri, data=mixed_data["train"], out=str(tmp_path / "s"),
                                      id_columns=[ROW_ID]))
    overlap = res.summary["training_overlap"]
    assert overlap["rows"] == mixed_data["train_table"].num_rows and overlap["fraction"] == 1.0
    assert any("scored rows" in w and "(data leakage)" in w for w in res.summary["warnings"])
    after = load_artifact(trained.model_uri)  # scoring never refits preprocessing or the threshold
    assert after.version == before.version and after.threshold == before.threshold
    assert after.preprocessor.to_dict() == before.preprocessor.to_dict()
    assert res.summary["threshold"] == before.threshold_value


def test_latent_sweep_recommends_a_size_and_warns_when_latent_reaches_the_inputs(ray_start_2_cpus, mixed_data,
                                                                                 tmp_path):
    cfg = sweep.SweepConfig(data=mixed_data["train"], out=str(tmp_path / "sweep"), latent=[2, 16],
                            label_data=mixed_data["score"], label_column=LABEL, max_concurrent=1,
                            train=TrainOptions(exclude_columns=[ROW_ID], hidden_dims=[32], epochs=6,
                                               cpus_per_worker=0.5))
    res = sweep.run(cfg)
    by_k = {r["latent_dim"]: r for r in res.rows}
    assert set(by_k) == {2, 16} and res.recommended in by_k
    assert "latent_size" in by_k[16]["warnings"] and "latent_size" not in by_k[2]["warnings"]  # 13 features
    assert all(0.5 < r["auroc"] <= 1.0 for r in res.rows)
    metrics = json.load(open(Path(by_k[16]["model"]) / by_k[16]["report"].split("/", 1)[1].replace("report.html",
                                                                                                   "metrics.json")))
    assert any(c["check"] == "latent_size" and c["status"] == "warning" for c in metrics["diagnostics"])
    table = json.load(open(tmp_path / "sweep" / "sweep.json"))
    assert table["recommended_latent_dim"] == res.recommended
    assert (tmp_path / "sweep" / "sweep.png").read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "sweep" / "sweep.html").read_text()
    assert f'href="{by_k[2]["report"]}"' in page and f'href="{by_k[16]["report"]}"' in page
    assert by_k[2]["report"].startswith("latent-2/runs/")  # the model's committed run folder
    assert 'href="../../../sweep.html"' in (tmp_path / "sweep" / by_k[2]["report"]).read_text()
    assert "recommended" in sweep.format_result(res)
    assert json.load(open(tmp_path / "sweep" / "_aescore.json"))["kind"] == "sweep"  # the prefix is now aescore's
    # 16 of 13 features: flagged as likely copying, in the console, sweep.json and the page.
    assert by_k[16]["copying"] == "latent 16 is 123% of the 13 feature columns" and by_k[2]["copying"] is None
    assert "likely copying" in sweep.format_result(res) and table["rule"].startswith("the smallest latent whose AUROC")
    assert "likely copying: latent 16" in page
    # A rerun that replaces the trials' models drops the summary of the models it replaces first: cut
    # short (here, a trial that fails), no sweep.json describes a model that is gone.
    from dataclasses import replace

    failing = replace(cfg, latent=[2], train=replace(cfg.train, overwrite=True, learning_rate=1e30))  # nan loss
    with pytest.raises(TrainingError):
        sweep.run(failing)
    assert not (tmp_path / "sweep" / "sweep.json").exists() and (tmp_path / "sweep" / "latent-2").exists()


ROWS = [{"latent_dim": k, "val_loss": v, "n_features": 9, "baseline_val_loss": 0.9, "auroc": None}
        for k, v in ((2, 0.20), (4, 0.0431), (8, 0.0032))]


def test_the_sweep_recommends_by_labels_else_by_the_knee_and_never_a_copying_latent():
    """A 9-feature table: validation loss keeps falling to latent 8, which nearly copies the input."""
    assert sweep.copying(ROWS[2]) == "latent 8 is 89% of the 9 feature columns"
    k, rule = sweep.recommend(ROWS)
    assert k == 4 and "leaving out latents that likely copy the input (8)" in rule  # was 8: the lowest loss
    labelled = [{**r, "auroc": a} for r, a in zip(ROWS, (0.93, 0.998, 1.000))]
    assert sweep.recommend(labelled)[0] == 4  # within 0.005 of the best AUROC: ties go to the smaller latent
    assert sweep.recommend(labelled, auroc_tolerance=0.001)[0] == 8  # the labels decide
    flat = [{**r, "val_loss": v} for r, v in zip(ROWS, (0.2, 0.19, 0.0001))]
    assert sweep.recommend(flat[:2])[0] == 4 and sweep.recommend([flat[0], {**flat[1], "val_loss": 0.21}])[0] == 2
    near_zero = {**ROWS[1], "latent_dim": 3, "n_features": 40, "val_loss": 0.01}
    assert sweep.copying(near_zero) == "validation loss 0.01 is 1.1% of the mean-prediction baseline"


def test_sweep_label_values_other_than_0_1_name_the_column(trained, mixed_data):
    """A continuous column given as the label would make every row "anomalous"; it is refused by name."""
    from jobs.runtime.errors import InputError

    batch = pq.read_table(mixed_data["score"]).slice(0, 50)
    as_float = batch.set_column(batch.schema.get_field_index(LABEL), LABEL,
                                pa.array(batch.column(LABEL).to_numpy().astype(np.float64)))
    split = sweep.errors_by_class(as_float, trained.model_uri, LABEL, {})  # 0.0/1.0 as floats are labels
    assert split.num_rows == 50 and split.column("pos").null_count == 0
    radius = batch.set_column(batch.schema.get_field_index(LABEL), LABEL, pa.array(np.full(50, 14.2)))
    with pytest.raises(InputError, match=f"label column '{LABEL}' must hold only 0/1 or true/false, found 14.2"):
        sweep.errors_by_class(radius, trained.model_uri, LABEL, {})


def test_contamination_sets_the_threshold_and_an_epoch_capped_run_is_not_converged(ray_start_2_cpus, mixed_data,
                                                                                   tmp_path):
    """--contamination 0.05 flags 5% of validation rows; 3 epochs while still improving warn."""
    res = train.run(train.TrainConfig(data=mixed_data["train"], out=str(tmp_path / "m"), exclude_columns=[ROW_ID, LABEL],
                                      epochs=3, contamination=0.05, hidden_dims=[16, 8], latent_dim=3))
    art = load_artifact(res.model_uri)
    assert art.threshold["method"] == "contamination" and art.threshold["contamination"] == 0.05
    assert art.threshold["quantile"] == pytest.approx(0.95)
    assert 0.04 <= art.threshold["validation_fpr"] <= 0.05
    convergence = {c["check"]: c for c in res.metrics["diagnostics"]}["convergence"]
    assert convergence["status"] == "warning" and "has not converged" in convergence["message"], convergence
    assert "not converged" in open(os.path.join(res.artifact_uri, "report.html")).read()


def test_in_process_training_matches_a_train_worker_exactly(ray_start_2_cpus, tmp_path):
    """Ray Train's local mode on Ray Data shards trains the same model as a Train worker actor.

    Same seed, same data: the weights, history and threshold of the in-process run equal
    those of a run in a Ray Train worker actor, so the fast path changes nothing but time.
    """
    import torch

    data = _noise(tmp_path / "train", 400, 3)
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("aescore-train-")}
    results = {}
    for mode in (True, False):
        results[mode] = train.run(train.TrainConfig(data=data, out=str(tmp_path / f"model-{mode}"), epochs=4,
                                                    in_process=mode, cpus_per_worker=1, local_data=False))
    a, b = (load_artifact(results[m].model_uri) for m in (True, False))
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert a.threshold["value"] == b.threshold["value"]
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    assert a.run_id == b.run_id  # where it trained is not part of what was trained
    # The in-process run's checkpoint folder is removed (compared with what other processes left).
    assert {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("aescore-train-")} <= before
