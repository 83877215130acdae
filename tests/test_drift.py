"""Drift alerts: a limit crossed by sampling noise alone is not an alert; real shifts still are."""

import numpy as np

from aemodel import drift
from aemodel.metrics import ErrorStats, histogram_edges


def _summary(rng: np.random.Generator, n: int, scale: float = 1.0) -> dict:
    values = scale * rng.lognormal(0.0, 0.6, n)
    return ErrorStats(histogram_edges(), threshold=3.0).update(values).summary()


def test_small_nights_from_the_same_distribution_do_not_alert():
    """100 scored rows against 43 validation rows: PSI over these bins is far above 0.2 by chance alone."""
    rng = np.random.default_rng(0)
    tonight, validation = _summary(rng, 100), _summary(rng, 43)
    d = drift.compare(tonight, validation)
    assert d["psi"] > 0.2 and d["psi"] < d["psi_noise"]  # the limit alone would page every night
    assert drift.alerts(d, 0.2, 0.15, 3.0) == []


def test_large_samples_keep_the_limits_and_a_real_shift_alerts():
    rng = np.random.default_rng(1)
    validation = _summary(rng, 5000)
    same = drift.compare(_summary(rng, 20000), validation)
    assert same["psi_noise"] < 0.2 and same["ks_noise"] < 0.15  # the configured limits decide at this size
    assert drift.alerts(same, 0.2, 0.15, 3.0) == []
    shifted = drift.compare(_summary(rng, 20000, scale=2.0), validation)
    reasons = drift.alerts(shifted, 0.2, 0.15, 3.0)
    assert any(r.startswith("PSI") for r in reasons) and any(r.startswith("KS") for r in reasons)
    small_shift = drift.compare(_summary(rng, 100, scale=3.0), _summary(rng, 43))
    assert any(r.startswith("KS") for r in drift.alerts(small_shift, 0.2, 0.15, 3.0))  # still seen on few rows


def test_reports_written_before_noise_levels_use_the_limits_alone():
    d = {"psi": 0.3, "ks": 0.1, "anomaly_rate_ratio": None}
    assert drift.alerts(d, 0.2, 0.15, 3.0) == ["PSI 0.300 > 0.2"]


def test_an_anomaly_rate_against_a_reference_with_none_above_the_threshold_can_alert():
    """43 validation rows, none above the threshold: 27 of 100 flagged tonight is still an alert, 1 of 100 is not."""
    rng = np.random.default_rng(2)
    validation = {**_summary(rng, 43), "above_threshold_fraction": 0.0}
    many = drift.compare({**_summary(rng, 100), "anomaly_rate": 0.27}, validation)
    assert many["reference_anomaly_rate"] == 0.0 and many["anomaly_rate_ratio"] > 3
    assert any(r.startswith("anomaly rate") for r in drift.alerts(many, 0.2, 0.15, 3.0))
    one = drift.compare({**_summary(rng, 100), "anomaly_rate": 0.01}, validation)
    assert not any(r.startswith("anomaly rate") for r in drift.alerts(one, 0.2, 0.15, 3.0))


def test_the_anomaly_rate_test_counts_the_baselines_own_sampling_noise():
    """1 of 181 validation rows above the threshold is a rough rate: 9 of 400 tonight is within its noise.

    Taken as exact, 1/181 made 9/400 a z of 4.6 and paged on unchanged data; as a sample the
    two-proportion z is about 1.5. A real jump (60 of 400) still alerts.
    """
    rng = np.random.default_rng(3)
    validation = {**_summary(rng, 181), "above_threshold_fraction": 1 / 181}
    same = drift.compare({**_summary(rng, 400), "anomaly_rate": 9 / 400}, validation)
    assert same["anomaly_rate_ratio"] > 3 and 1.0 < same["anomaly_rate_z"] < 2.0
    assert not any(r.startswith("anomaly rate") for r in drift.alerts(same, 0.2, 0.15, 3.0))
    jump = drift.compare({**_summary(rng, 400), "anomaly_rate": 60 / 400}, validation)
    assert any(r.startswith("anomaly rate") for r in drift.alerts(jump, 0.2, 0.15, 3.0))
