"""Model shapes, the loss per column kind, error normalisation, mergeable statistics, AUROC."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aemodel import AutoencoderConfig, ErrorStats, TabularAutoencoder, auroc, column_losses, histogram_edges, row_errors
from aemodel.model import Reconstruction


def test_output_heads_match_column_kinds():
    cfg = AutoencoderConfig(n_numeric=3, n_binary=2, category_sizes=[4, 5], hidden_dims=[16, 8], latent_dim=2)
    out = TabularAutoencoder(cfg)(torch.randn(6, 3), torch.ones(6, 2), torch.zeros(6, 2, dtype=torch.long))
    assert out.numeric.shape == (6, 3) and out.binary_logits.shape == (6, 2)
    assert [t.shape for t in out.categorical_logits] == [(6, 4), (6, 5)]


@pytest.mark.parametrize("bad", [dict(latent_dim=0), dict(hidden_dims=[0]), dict(dropout=1.0),
                                 dict(activation="swish"), dict(category_sizes=[1])])
def test_invalid_model_config_is_rejected(bad):
    with pytest.raises(ValueError):
        AutoencoderConfig(n_numeric=2, n_binary=0, **bad)


def test_each_kind_uses_its_own_loss():
    recon = Reconstruction(numeric=torch.tensor([[0.5]]), binary_logits=torch.tensor([[2.0]]),
                           categorical_logits=[torch.tensor([[1.0, 0.0, -1.0]])])
    x_num, x_bin, x_cat = torch.tensor([[1.5]]), torch.tensor([[0.0]]), torch.tensor([[2]])
    losses = column_losses(recon, x_num, x_bin, x_cat, torch.ones(3))
    assert losses[0, 0] == pytest.approx(1.0)  # MSE
    assert losses[0, 1] == pytest.approx(F.binary_cross_entropy_with_logits(torch.tensor(2.0), torch.tensor(0.0)).item())
    assert losses[0, 2] == pytest.approx(F.cross_entropy(torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([2])).item())
    scaled = column_losses(recon, x_num, x_bin, x_cat, torch.tensor([2.0, 4.0, 8.0]))
    assert torch.allclose(scaled, losses / torch.tensor([2.0, 4.0, 8.0]))


def test_predicting_training_marginals_costs_one_per_column():
    """The normalisation: constant predictors from training statistics score ~1.0."""
    rng = np.random.default_rng(0)
    n, p = 20000, 0.2
    freq = np.array([0.5, 0.3, 0.2])
    x_bin = torch.tensor(rng.random((n, 1)) < p, dtype=torch.float32)
    x_cat = torch.tensor(rng.choice(3, size=(n, 1), p=freq))
    recon = Reconstruction(numeric=torch.zeros(n, 1), binary_logits=torch.full((n, 1), math.log(p / (1 - p))),
                           categorical_logits=[torch.log(torch.tensor(freq, dtype=torch.float32)).expand(n, 3)])
    h_bin = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    h_cat = float(-(freq * np.log(freq)).sum())
    losses = column_losses(recon, torch.randn(n, 1), x_bin, x_cat, torch.tensor([1.0, h_bin, h_cat]))
    assert losses.mean(dim=0).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.03)


def test_row_error_ignores_missing_cells():
    losses = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]])
    observed = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert row_errors(losses, observed).tolist() == [2.0, 2.0, 0.0]


def test_error_stats_merge_equals_one_pass_and_matches_numpy():
    rng = np.random.default_rng(1)
    values = rng.lognormal(-2, 1, 50_000)
    edges = histogram_edges()
    one = ErrorStats(edges=edges, threshold=0.5).update(values)
    parts = ErrorStats(edges=edges, threshold=0.5)
    for chunk in np.array_split(values, 7):
        parts.merge(ErrorStats(edges=edges, threshold=0.5).update(chunk))
    s1, s2 = one.summary(), parts.summary()
    for key in ("count", "above_threshold", "histogram", "min", "max", "quantiles"):
        assert s1[key] == s2[key]  # exact: the result does not depend on how rows were split
    assert s2["mean"] == pytest.approx(values.mean()) and s2["std"] == pytest.approx(values.std())
    assert s2["above_threshold"] == int((values > 0.5).sum())
    assert sum(s2["histogram"]["counts"]) + s2["histogram"]["underflow"] + s2["histogram"]["overflow"] == 50_000
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p99_9", 0.999)):
        assert s2["quantiles"][name] == pytest.approx(np.quantile(values, q), rel=0.005)


def test_error_stats_count_nonfinite_separately():
    s = ErrorStats(edges=histogram_edges()).update(np.array([0.1, np.nan, np.inf, 0.2])).summary()
    assert s["count"] == 2 and s["nonfinite"] == 2


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(2)
    scores = np.round(rng.normal(size=300), 1)  # with ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert auroc(scores, labels) == pytest.approx(pairwise)
    with pytest.raises(ValueError):
        auroc(scores, np.zeros(300, dtype=bool))


def test_histogram_percentile_places_values_in_the_summarised_distribution():
    from aemodel.metrics import ErrorStats, histogram_edges, histogram_percentile

    v = np.random.default_rng(0).lognormal(size=20000)
    hist = ErrorStats(edges=histogram_edges(), threshold=None).update(v).summary()["histogram"]
    probs = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    assert np.allclose(histogram_percentile(hist, np.quantile(v, probs)), 100 * probs, atol=0.3)
    out = histogram_percentile(hist, np.array([1e6, np.nan]))
    assert out[0] == 100.0 and np.isnan(out[1])
    assert np.all(np.diff(histogram_percentile(hist, np.sort(v))) >= 0)  # monotone: same order as the score


def test_rows_per_call_shrinks_with_the_output_width():
    from types import SimpleNamespace

    from aemodel.scoring import rows_per_call

    def pp(n_num: int, cats: list[int]) -> SimpleNamespace:
        return SimpleNamespace(numeric_names=["x"] * n_num, binary_names=[], category_sizes=cats)

    assert rows_per_call(pp(32, [])) == 65536  # a few dozen numbers: the cap
    assert rows_per_call(pp(4, [2000])) == 64 * 2**20 // (16 * 2004)  # one wide categorical: 2,092 rows
    assert rows_per_call(pp(0, [10**7])) == 256  # never fewer
