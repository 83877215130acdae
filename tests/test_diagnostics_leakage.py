"""Pure checks of the diagnostics, the threshold calibration, the leakage tools and reports (no Ray)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pyarrow as pa
import pytest

from aemodel.diagnostics import calibrate_threshold, diagnose
from aemodel.leakage import BloomFilter, id_like_columns, row_hashes
from aemodel.metrics import ErrorStats, auroc, auroc_from_sketches, histogram_edges
from aemodel.preprocess import merge_stats, partial_stats
from aemodel.schema import ColumnSpec, resolve_columns
from aemodel.scoring import top_features


def _history(train: list[float], val: list[float]) -> list[dict]:
    return [{"epoch": i, "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(zip(train, val))]


def _status(checks: list[dict], name: str) -> str:
    return next(c["status"] for c in checks if c["check"] == name)


def test_seed_example_train_far_below_validation_is_overfitting():
    hist = _history([0.5, 0.05, 0.001], [0.5, 0.2, 0.1])
    checks = diagnose(hist, n_features=10, input_width=10, latent_dim=3, baseline_val_loss=1.0)
    over = next(c for c in checks if c["check"] == "overfitting")
    assert over["status"] == "warning" and over["ratio"] == pytest.approx(100.0)
    assert "overfitting" in over["message"]
    failing = diagnose(hist, n_features=10, input_width=10, latent_dim=3, baseline_val_loss=1.0,
                       max_overfit_ratio=10.0)
    assert _status(failing, "overfitting") == "fail"


def test_healthy_run_passes_every_check():
    hist = _history([1.0, 0.5, 0.3, 0.2], [1.0, 0.55, 0.32, 0.22])
    checks = diagnose(hist, n_features=10, input_width=12, latent_dim=3, baseline_val_loss=1.0)
    assert {c["status"] for c in checks} == {"ok"}


def test_flat_and_jumping_losses_are_not_learning():
    flat = diagnose(_history([1.0] * 6, [1.0, 0.99, 0.995, 0.99, 0.985, 0.99]), n_features=5, input_width=5,
                    latent_dim=2, baseline_val_loss=1.0)
    assert _status(flat, "learning") == "warning" and "flat" in next(c for c in flat if c["check"] == "learning")["message"]
    assert _status(flat, "vs_mean_baseline") == "warning"  # 99% of predicting the mean
    jumpy = diagnose(_history([1, .5, .5, .4, .4, .3], [1.0, 0.4, 0.7, 0.35, 0.6, 0.3]), n_features=5,
                     input_width=5, latent_dim=2, baseline_val_loss=1.0)
    assert "jumps" in next(c for c in jumpy if c["check"] == "learning")["message"]


def test_latent_at_least_the_number_of_features_warns():
    checks = diagnose(_history([1, .5, .2], [1, .5, .2]), n_features=8, input_width=8, latent_dim=8,
                      baseline_val_loss=1.0)
    latent = next(c for c in checks if c["check"] == "latent_size")
    assert latent["status"] == "warning" and "copy" in latent["message"]


def test_threshold_meets_target_fpr_and_ci_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = calibrate_threshold(rng.lognormal(size=500), 0.99)
    large = calibrate_threshold(rng.lognormal(size=50_000), 0.99)
    for t in (small, large):
        assert t["validation_fpr"] <= 0.01
        assert t["ci"][0] <= t["value"] <= t["ci"][1]
    true_q = float(np.exp(2.326))  # 99th percentile of the standard lognormal
    assert large["ci"][0] <= true_q * 1.02 and large["ci"][1] >= true_q * 0.98
    assert (large["ci"][1] - large["ci"][0]) < (small["ci"][1] - small["ci"][0]) / 3


def test_bloom_filter_has_no_false_negatives_and_few_false_positives():
    rng = np.random.default_rng(1)
    seen = rng.integers(0, 2**63, size=20_000, dtype=np.uint64)
    other = rng.integers(0, 2**63, size=20_000, dtype=np.uint64)
    bf = BloomFilter.for_rows(len(seen), fpr=1e-3)
    half = BloomFilter(bf.n_bits, bf.n_hashes).add(seen[:10_000])
    bf.add(seen[10_000:]).merge(half)  # built in two blocks, merged
    assert bf.contains(seen).all()
    assert bf.contains(other).mean() < 5e-3
    assert bf.false_positive_rate < 5e-3
    again = BloomFilter(bf.n_bits, bf.n_hashes, bf.to_bytes())
    assert (again.contains(other) == bf.contains(other)).all()


def test_row_hashes_ignore_storage_type_but_not_values():
    specs = [ColumnSpec("a", "numeric", "int64"), ColumnSpec("c", "categorical", "string")]
    t1 = pa.table({"a": pa.array([1, 2, None], pa.int64()), "c": ["x", "y", "z"]})
    t2 = pa.table({"a": pa.array([1.0, 2.0, float("nan")]), "c": pa.array(["x", "y", "z"]).dictionary_encode()})
    t3 = pa.table({"a": pa.array([1.0, 2.5, float("nan")]), "c": ["x", "y", "z"]})
    h1, h2, h3 = row_hashes(t1, specs), row_hashes(t2, specs), row_hashes(t3, specs)
    assert (h1 == h2).all()
    assert list(h1 == h3) == [True, False, True]


def test_row_hashes_from_the_values_transform_read_are_the_same():
    from aemodel.preprocess import Preprocessor

    table = pa.table({"a": pa.array([1, None, 3, 4], pa.int64()), "b": pa.array([1.0, float("inf"), -2.0, 0.5]),
                      "flag": pa.array([True, None, False, True]), "c": ["x", None, "y", "x"]})
    specs = resolve_columns(table.schema)
    pp = Preprocessor.fit(specs, partial_stats(table, specs))
    raw: dict = {}
    enc = pp.transform(table, raw)
    assert set(raw) == {"a", "b", "flag"}  # numeric and binary columns, as read
    assert np.isnan(raw["flag"][1]) and np.isnan(raw["b"][1])  # missing, not imputed
    assert (row_hashes(table, specs, raw) == row_hashes(table, specs)).all()
    plain = pp.transform(table)
    assert all(np.array_equal(enc[k], plain[k]) for k in plain)


def test_id_like_columns_are_found_and_ordinary_ones_are_not():
    n = 1000
    rng = np.random.default_rng(2)
    table = pa.table({"event_id": np.arange(5000, 5000 + n), "uuid": [f"u{i}" for i in range(n)],
                      # a random fifth of a table's sequential ids: too sparse for the dense-range rule
                      "row_id": rng.choice(5 * n, size=n, replace=False),
                      "amount": rng.lognormal(size=n), "count": rng.poisson(3, size=n),
                      # integers as wide as row_id's, drawn at random: they repeat, so not an id
                      "code": rng.integers(0, 5 * n, size=n),
                      "city": rng.choice(["a", "b", "c"], size=n)})
    specs = resolve_columns(table.schema)
    stats = merge_stats(partial_stats(table.slice(0, 400), specs), partial_stats(table.slice(400), specs))
    found = {c["column"]: c["reason"] for c in id_like_columns(specs, stats)}
    assert set(found) == {"event_id", "uuid", "row_id"}
    assert "none repeated" in found["row_id"] and stats["code"]["repeats"] > 0
    assert stats["row_id"]["pairs"] == 400 * 399 // 2 + 600 * 599 // 2  # counted within each batch


def test_top_features_rank_columns_with_shares_and_z_scores():
    losses = np.array([[0.1, 3.0, 0.9], [2.0, 0.0, 0.0]])
    observed = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32)
    out = top_features(losses, observed, ["a", "b", "c"], 2, np.array([0.1, 0.5, 0.1]), np.array([0.1, 0.5, 0.2]))
    rows = out.to_pylist()
    assert [f["column"] for f in rows[0]] == ["b", "c"]
    assert rows[0][0]["share"] == pytest.approx(3.0 / 4.0)
    assert rows[0][0]["z"] == pytest.approx(5.0)  # (3.0 - 0.5) / 0.5
    assert [f["column"] for f in rows[1]] == ["a", "b"]  # c was missing: never listed


@pytest.mark.parametrize("k", [3, 10])  # a few argmax passes; argpartition for many columns
def test_top_features_match_a_full_sort(k):
    rng = np.random.default_rng(5)
    losses = rng.random((400, 12)).astype(np.float32)
    observed = (rng.random((400, 12)) > 0.3).astype(np.float32)
    observed[7] = 0  # a row with nothing observed lists nothing
    names = [f"c{i}" for i in range(12)]
    rows = top_features(losses, observed, names, k, None, None).to_pylist()
    for i, row in enumerate(rows):
        seen = [j for j in np.argsort(-losses[i], kind="stable") if observed[i, j] > 0][:k]
        assert [f["column"] for f in row] == [names[j] for j in seen]
        assert sum(f["share"] for f in row) == pytest.approx(losses[i, seen].sum() / max(
            (losses[i] * observed[i]).sum(), 1e-30), rel=1e-5)
    assert rows[7] == []
    # What scoring passes in (each row's missing cells and recon_error) gives the same result.
    import torch

    from aemodel.losses import row_errors

    recon = row_errors(torch.from_numpy(losses), torch.from_numpy(observed)).numpy()
    given = top_features(losses, observed, names, k, None, None, (12 - observed.sum(1)).astype(np.int32), recon)
    for a, b in zip(rows, given.to_pylist()):
        assert [f["column"] for f in a] == [f["column"] for f in b]
        np.testing.assert_allclose([f["share"] for f in a], [f["share"] for f in b], rtol=1e-5)


def test_top_features_summary_counts_by_column_on_a_slice():
    from aemodel.aggregates import TopFeaturesAggregate

    losses = np.array([[0.1, 3.0, 0.9], [2.0, 0.0, 0.0], [0.5, 0.2, 0.4], [0.0, 0.0, 1.0]])
    observed = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=np.float32)
    table = pa.table({"top_features": top_features(losses, observed, ["a", "b", "c"], 2, None, None),
                      "is_anomaly": [True, False, True, True]})
    acc = json.loads(TopFeaturesAggregate().aggregate_block(table.slice(1)))  # rows 1..3: an offset array
    assert acc["top1_rows"] == {"a": 1, "c": 1}  # row 2 has no observed cell: it leads nothing
    assert acc["top1_flagged_rows"] == {"c": 1}
    assert acc["topk_rows"] == {"a": 2, "b": 1, "c": 1}
    assert acc["share_sum"] == pytest.approx({"a": 1.0, "b": 0.0, "c": 1.0})


def test_auroc_from_mergeable_sketches_matches_exact():
    rng = np.random.default_rng(3)
    neg, pos = rng.lognormal(0, 1, 5000), rng.lognormal(1, 1, 300)
    sk = [ErrorStats(edges=histogram_edges()).update(v).sketch for v in (pos, neg)]
    exact = auroc(np.concatenate([pos, neg]), np.r_[np.ones(300), np.zeros(5000)])
    assert auroc_from_sketches(*sk) == pytest.approx(exact, abs=2e-3)


def test_reports_are_self_contained_with_valid_pngs():
    from jobs.reports.html import nightly_report, scoring_report, sweep_plot, sweep_report, training_report

    hist = ErrorStats(edges=histogram_edges(), threshold=1.0).update(np.random.default_rng(4).lognormal(size=999))
    threshold = {"value": 1.0, "quantile": 0.99, "validation_rows": 999, "ci": [0.8, 1.3]}
    metrics = {"best_epoch": 1, "train_loss": 0.2, "val_loss": 0.25, "mean_baseline_val_loss": 1.0,
               "diagnostics": diagnose(_history([1, .2], [1, .25]), n_features=4, input_width=4, latent_dim=2,
                                       baseline_val_loss=1.0), "warnings": []}
    page = training_report("m", _history([1, .2], [1, .25]), hist.summary(), threshold, metrics,
                           links=[("latent-size sweep", "../sweep.html")]).decode()
    top = [{"id": 7, "anomaly_score": 9.5, "score_percentile": 100.0,
            "top_features": [{"column": "a", "share": 0.8, "z": 3.0}]}]
    summary = {**hist.summary(), "input": {"uri": "d"}, "model": {"uri": "m", "version": "v"}, "row_count": 999,
               "threshold_source": "validation_quantile", "anomaly_count": hist.above, "anomaly_rate": 0.01,
               "top_rows": top, "columns": {"mean_error": {"a": 0.5, "b": 0.1}, "top1_rows": {"a": 9, "b": 990},
                                             "top1_flagged_rows": {"a": 9}}}
    page2 = scoring_report(summary, hist.summary()).decode()
    night = {"date": "2026-11-02", "row_count": 999, "quantiles": {"p50": 1.0, "p90": 2.0, "p99": 4.0},
             "anomaly_rate": 0.01, "psi": 0.05, "ks": 0.04, "alerts": []}
    drift = {"date": "2026-11-02", "model": {"uri": "m"}, "row_count": 999, "limits": {"psi": 0.2, "ks": 0.15},
             "previous_nights": ["2026-11-01"], "alerts": ["vs_validation: PSI 0.300 > 0.2"],
             "columns": {"top1_share": {"a": {"share": 0.5, "baseline_share": 0.1, "change": 0.4}}}}
    page3 = nightly_report(drift, [{**night, "date": "2026-11-01"}, {**night, "psi": 0.3, "alerts": drift["alerts"]}]
                           ).decode()
    rows = [{"latent_dim": k, "val_loss": 1.0 / k, "train_loss": 0.9 / k, "auroc": None, "epochs": 5,
             "warnings": [], "report": f"latent-{k}/runs/r{k}/report.html"} for k in (2, 4)]
    page4 = sweep_report(rows, 4, "knee: the smallest latent with 80% of the loss reduction",
                         sweep_plot(rows, 4, 0.8, 0.005)).decode()
    for html, n_images in ((page, 2), (page2, 4), (page3, 3), (page4, 1)):
        pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
        assert len(pngs) == n_images and "http" not in html.replace("http-equiv", "")
        assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "latent_size" in page and "class=alarm" not in page and 'href="../sweep.html"' in page
    assert "largest error of a flagged row" in page2 and "<td>7</td>" in page2 and "a (80%)" in page2
    assert "class=alarm" in page3 and "+40.0 pts" in page3
    assert 'href="latent-4/runs/r4/report.html"' in page4 and "4 (recommended)" in page4
    capped = _history([1, .8, .6, .5], [1, .8, .6, .5])
    metrics["diagnostics"] = diagnose(capped, n_features=4, input_width=4, latent_dim=2, baseline_val_loss=1.0,
                                      max_epochs=4, patience=2)
    assert "class=alarm" in training_report("m", capped, hist.summary(), threshold, metrics).decode()


class _BatchSource:
    """Stands in for a Ray Data shard: ``iter_torch_batches`` over an encoded table; called, the same batches."""

    def __init__(self, enc: dict, rows_per_batch: int):
        self.enc, self.rows = enc, rows_per_batch

    def iter_torch_batches(self, batch_size, device, prefetch_batches):
        import torch

        n = len(self.enc["x_num"])
        for i in range(0, n, self.rows):
            yield {k: torch.from_numpy(v[i:i + self.rows]) for k, v in self.enc.items()}

    def __call__(self):
        """The batches again (what ``validation_reference`` takes: a source it can read twice)."""
        return self.iter_torch_batches(0, None, 0)


def _tiny_model_and_data():
    import torch

    from aemodel import AutoencoderConfig, Preprocessor, TabularAutoencoder

    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    t = pa.table({"a": x, "b": 2 * x + rng.normal(scale=0.1, size=400), "c": rng.exponential(size=400),
                  "flag": rng.random(400) < 0.3, "colour": rng.choice(["r", "g", "b"], 400)})
    specs = resolve_columns(t.schema)
    pp = Preprocessor.fit(specs, partial_stats(t, specs))
    cfg = AutoencoderConfig(n_numeric=3, n_binary=1, category_sizes=pp.category_sizes, hidden_dims=[8], latent_dim=2)
    torch.manual_seed(0)
    return pp, cfg, TabularAutoencoder(cfg), t


@pytest.mark.parametrize("floor", [1e-9, 0.05, None])
def test_validation_scales_make_a_typical_row_1_and_scoring_matches_calibration(floor):
    import torch

    from aemodel import ModelArtifact, RowScorer
    from aemodel.training import validation_reference

    pp, cfg, model, t = _tiny_model_and_data()
    names = [s.name for s in pp.specs]
    src = _BatchSource(pp.transform(t), rows_per_batch=150)  # several batches: sums must merge
    ref, thr = validation_reference(model, src, torch.device("cpu"), torch.tensor(pp.baselines), 0.9,
                                    pp.constant_outputs(), names, scale_floor=floor)
    cols = ref["columns"]
    for c in names:
        expected = 1.0 if floor is None else max(cols[c]["mean"], floor)
        assert cols[c]["scale"] == pytest.approx(expected)
    if floor == 1e-9:  # no floor binds and every cell is observed: the mean row error is exactly 1
        assert ref["mean"] == pytest.approx(1.0, rel=1e-5)
    # The scorer, given the same artefact fields, reproduces the calibrated distribution.
    art = ModelArtifact(model_config=cfg, preprocessor=pp, state_dict=model.state_dict(), threshold=thr,
                        reference=ref, history=[])
    scored = RowScorer(art).score_table(t, top_k=2, column_errors=True)
    assert np.array_equal(scored["anomaly_score"], scored["recon_error"])  # no latent term in this artefact
    assert scored["recon_error"].mean() == pytest.approx(ref["mean"], rel=1e-5)
    assert (scored["recon_error"] > thr["value"]).mean() <= 0.1
    # recon_error is the mean of the (scaled) per-column errors it reports.
    assert np.allclose(scored["column_errors"].mean(axis=1), scored["recon_error"], rtol=1e-5)
    z = scored["top_features"].to_pylist()[0][0]["z"]
    assert np.isfinite(z)


def test_latent_term_is_fitted_on_training_codes_and_scored_as_calibrated():
    """anomaly_score = recon_error + w * latent_distance, the same in calibration and scoring."""
    import torch

    from aemodel import ModelArtifact, RowScorer
    from aemodel.latent import latent_gaussian, mixture_distance
    from aemodel.terms import latent_codes, latent_fit, latent_gaussian_fit, latent_sums
    from aemodel.training import validation_reference

    pp, cfg, model, t = _tiny_model_and_data()
    names = [s.name for s in pp.specs]
    enc = pp.transform(t)
    batches = _BatchSource(enc, rows_per_batch=150).iter_torch_batches(0, None, 0)  # sums must merge
    latent = latent_gaussian_fit(latent_sums(model, batches, cfg.latent_dim), cfg.latent_dim, weight=0.5)
    with torch.inference_mode():
        z = model.encode(*(torch.from_numpy(enc[k]) for k in ("x_num", "x_bin", "x_cat"))).double().numpy()
    assert latent["rows"] == len(z) and latent["components"] == 1
    assert np.allclose(latent["means"][0], z.mean(0))
    # The mixture path restricted to one component (a sample of codes, EM) is the same Gaussian.
    codes = latent_codes(model, _BatchSource(enc, 150).iter_torch_batches(0, None, 0), max_rows=10_000, seed=0)
    assert np.array_equal(codes, z)
    np.testing.assert_allclose(mixture_distance(z, latent_fit(codes, 0.5, seed=0, max_components=1)),
                               mixture_distance(z, latent), atol=1e-5)  # offsets differ by the ridge
    w = np.array(latent["whitenings"][0])
    assert np.allclose(np.linalg.inv(w @ w.T), np.cov(z, rowvar=False, bias=True), rtol=1e-4, atol=1e-9)
    # On the rows it was fitted on, the squared Mahalanobis distance averages exactly latent_dim.
    ref, thr = validation_reference(model, _BatchSource(enc, 150), torch.device("cpu"), torch.tensor(pp.baselines),
                                    0.9, pp.constant_outputs(), names, scale_floor=0.05, latent=latent)
    assert ref["latent"]["validation_mean_distance"] == pytest.approx(1.0, rel=1e-3)
    art = ModelArtifact(model_config=cfg, preprocessor=pp, state_dict=model.state_dict(), threshold=thr,
                        reference=ref, history=[])
    scored = RowScorer(art).score_table(t)
    dist = (scored["anomaly_score"] - scored["recon_error"]) / 0.5
    assert dist.mean() == pytest.approx(1.0, rel=1e-3) and dist.min() >= 0
    assert scored["anomaly_score"].mean() == pytest.approx(ref["mean"], rel=1e-5)  # the calibrated distribution
    np.testing.assert_array_equal(scored["is_anomaly"], scored["anomaly_score"] > thr["value"])
    # An artefact of format 2 stores the same Gaussian as mean and whitening: it scores the same.
    old_form = {"mean": latent["means"][0], "whitening": latent["whitenings"][0], "weight": 0.5, "rows": len(z)}
    old_art = ModelArtifact(model_config=cfg, preprocessor=pp, state_dict=model.state_dict(), threshold=thr,
                            reference={**ref, "latent": old_form}, history=[])
    np.testing.assert_allclose(RowScorer(old_art).score_table(t)["anomaly_score"], scored["anomaly_score"], rtol=1e-6)
    # A collapsed latent dimension stays invertible (tiny ridge) instead of failing.
    mean, whitening = latent_gaussian(3, np.array([3.0, 0.0]), np.array([[5.0, 0.0], [0.0, 0.0]]))
    assert np.all(np.isfinite(whitening)) and mean.tolist() == [1.0, 0.0]


def test_scaling_amplifies_an_error_in_a_normally_predictable_column():
    from aemodel.losses import error_scales

    means = np.array([0.02, 0.5, 2.0, np.nan])
    s = error_scales(means, floor=0.05)
    assert s.tolist() == [0.05, 0.5, 2.0, 1.0]
    # The same raw error of 0.5 counts 10x in the well-reconstructed column, 4x less in the hard one.
    assert (0.5 / s)[0] == pytest.approx(10.0) and (0.5 / s)[2] == pytest.approx(0.25)


def test_convergence_tells_early_stopping_from_an_epoch_cap_hit_while_improving():
    from aemodel.diagnostics import convergence

    falling = [{"val_loss": 1.0 / (i + 1)} for i in range(10)]
    assert convergence(falling, max_epochs=10, patience=5)["status"] == "warning"
    assert "has not converged" in convergence(falling, max_epochs=10, patience=5)["message"]
    plateau = [{"val_loss": v} for v in (1.0, 0.5, 0.4, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47)]
    assert convergence(plateau, max_epochs=10, patience=5)["status"] == "ok"  # best epoch 3, then 7 flat epochs
    assert convergence(falling[:6], max_epochs=10, patience=5)["message"].startswith("early stopping ended")
    checks = diagnose([{"train_loss": 0.1, "val_loss": v["val_loss"]} for v in falling], n_features=10,
                      input_width=10, latent_dim=3, baseline_val_loss=1.0, max_epochs=10, patience=5)
    assert {c["check"]: c["status"] for c in checks}["convergence"] == "warning"


def test_contamination_is_the_pyod_convention_and_excludes_threshold_fpr():
    from jobs.training.config import TrainConfig

    assert TrainConfig(data="d", out="o", contamination=0.05).quantile == pytest.approx(0.95)
    with pytest.raises(ValueError, match="either contamination or threshold_fpr"):
        TrainConfig(data="d", out="o", contamination=0.05, threshold_fpr=0.01)
    with pytest.raises(ValueError, match="contamination must be in"):
        TrainConfig(data="d", out="o", contamination=0.7)


def test_demo_reports_precision_and_recall_at_the_threshold():
    from jobs.demo import precision_recall

    flagged = np.array([True, True, False, False, True])
    label = np.array([True, False, True, False, True])
    assert precision_recall(flagged, label) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert precision_recall(np.zeros(3, bool), np.array([True, False, False])) == (0.0, 0.0)
    from types import SimpleNamespace

    from jobs.demo import DemoResult, format_result

    r = DemoResult(train=SimpleNamespace(history=[{"val_loss": 0.5, "train_loss": 0.4}], model_uri="m",
                                         artifact_uri="m/runs/r"),
                   score=SimpleNamespace(summary={"anomaly_count": 3, "row_count": 100, "threshold": 2.5},
                                         run_uri="s/runs/x"), auroc=0.99, precision=0.75, recall=0.5,
                   wall_seconds=1.0)
    assert "AUROC=0.990 (anomaly_score vs injected anomalies), precision=0.750 recall=0.500 at threshold 2.5000" \
        in format_result(r)
