"""The score families beside the default: denoising training (``input_noise``) and shared units (``shared_units``).

Each option: its rule on its own, a training and scoring round trip through the CLI's job
and the Python API (the same artefact both ways), and its effect on a small table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats as sps

from aemodel import AnomalyAutoencoder, Preprocessor, load_artifact, partial_stats, read_scores, resolve_columns
from aemodel.denoise import column_sigma, input_noise
from aemodel.losses import error_scales
from aemodel.model import AutoencoderConfig, TabularAutoencoder
from aemodel.moments import kurtosis, merge_moments, moments
from aemodel.preprocess import PreprocessConfig
from aemodel.units import shared_unit_columns
from jobs import score, train

SMALL = {"epochs": 30, "hidden_dims": [16, 8], "seed": 0}


def test_merged_moments_give_the_kurtosis_of_the_whole_column():
    rng = np.random.default_rng(0)
    parts = [rng.standard_t(4, 700), rng.exponential(size=300) + 2, rng.normal(size=5)]
    merged = moments(parts[0])
    for p in parts[1:]:
        merged = merge_moments(merged, moments(p))
    assert kurtosis(merged) == pytest.approx(sps.kurtosis(np.concatenate(parts), fisher=False), rel=1e-9)
    assert kurtosis({"n": 10, "mean": 0.0, "m2": 4.0, "m3": 0.0}) == 3.0  # statistics saved before m4: normal


def test_the_noise_follows_k_dsm_rule_per_column():
    assert column_sigma(3.0, 0.5) == pytest.approx(0.5)  # a normal column gets the base noise
    assert column_sigma(9.0, 0.5) == pytest.approx(0.5 * (1 + 0.33 * 6))  # heavier tails, more noise
    assert column_sigma(1.8, 0.5) == pytest.approx(0.5 * (1 - 0.33 * 1.2))  # uniform-like: less
    assert column_sigma(500.0, 0.5) == 3.0 and column_sigma(1.0, 0.05) == 0.1  # K-DSM's bounds
    rng = np.random.default_rng(1)
    t = pa.table({"normal": rng.normal(size=4000), "heavy": rng.standard_t(3, 4000), "flag": rng.random(4000) < 0.3,
                  "colour": rng.choice(["a", "b", "c"], 4000)})
    specs = resolve_columns(t.schema)
    pp = Preprocessor.fit(specs, partial_stats(t, specs))
    sigmas = input_noise(pp, 0.5)
    assert len(sigmas) == AutoencoderConfig(2, 1, pp.category_sizes).input_dim  # one per network input
    assert abs(sigmas[0] - 0.5) < 0.05 and sigmas[1] > 1.0  # the t(3) column's tails get more noise
    assert sigmas[2:] == [pytest.approx(0.5 * (1 + 0.33 * (1.8 - 3)))] * (1 + sum(pp.category_sizes))


def test_noise_reaches_the_training_step_only():
    torch.manual_seed(0)
    model = TabularAutoencoder(AutoencoderConfig(3, 0, [], hidden_dims=[8], latent_dim=2))
    x = torch.randn(16, 3)
    empty_bin, empty_cat = torch.zeros(16, 0), torch.zeros(16, 0, dtype=torch.long)
    clean = model(x, empty_bin, empty_cat).numeric
    assert torch.equal(clean, model(x, empty_bin, empty_cat).numeric)
    noisy = model(x, empty_bin, empty_cat, torch.full((3,), 0.5)).numeric
    assert not torch.allclose(clean, noisy)


def _image_rows(n: int, seed: int) -> pd.DataFrame:
    """16 'pixels' in [0, 16]: 12 vary a lot, 4 are almost always 0 (a border) with a rare full-intensity spot."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3, size=(n, 1)) * 6.0
    busy = np.clip(base + rng.normal(0, 2, size=(n, 12)), 0, 16).round()
    border = np.where(rng.random((n, 4)) < 0.01, 16.0, 0.0)
    return pd.DataFrame(np.hstack([busy, border]), columns=[f"p{i}" for i in range(16)])


def test_columns_in_one_unit_are_found_from_their_ranges():
    def numeric(ranges):
        return {f"c{i}": {"min": lo, "max": hi} for i, (lo, hi) in enumerate(ranges)}

    pixels = numeric([(0, 16)] * 5 + [(0, 8), (0, 0), (2, 16)])
    assert shared_unit_columns(pixels, list(pixels)) == list(pixels)  # sub-ranges and a constant column join
    scores = numeric([(1, 8), (1, 8), (1, 10), (1, 7), (1, 4)])  # 1..10 scores as a training split shows them
    assert shared_unit_columns(scores, list(scores)) == list(scores)
    business = numeric([(0, 16), (0, 16), (0, 16), (18, 90), (0, 1e6), (1, 5), (-3, 3)])
    assert shared_unit_columns(business, list(business)) == []  # one column in the millions: no common scale
    assert shared_unit_columns(numeric([(0, 16)] * 2), ["c0", "c1"]) == []  # fewer than three
    half = numeric([(0, 16)] * 3 + [(0, 2)] * 4)
    assert shared_unit_columns(half, list(half)) == []  # three of seven span the envelope: not half
    logged = numeric([(0, 16)] * 4)
    logged["c3"]["transform"] = "signed_log1p"
    assert shared_unit_columns(logged, list(logged)) == ["c0", "c1", "c2"]  # modelled in its own unit


def test_shared_units_scale_the_group_as_one_and_pool_its_validation_scale():
    t = pa.Table.from_pandas(_image_rows(3000, 0))
    specs = resolve_columns(t.schema)
    own = Preprocessor.fit(specs, partial_stats(t, specs))
    shared = Preprocessor.fit(specs, partial_stats(t, specs), PreprocessConfig(shared_units=True))
    scales = {p["scale"] for p in shared.numeric.values()}
    assert len(scales) == 1 and shared.shared_unit_indices == list(range(16))
    assert own.shared_unit_indices == [] and len({p["scale"] for p in own.numeric.values()}) > 1
    # The border's rare spot: about 10 standard deviations of its own, about 3 in the pooled unit.
    spot = pa.table({f"p{i}": [16.0 if i == 15 else 0.0] for i in range(16)})
    assert own.transform(spot)["x_num"][0, 15] > 8 and shared.transform(spot)["x_num"][0, 15] < 4
    means = np.array([0.5, 0.1, np.nan, 2.0])
    assert error_scales(means, 0.05, [0, 1]).tolist() == [0.3, 0.3, 1.0, 2.0]
    assert error_scales(means, 0.05).tolist() == [0.5, 0.1, 1.0, 2.0]


@pytest.mark.parametrize("option", [{"input_noise": 0.5}, {"shared_units": True}])
def test_each_family_trains_and_scores_the_same_through_the_cli_and_python(option, tmp_path):
    rows = _image_rows(1500, 1)
    (tmp_path / "train").mkdir()
    pq.write_table(pa.Table.from_pandas(rows), tmp_path / "train" / "part-0.parquet")
    new = _image_rows(300, 2)
    new.insert(0, "row_id", np.arange(len(new)))
    pq.write_table(pa.Table.from_pandas(new), tmp_path / "new.parquet")
    cli = train.run(train.TrainConfig(data=str(tmp_path / "train"), out=str(tmp_path / "model"), **SMALL, **option))
    art = load_artifact(cli.model_uri)
    assert {k: art.train_config[k] for k in option} == option  # the artefact records the family
    if "shared_units" in option:
        assert art.preprocessor.shared_unit_indices == list(range(16))
    det = AnomalyAutoencoder(**SMALL, **option).fit(rows)
    assert all(torch.equal(w, art.state_dict[k]) for k, w in det.artifact_.state_dict.items())
    score.run(score.ScoreConfig(model=cli.model_uri, data=str(tmp_path / "new.parquet"), out=str(tmp_path / "out"),
                                id_columns=["row_id"]))
    by_cli = read_scores(str(tmp_path / "out")).sort_values("row_id")["anomaly_score"].to_numpy()
    np.testing.assert_allclose(by_cli, det.decision_function(new.drop(columns="row_id")), rtol=1e-5)


def test_in_shared_units_a_column_counts_by_how_much_it_varies():
    """Standardised on their own, a quiet column's errors weigh as much as a busy one's; in one unit, far less."""
    rng = np.random.default_rng(3)

    def rows(n):
        base = rng.integers(0, 3, size=(n, 1)) * 6.0
        busy = np.clip(base + rng.normal(0, 2, size=(n, 6)), 0, 16)
        quiet = np.clip(8 + rng.normal(0, 0.5, size=(n, 2)), 0, 16)
        edges = np.array([[0.0] * 6 + [0.0] * 2, [16.0] * 6 + [8.0] * 2])  # the busy columns span [0, 16]
        return pd.DataFrame(np.vstack([edges, np.hstack([busy, quiet])]), columns=[f"p{i}" for i in range(8)])

    train_rows, new = rows(2000), rows(300)
    quiet_share = {}
    for flag in (False, True):
        det = AnomalyAutoencoder(**SMALL, shared_units=flag).fit(train_rows)
        errors = det.score_samples(new, column_errors=True)[[f"err_p{i}" for i in range(8)]]
        quiet_share[flag] = float(errors[["err_p6", "err_p7"]].sum(axis=1).mean() / errors.sum(axis=1).mean())
    assert quiet_share[False] > 0.2 and quiet_share[True] < quiet_share[False] / 3, quiet_share
