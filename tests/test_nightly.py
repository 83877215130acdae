"""Nightly scoring on a local S3 server: three nights, the third drifted."""

import subprocess
import sys

import pyarrow as pa
import pytest
import s3fs

from jobs import nightly
from aemodel.commit import committed_run, read_committed_json
from jobs.runtime.errors import InputError
from jobs.scoring.config import ScoreOptions
from jobs.data.storage import publish_pointer
from jobs.data.synthetic import ROW_ID, make_mixed_table, write_shards

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def bucket(s3_server):
    """One bucket for the module: the CLI test reuses the nights the first test committed."""
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("aescore-nightly")
    return "s3://aescore-nightly"


@pytest.fixture(scope="module")
def nights(trained, bucket):
    publish_pointer(f"{bucket}/models/LATEST.json", trained.model_uri, trained.version)
    for day, frac in (("2026-11-01", 0.03), ("2026-11-02", 0.03), ("2026-11-03", 0.45)):
        table = make_mixed_table(1500, seed=int(day[-2:]) + 40, anomaly_fraction=frac, start_id=int(day[-2:]) * 10**6)
        write_shards(table, f"{bucket}/events/dt={day}", 2)
    return nightly.NightlyConfig(model=f"{bucket}/models/LATEST.json", data=f"{bucket}/events/dt={{date}}",
                                 out=f"{bucket}/scores/dt={{date}}",
                                 score=ScoreOptions(id_columns=[ROW_ID], batch_size=1000))


def test_three_nights_flag_only_the_drifted_one(nights, bucket):
    from dataclasses import replace

    results = nightly.run(replace(nights, start="2026-11-01", end="2026-11-03"))
    assert [r.night for r in results] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    first, second, third = (r.drift for r in results)
    assert first["alerts"] == [] and second["alerts"] == [], (first, second)
    assert second["previous_nights"] == ["2026-11-01"] and "vs_previous_nights" in second
    assert third["alerts"], third
    assert third["vs_previous_nights"]["psi"] > nights.psi_alert
    assert third["vs_validation"]["anomaly_rate_ratio"] > nights.anomaly_rate_alert
    assert third["previous_nights"] == ["2026-11-02", "2026-11-01"]
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        run = committed_run(f"{bucket}/scores/dt={day}")
        for name in ("_SUCCESS", "summary.json", "manifest.json", "drift.json"):
            assert fs.exists(f"{run}/{name}"), (day, name)
        assert read_committed_json(f"{bucket}/scores/dt={day}", "drift.json")["date"] == day

    # Idempotent: rerunning a night reuses its committed output and reports the same drift.
    again = nightly.run(replace(nights, date="2026-11-02"))[0]
    assert again.reused and again.drift == second

    with pytest.raises(InputError, match="input path does not exist: .*dt=2026-11-04"):
        nightly.run(replace(nights, date="2026-11-04"))
    assert not fs.exists(f"{bucket}/scores/dt=2026-11-04/_SUCCESS")

    # A backfill whose last night has no input is refused before its first night is scored.
    write_shards(make_mixed_table(300, seed=6, start_id=6 * 10**6), f"{bucket}/events/dt=2026-11-06", 1)
    with pytest.raises(InputError, match="input path does not exist: .*dt=2026-11-07"):
        nightly.run(replace(nights, start="2026-11-06", end="2026-11-07"))
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/scores/dt=2026-11-06")


def test_cli_exit_code_3_on_alert(nights, bucket):
    import ray

    from dataclasses import replace

    nightly.run(replace(nights, start="2026-11-02", end="2026-11-03"))  # committed already if run after the first test
    base = ["--model", nights.model, "--data", nights.data, "--out", nights.out, "--score.id_columns", ROW_ID,
            "--score.ray_address", ray.get_runtime_context().gcs_address]
    alert = subprocess.run([sys.executable, "-m", "jobs.nightly", "--date", "2026-11-03", *base],
                           capture_output=True, text=True, timeout=300)
    assert alert.returncode == nightly.DRIFT_EXIT_CODE, alert.stderr[-2000:]
    assert "2026-11-03: reused" in alert.stdout and "ALERT" in alert.stdout
    missing = subprocess.run([sys.executable, "-m", "jobs.nightly", "--date", "2026-11-09", *base],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "input path does not exist" in missing.stderr

    # After a false alarm: a limit raised and the night rerun is judged by the new limits.
    relaxed = subprocess.run([sys.executable, "-m", "jobs.nightly", "--date", "2026-11-03", *base, "--psi-alert", "50",
                              "--ks-alert", "1", "--anomaly-rate-alert", "1000"], capture_output=True, text=True,
                             timeout=300)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr[-2000:]
    assert "2026-11-03: reused" in relaxed.stdout and "; ok" in relaxed.stdout
    assert "alerts judged by this run's limits" in relaxed.stdout
    assert read_committed_json(f"{bucket}/scores/dt=2026-11-03", "drift.json")["alerts"]  # left as committed

    # A night that fails partway through a backfill (a value found only while scoring; a missing column is
    # refused from the footers before the first night): the nights already committed are named before the error.
    write_shards(make_mixed_table(300, seed=10, start_id=10 * 10**6), f"{bucket}/events/dt=2026-11-10", 1)
    bad = make_mixed_table(300, seed=11, start_id=11 * 10**6)
    flag = bad["flag_0"].cast(pa.int64()).to_numpy().copy()
    flag[3] = 2
    write_shards(bad.set_column(bad.schema.get_field_index("flag_0"), "flag_0", pa.array(flag)),
                 f"{bucket}/events/dt=2026-11-11", 1)
    broken = subprocess.run([sys.executable, "-m", "jobs.nightly", "--start", "2026-11-10", "--end", "2026-11-11",
                             *base], capture_output=True, text=True, timeout=300)
    assert broken.returncode == 2 and "flag_0" in broken.stderr, broken.stderr[-2000:]
    assert "2026-11-10: scored" in broken.stdout
    assert "nightly: stopped at 2026-11-11 after 1 committed night(s), alerts on " in broken.stdout


def test_nightly_config_checks():
    with pytest.raises(ValueError, match="must contain \\{date\\}"):
        nightly.NightlyConfig(model="m", data="s3://b/events/", out="s3://b/o/{date}")
    with pytest.raises(ValueError, match="before --start"):
        nightly.NightlyConfig(model="m", data="{date}", out="{date}", start="2026-11-03", end="2026-11-01")
    with pytest.raises(ValueError, match="psi_alert must be > 0, got -1"):
        nightly.NightlyConfig(model="m", data="{date}", out="{date}", psi_alert=-1)
    cfg = nightly.NightlyConfig(model="m", data="{date}", out="{date}", start="2026-10-30", end="2026-11-02")
    assert [d.isoformat() for d in cfg.nights()] == ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]


def test_nights_scored_by_another_model_version_are_left_out_of_the_comparison():
    """After retraining, the previous nights' scores come from another model: comparing them alerts on nothing."""
    import numpy as np

    from aemodel.metrics import ErrorStats, histogram_edges

    rng = np.random.default_rng(0)

    def night(version: str, scale: float) -> dict:
        stats = ErrorStats(histogram_edges(), threshold=3.0).update(scale * rng.lognormal(0, 0.6, 2000)).summary()
        return {**stats, "row_count": stats["count"], "model": {"uri": "m", "version": version}}

    cfg = nightly.NightlyConfig(model="m", data="{date}", out="{date}")
    history = [("2026-11-01", night("old", 3.0)), ("2026-11-02", night("old", 3.0)), ("2026-11-03", night("new", 1.0))]
    tonight, reference = night("new", 1.0), night("new", 1.0)
    from types import SimpleNamespace

    report = nightly.drift_report(cfg, nightly.date(2026, 11, 4), tonight, SimpleNamespace(reference=reference),
                                  history)
    assert report["previous_nights"] == ["2026-11-03"] and report["alerts"] == []
    assert report["previous_nights_other_model"] == ["2026-11-02", "2026-11-01"]
    line = nightly.format_night(nightly.NightResult(night="2026-11-04", out="o", reused=False, drift=report,
                                                    warnings=["1 file(s) in the input lack the .parquet extension"]))
    assert "2 previous night(s) scored by another model version left out of vs_previous_nights" in line
    assert line.splitlines()[-1] == "  warning: 1 file(s) in the input lack the .parquet extension"


def test_a_limit_crossed_within_sampling_noise_is_said_not_alerted():
    vs = {"psi": 0.95, "ks": 0.06, "psi_noise": 2.2, "ks_noise": 0.3, "anomaly_rate_ratio": None}
    report = {"row_count": 100, "limits": {"psi": 0.2, "ks": 0.15, "anomaly_rate_ratio": 3.0}, "vs_validation": vs}
    report["alerts"] = nightly.alerts_of(report, report["limits"])
    line = nightly.format_night(nightly.NightResult(night="2026-11-25", out="o", reused=False, drift=report))
    assert report["alerts"] == [] and line.splitlines()[0].endswith("; ok")
    assert "PSI above the limit but within sampling noise for 100 rows" in line and "not alerted" in line

    from jobs.reports.html import nightly_report

    page = nightly_report({**report, "date": "2026-11-25", "model": {"uri": "m"}, "previous_nights": []},
                          [{"date": "2026-11-25", "row_count": 100, "quantiles": {"p50": 1.0, "p90": 2.0, "p99": 3.0},
                            "anomaly_rate": 0.01, "psi": 0.95, "ks": 0.06, "alerts": []}]).decode()
    assert "2.200 / 0.300" in page and "PSI above the limit against the validation rows, but within" in page
