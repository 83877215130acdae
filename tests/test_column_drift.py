"""Per-column drift: which feature moved, by how much, beyond sampling noise; mergeable like every summary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from aemodel import columns
from aemodel.commit import committed_run
from jobs.data.synthetic import ROW_ID, make_mixed_table, write_shards


def _encoded(n: int, shift: float = 0.0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x_num = np.stack([rng.normal(shift, 1, n), rng.normal(0, 1, n)], axis=1).astype(np.float32)
    observed = np.ones((n, 4), np.float32)
    observed[rng.random(n) < 0.05, 1] = 0  # some missing cells in the second column
    return {"x_num": torch.from_numpy(np.clip(x_num, -10, 10)), "x_bin": torch.from_numpy(rng.integers(0, 2, (n, 1)).astype(np.float32)),
            "x_cat": torch.from_numpy(rng.integers(0, 3, (n, 1))), "observed": torch.from_numpy(observed)}


def _distribution(*batches: dict) -> dict:
    counter = columns.ColumnCounter(2, 1, [3], clip=10.0)
    for b in batches:
        counter.add(b)
    return counter.result()


NAMES, KINDS = ["moved", "still", "flag", "cat"], ["numeric", "numeric", "binary", "categorical"]


def test_distributions_merge_exactly_and_a_shifted_column_ranks_first_beyond_its_noise():
    a, b = _encoded(3000, seed=1), _encoded(2000, seed=2)
    merged = columns.merge(_distribution(a), _distribution(b))
    assert merged == _distribution(a, b)  # blocks, workers and nights add up
    ref, now = _distribution(_encoded(5000, seed=3)), _distribution(_encoded(4000, shift=3.0, seed=4))
    drift = columns.compare(now, ref, NAMES, KINDS)
    assert list(drift["columns"])[0] == "moved" and drift["drifted"] == ["moved"]
    moved, still = drift["columns"]["moved"], drift["columns"]["still"]
    assert moved["psi"] > moved["psi_noise"] and moved["psi"] > 2 and moved["mean_shift_sd"] == pytest.approx(3, abs=0.1)
    assert not still["drifted"] and still["psi"] < still["psi_noise"]
    assert still["missing_share"] == pytest.approx(0.05, abs=0.01) and drift["drifted_share"] == 0.25


def test_ks_and_js_match_scipy_on_the_same_bins_and_psi_a_hand_checked_example():
    ref, now = _distribution(_encoded(3000, seed=5)), _distribution(_encoded(2500, shift=0.4, seed=6))
    drift = columns.compare(now, ref, NAMES, KINDS)

    def samples(d: dict, i: int) -> np.ndarray:  # every row at its bin's centre, as the bins see it
        counts = columns._unpack(d["counts"][i]).astype(int)
        centres = -10 + (np.arange(len(counts)) + 0.5) * 20 / len(counts)
        return np.repeat(centres, counts)

    for i, name in enumerate(NAMES[:2]):
        assert drift["columns"][name]["ks"] == pytest.approx(ks_2samp(samples(now, i), samples(ref, i)).statistic,
                                                             abs=1e-12)
    cat = drift["columns"]["cat"]
    assert cat["js"] == pytest.approx(jensenshannon(cat["shares"], cat["reference_shares"], base=2), abs=1e-9)
    # PSI by hand: shares 50/50 against 90/10 is (0.5-0.9) ln(0.5/0.9) + (0.5-0.1) ln(0.5/0.1) = 0.8789.
    half = {"bins": 512, "clip": 10.0, "n_numeric": 0, "rows": 100, "missing": [0.0], "sum": [], "sumsq": [],
            "counts": [columns._pack(np.array([50.0, 50.0]))]}
    skew = {**half, "counts": [columns._pack(np.array([90.0, 10.0]))]}
    assert columns.compare(half, skew, ["c"], ["categorical"])["columns"]["c"]["psi"] == pytest.approx(0.8789,
                                                                                                       abs=2e-3)


def test_a_night_with_one_column_shifted_says_which_and_can_alert(trained, tmp_path):
    nights = {"2026-10-01": 0.0, "2026-10-02": 0.0, "2026-10-03": 3.0}
    for day, shift in nights.items():
        t = make_mixed_table(1500, seed=int(day[-1]) + 20, anomaly_fraction=0.0, start_id=int(day[-1]) * 10**6)
        sd = pc.stddev(t["num_2"]).as_py()
        t = t.set_column(t.schema.get_field_index("num_2"), "num_2", pc.add(t["num_2"], shift * sd))
        write_shards(t, str(tmp_path / f"in/dt={day}"), 1)
    base = ["--model", trained.model_uri, "--data", str(tmp_path / "in/dt={date}"), "--out",
            str(tmp_path / "out/dt={date}"), "--score.id-columns", ROW_ID]
    quiet = subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", *base, "--start", "2026-10-01", "--end",
                            "2026-10-02"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    alert = subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", *base, "--date", "2026-10-03",
                            "--column-drift-alert", "0.05"], capture_output=True, text=True, timeout=300)
    assert alert.returncode == 3, alert.stdout + alert.stderr
    assert "columns: 1 of 13 feature columns drifted from training (8% >= 5%): num_2" in alert.stdout
    run = committed_run(str(tmp_path / "out/dt=2026-10-03"))
    report = json.loads(open(f"{run}/drift.json").read())
    for against in ("vs_training", "vs_previous_nights"):
        cd = report["column_drift"][against]
        first = next(iter(cd["columns"]))
        assert first == "num_2" and cd["columns"]["num_2"]["psi"] > cd["columns"]["num_2"]["psi_noise"], against
        assert cd["drifted"] == ["num_2"] and not cd["columns"]["num_5"]["drifted"], against
        assert cd["columns"]["num_2"]["mean_shift_sd"] > 2.5
    page = open(f"{run}/drift.html").read()
    head = page.split("<figure>")[0]  # the alert box, the facts and the notes above the figures
    assert head.count("columns: 1 of 13 feature columns drifted") == 1  # once, not in the box and the list too
    assert page.count("data:image/png;base64,") == 5  # the three trends and two column panels
    summary = json.loads(open(f"{run}/summary.json").read())
    assert summary["column_drift"]["drifted"] == ["num_2"] and summary["top_rows"][0]["values"]["num_2"] is not None


def test_noise_levels_match_a_direct_bootstrap_of_the_fine_bins():
    """PSI's noise drawn over its groups and KS's from the Brownian bridge agree with drawing every fine bin."""
    rng = np.random.default_rng(11)
    ref = np.histogram(np.clip(rng.lognormal(size=100_000), -10, 10), bins=512, range=(-10, 10))[0].astype(float)
    pool = ref / ref.sum()
    for n, m in ((400, 1600), (20_000, 50_000)):
        a = rng.multinomial(n, pool, size=4000) / n
        b = rng.multinomial(m, pool, size=4000) / m
        group = columns._groups(ref)
        fold = lambda x: np.stack([x[:, group == j].sum(1) for j in range(columns.PSI_BINS)], 1)  # noqa: E731
        direct = {"psi": np.quantile(columns._psi(fold(a), fold(b)), columns.NOISE_LEVEL),
                  "ks": np.quantile(columns._ks(a, b), columns.NOISE_LEVEL)}
        got = columns._noise(pool, n, m, {"psi": columns._psi, "ks": columns._ks}, ref)
        for k in direct:  # a 0.999 quantile of a few thousand draws moves by about this much
            assert got[f"{k}_noise"] == pytest.approx(direct[k], rel=0.3), (n, m, k)


def test_batch_sums_and_top_rows_keep_their_exact_meaning():
    from aemodel.scoring import top_indices

    batch = _encoded(5000, seed=12)
    d = _distribution(batch)
    x, obs = batch["x_num"].double().numpy(), batch["observed"][:, :2].double().numpy()
    assert np.allclose(d["sum"], (x * obs).sum(0), rtol=1e-5) and np.allclose(d["sumsq"], (x * x * obs).sum(0), rtol=1e-5)
    assert d["missing"][1] == (obs[:, 1] == 0).sum() and d["missing"][0] == 0
    rng = np.random.default_rng(13)
    for _ in range(500):
        s = rng.integers(0, 4, rng.integers(1, 60)).astype(float)
        s[rng.random(len(s)) < 0.2] = np.nan
        expected = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")[:20]
        assert sorted(top_indices(s, 20).tolist()) == sorted(expected.tolist())
