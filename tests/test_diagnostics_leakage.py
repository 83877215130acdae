"""Pure checks of the diagnostics, the threshold calibration, the leakage tools and reports (no Ray)."""

from __future__ import annotations

import base64
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


def test_id_like_columns_are_found_and_ordinary_ones_are_not():
    n = 1000
    rng = np.random.default_rng(2)
    table = pa.table({"event_id": np.arange(5000, 5000 + n), "uuid": [f"u{i}" for i in range(n)],
                      "amount": rng.lognormal(size=n), "count": rng.poisson(3, size=n),
                      "city": rng.choice(["a", "b", "c"], size=n)})
    specs = resolve_columns(table.schema)
    stats = merge_stats(partial_stats(table.slice(0, 400), specs), partial_stats(table.slice(400), specs))
    found = {c["column"] for c in id_like_columns(specs, stats)}
    assert found == {"event_id", "uuid"}


def test_top_features_rank_columns_with_shares_and_z_scores():
    losses = np.array([[0.1, 3.0, 0.9], [2.0, 0.0, 0.0]])
    observed = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32)
    out = top_features(losses, observed, ["a", "b", "c"], 2, np.array([0.1, 0.5, 0.1]), np.array([0.1, 0.5, 0.2]))
    rows = out.to_pylist()
    assert [f["column"] for f in rows[0]] == ["b", "c"]
    assert rows[0][0]["share"] == pytest.approx(3.0 / 4.0)
    assert rows[0][0]["z"] == pytest.approx(5.0)  # (3.0 - 0.5) / 0.5
    assert [f["column"] for f in rows[1]] == ["a", "b"]  # c was missing: never listed


def test_auroc_from_mergeable_sketches_matches_exact():
    rng = np.random.default_rng(3)
    neg, pos = rng.lognormal(0, 1, 5000), rng.lognormal(1, 1, 300)
    sk = [ErrorStats(edges=histogram_edges()).update(v).sketch for v in (pos, neg)]
    exact = auroc(np.concatenate([pos, neg]), np.r_[np.ones(300), np.zeros(5000)])
    assert auroc_from_sketches(*sk) == pytest.approx(exact, abs=2e-3)


def test_reports_are_self_contained_with_valid_pngs():
    from jobs.report import scoring_report, training_report

    hist = ErrorStats(edges=histogram_edges(), threshold=1.0).update(np.random.default_rng(4).lognormal(size=999))
    threshold = {"value": 1.0, "quantile": 0.99, "validation_rows": 999, "ci": [0.8, 1.3]}
    metrics = {"best_epoch": 1, "train_loss": 0.2, "val_loss": 0.25, "mean_baseline_val_loss": 1.0,
               "diagnostics": diagnose(_history([1, .2], [1, .25]), n_features=4, input_width=4, latent_dim=4,
                                       baseline_val_loss=1.0), "warnings": []}
    page = training_report("m", _history([1, .2], [1, .25]), hist.summary(), threshold, metrics).decode()
    summary = {**hist.summary(), "input": {"uri": "d"}, "model": {"uri": "m", "version": "v"}, "row_count": 999,
               "threshold_source": "validation_quantile", "anomaly_count": hist.above, "anomaly_rate": 0.01,
               "columns": {"mean_error": {"a": 0.5, "b": 0.1}, "top1_rows": {"a": 9}}}
    page2 = scoring_report(summary).decode()
    for html, n_images in ((page, 3), (page2, 4)):
        pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
        assert len(pngs) == n_images and "http" not in html.replace("http-equiv", "")
        assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "latent_size" in page and "[warning]" not in page
