"""The latent term's mixture: the fit, its choice of size, the stored forms and the sample of codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aemodel.latent import fit_mixture, latent_gaussian, mixture_distance, stored_mixture
from aemodel.losses import latent_distance, latent_tensors


def _clusters(n: int = 3000, seed: int = 0) -> np.ndarray:
    """Codes in four tight clusters at the corners of a square: their overall mean is empty space."""
    rng = np.random.default_rng(seed)
    corners = np.array([[3.0, 3.0], [3.0, -3.0], [-3.0, 3.0], [-3.0, -3.0]])
    return corners[rng.integers(4, size=n)] + rng.normal(scale=0.3, size=(n, 2))


def test_bic_gives_clustered_codes_a_component_each_and_the_empty_centre_a_large_distance():
    codes = _clusters()
    latent = fit_mixture(codes, seed=0)
    assert latent["components"] == 4 and set(latent["bic"]) == {"1", "2", "4", "8"}
    assert mixture_distance(codes, latent).mean() == pytest.approx(1.0, abs=1e-9)  # a typical code scores 1
    centre, corner = mixture_distance(np.array([[0.0, 0.0], [3.0, 3.0]]), latent)
    assert centre > 20 * corner  # one Gaussian would call the centre the most typical point of all
    single = fit_mixture(codes, seed=0, components=(1,))
    assert mixture_distance(np.array([[0.0, 0.0]]), single)[0] < mixture_distance(np.array([[3.0, 3.0]]), single)[0]


def test_one_gaussian_codes_keep_one_component():
    codes = np.random.default_rng(1).normal(size=(2000, 3)) @ np.array([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.2]])
    assert fit_mixture(codes, seed=0)["components"] == 1


def test_a_size_needs_two_codes_per_parameter():
    codes = _clusters(n=60)  # 2-d: 5 parameters per component; 4 components need 46 codes, 8 need 94
    assert set(fit_mixture(codes, seed=0)["bic"]) == {"1", "2", "4"}


def test_torch_distance_matches_the_numpy_reference_and_the_fit_is_seeded():
    codes = _clusters(seed=2)
    latent = fit_mixture(codes, seed=5)
    assert fit_mixture(codes, seed=5) == latent
    probe = np.random.default_rng(3).normal(scale=4, size=(500, 2))
    ours = latent_distance(torch.tensor(probe, dtype=torch.float32), *latent_tensors(latent, "cpu")).numpy()
    np.testing.assert_allclose(ours, mixture_distance(probe, latent), rtol=1e-4, atol=1e-3)


def test_an_artefact_with_one_stored_gaussian_scores_as_before():
    """Version 2 artefacts store ``mean`` and ``whitening``: the distance stays the squared Mahalanobis / d."""
    codes = np.random.default_rng(4).normal(size=(500, 3)) * [1.0, 2.0, 0.5] + 1.0
    mean, whitening = latent_gaussian(len(codes), codes.sum(0), codes.T @ codes)
    old = {"mean": mean.tolist(), "whitening": whitening.tolist(), "weight": 0.5, "rows": 500}
    probe = np.random.default_rng(5).normal(size=(50, 3)) * 3
    expected = (((probe - mean) @ whitening) ** 2).sum(1) / 3
    np.testing.assert_allclose(mixture_distance(probe, old), expected, rtol=1e-9)
    torch_dist = latent_distance(torch.tensor(probe, dtype=torch.float32), *latent_tensors(old, "cpu")).numpy()
    np.testing.assert_allclose(torch_dist, expected, rtol=1e-4, atol=1e-4)
    assert len(stored_mixture(old)[0]) == 1


def test_latent_codes_keep_a_seeded_uniform_sample_in_input_order():
    from aemodel.terms import latent_codes

    class Encoder(torch.nn.Module):
        config = type("Config", (), {"latent_dim": 1})()

        def encode(self, x_num, x_bin, x_cat):
            return x_num[:, :1]

    rows = torch.arange(10_000, dtype=torch.float32)[:, None]
    batches = [{"x_num": rows[i:i + 999], "x_bin": rows[i:i + 999, :0], "x_cat": rows[i:i + 999, :0].long()}
               for i in range(0, 10_000, 999)]
    sample = latent_codes(Encoder(), batches, max_rows=1000, seed=7)[:, 0]
    assert len(sample) == 1000 and len(np.unique(sample)) == 1000
    assert np.all(np.diff(sample) > 0)  # input order
    assert abs(sample.mean() - 5000) < 400  # spread over every batch, not the first ones
    np.testing.assert_array_equal(sample, latent_codes(Encoder(), batches, max_rows=1000, seed=7)[:, 0])
    assert len(latent_codes(Encoder(), batches[:1], max_rows=1000, seed=7)) == 999  # fewer rows: all of them


@pytest.mark.parametrize("components", [None, 1, 4])  # None: --latent-weight 0, no latent term
def test_training_says_what_mixture_bic_chose_only_when_a_mixture_was_asked_for(components):
    from jobs.training.result import TrainResult, format_result

    result = TrainResult(model_uri="m", version="v", history=[{"epoch": 0, "train_loss": 1.0, "val_loss": 1.0}],
                         threshold=2.0, reference={}, train_rows=10, val_rows=2, wall_seconds=1.0,
                         metrics={"latent_components": components})
    lines = format_result(result).splitlines()
    assert ("latent term: a mixture of 4 Gaussians over the training codes" in lines) == (components == 4)


def test_one_gaussian_is_also_stored_for_format_2_readers_and_a_mixture_needs_format_3():
    from aemodel.artifact import FORMAT_VERSION, format_version
    from aemodel.terms import latent_gaussian_fit

    codes = np.random.default_rng(6).normal(size=(300, 2))
    single = fit_mixture(codes, seed=0, components=(1,))
    mixture = fit_mixture(_clusters(), seed=0)
    exact = latent_gaussian_fit([len(codes), *codes.sum(0), *(codes.T @ codes).ravel()], 2, weight=0.5)
    assert format_version({"latent": single}) == format_version({"latent": exact}) == format_version({}) == 2
    assert format_version({"latent": mixture}) == 3
    assert format_version({"marginal": {"weight": 0.5}}) == 4  # aemodel.marginal
    assert format_version({"marginal": {"weight": 0.5}}, bank={"entity_columns": ["u"]}) == FORMAT_VERSION == 5
    # What a format 2 reader computes from mean / whitening is the distance this version computes.
    for latent in (single, exact):
        old_form = {"mean": latent["mean"], "whitening": latent["whitening"]}
        np.testing.assert_allclose(mixture_distance(codes, latent), mixture_distance(codes, old_form), atol=1e-5)


def test_the_default_latent_weight_follows_the_table_width_and_an_explicit_one_wins():
    from jobs.training.config import TrainConfig

    cfg = TrainConfig(data="d", out="o")
    assert [cfg.resolved_latent_weight(n) for n in (3, 44, 45, 130)] == [0.5, 0.5, 0.0, 0.0]
    assert cfg.resolved_latent_dim(44) == cfg.resolved_latent_dim(45) == 8  # the width where the code stops growing
    assert TrainConfig(data="d", out="o", latent_weight=0.2).resolved_latent_weight(130) == 0.2
    assert TrainConfig(data="d", out="o", latent_weight=0.0).resolved_latent_weight(3) == 0.0
    assert TrainConfig(data="d", out="o", latent_components=4).resolved_latent_weight(130) == 0.5


@pytest.mark.parametrize("width", [44, 45])
def test_a_wide_table_trains_without_the_latent_term_and_training_says_so(tmp_path, width):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aemodel import RowScorer, load_artifact
    from jobs import train
    from jobs.training.result import format_result

    rng = np.random.default_rng(0)
    table = pa.table({f"x{i}": rng.normal(size=400) for i in range(width)})
    pq.write_table(table, tmp_path / "t.parquet")
    result = train.run(train.TrainConfig(data=str(tmp_path / "t.parquet"), out=str(tmp_path / "m"), epochs=2,
                                         hidden_dims=[16], cpus_per_worker=1, in_process=True,
                                         marginal_weight=0.0))  # the latent term alone
    art = load_artifact(result.model_uri)
    scored = RowScorer(art).score_table(table)
    note = [line for line in format_result(result).splitlines() if line.startswith("latent term: off")]
    if width == 44:
        assert art.reference["latent"]["weight"] == 0.5 and result.metrics["latent_weight"] == 0.5 and not note
        assert np.all(scored["anomaly_score"] > scored["recon_error"])
    else:
        assert "latent" not in art.reference and result.metrics["latent_weight"] == 0.0
        assert note == ["latent term: off (the default for 45 or more feature columns; this table has 45); "
                        "--latent-weight 0.5 adds it"]
        np.testing.assert_array_equal(scored["anomaly_score"], scored["recon_error"])
