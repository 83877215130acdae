"""Stacked models (aemodel.stack, aemodel.stack_fit): each model in a stack is the model alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from aemodel import AnomalyAutoencoder
from aemodel import stack_fit
from aemodel.leakage import BloomFilter, contains_each
from aemodel.metrics import ErrorStats, histogram_arrays, histogram_edges, histogram_percentile, stacked_percentile
from aemodel.model import AutoencoderConfig, TabularAutoencoder
from aemodel.scoring import RowScorer
from aemodel.stack import ModelTerms, StackedNetwork, padded_chunks, stacked_figures


def _table(rows: int, seed: int) -> pa.Table:
    """Numeric, binary and categorical columns, each seed its own normal behaviour."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=rows)
    return pa.table({"a": z * (1 + seed) + seed, "b": -z + rng.normal(0, 0.3, rows), "c": rng.normal(seed, 1, rows),
                     "flag": z + rng.normal(0, 0.5, rows) > 0,
                     "kind": np.array(["x", "y", "z"])[(np.abs(z * 2).astype(int) + seed) % 3]})


@pytest.mark.parametrize("hidden", [[], [8, 4]])
def test_a_stacked_network_is_each_network(hidden):
    config = AutoencoderConfig(n_numeric=3, n_binary=1, category_sizes=[4, 2], hidden_dims=hidden, latent_dim=2)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(TabularAutoencoder(config).eval())
    rows = [5, 2, 4]
    p = max(rows)
    g = torch.Generator().manual_seed(0)
    x = {"x_num": torch.randn(3 * p, 3, generator=g), "x_bin": (torch.rand(3 * p, 1, generator=g) > 0.5).float(),
         "x_cat": torch.stack([torch.randint(0, 4, (3 * p,), generator=g), torch.randint(0, 2, (3 * p,), generator=g)],
                              1)}
    net = StackedNetwork.of(config, [m.state_dict() for m in models])
    with torch.inference_mode():
        out = net.forward(x, p)
        for i, (m, n) in enumerate(zip(models, rows)):
            part = slice(i * p, i * p + n)
            alone = m(x["x_num"][part], x["x_bin"][part], x["x_cat"][part])
            torch.testing.assert_close(out.numeric[part], alone.numeric)
            torch.testing.assert_close(out.binary_logits[part], alone.binary_logits)
            for a, b in zip(out.categorical_logits, alone.categorical_logits):
                torch.testing.assert_close(a[part], b)
            torch.testing.assert_close(out.latent[part], alone.latent)


@pytest.fixture(scope="module")
def fitted():
    """Models fitted stacked (shared preprocessor) and each alone, on tables of different sizes."""
    params = dict(epochs=15, patience=1, min_delta=0.05, latent_weight=0.5, hidden_dims=[16, 8], latent_dim=2,
                  batch_size=32)
    pp = AnomalyAutoencoder(**{**params, "epochs": 1}).fit(pa.concat_tables([_table(500, s) for s in range(6)])
                                                     ).artifact_.preprocessor
    # 14 steps an epoch for the first five (one stack), their own validation rows (the last two: a row-hash split).
    data = [(_table(n, s), _table(150, 50 + s)) for s, n in enumerate([420, 430, 440, 445, 448])]
    data += [(_table(900, 5), None), (_table(700, 6), None), (_table(5, 9), None)]
    calls = []
    compact = stack_fit._compact

    def counting(*args):
        calls.append(len(args[2]))
        return compact(*args)

    mp = pytest.MonkeyPatch()
    mp.setattr(stack_fit, "_compact", counting)
    try:
        stacked = AnomalyAutoencoder(**params).fit_each(data, preprocessor=pp)
    finally:
        mp.undo()
    alone = [AnomalyAutoencoder(**params).fit(X, X_val=V, preprocessor=pp) for X, V in data[:-1]]
    return {"pp": pp, "data": data, "stacked": stacked, "alone": alone, "compactions": calls}


def test_stacked_training_gives_each_model_its_own_training(fitted):
    stacked, alone = fitted["stacked"], fitted["alone"]
    assert isinstance(stacked[-1], ValueError) and "at least 10" in str(stacked[-1])  # too few rows: its own error
    epochs = [len(a.history_) for a in alone]
    assert len(set(epochs)) > 1 and fitted["compactions"], "models stop at different epochs; the stack is compacted"
    for s, a in zip(stacked[:-1], alone):
        assert [h["epoch"] for h in s.history_] == [h["epoch"] for h in a.history_]
        np.testing.assert_allclose([h["val_loss"] for h in s.history_], [h["val_loss"] for h in a.history_],
                                   rtol=1e-4)
        np.testing.assert_allclose([h["train_loss"] for h in s.history_], [h["train_loss"] for h in a.history_],
                                   rtol=1e-4)
        for k, v in a.artifact_.state_dict.items():
            torch.testing.assert_close(s.artifact_.state_dict[k], v, atol=1e-4, rtol=1e-4)
        assert s.threshold_ == pytest.approx(a.threshold_, rel=1e-4)
        assert s.artifact_.reference["latent"]["weight"] == 0.5


def test_stacked_scoring_is_each_models_row_figures(fitted):
    scorers = [RowScorer(a.artifact_) for a in fitted["alone"]]
    members = [ModelTerms.of(s) for s in scorers]
    batch = pa.concat_tables([_table(n, s) for s, n in enumerate([40, 3, 300, 7, 1, 60, 25])])
    which = np.random.default_rng(0).permutation(np.repeat(np.arange(7), [40, 3, 300, 7, 1, 60, 25]))
    groups = [np.flatnonzero(which == i) for i in range(7)]
    raw: dict = {}
    enc = fitted["pp"].transform(batch, raw)
    from aemodel.leakage import row_hashes

    hashes = row_hashes(batch, fitted["pp"].specs, raw)
    assert len(padded_chunks([len(g) for g in groups])) > 1  # the 300-row model does not pad the others
    fig = stacked_figures(members, groups, enc, torch.device("cpu"), hashes)
    for scorer, g in zip(scorers, groups):
        score, err, losses, pct, flagged = scorer.row_figures({k: enc[k][g] for k in enc})
        np.testing.assert_allclose(fig["anomaly_score"][g], score, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fig["recon_error"][g], err, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fig["losses"][g], losses, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fig["score_percentile"][g], pct, rtol=1e-4, atol=1e-4)
        assert (fig["is_anomaly"][g] == flagged).all()
        np.testing.assert_allclose(fig["ref_mean"][g], np.broadcast_to(scorer.ref_mean, (len(g), len(scorer.ref_mean))))
        assert (fig["seen"][g] == scorer.artifact.training_rows.contains(hashes[g])).all()


def test_filters_of_different_sizes_are_looked_up_as_one():
    filters = [BloomFilter.for_rows(n) for n in (10, 1000, 50_000)]
    rng = np.random.default_rng(1)
    added = [rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64) for _ in filters]
    for f, h in zip(filters, added):
        f.add(h)
    which = rng.integers(0, 3, 3000)
    member = np.array([added[w][i % 500] for i, w in enumerate(which)])  # each row's own filter holds it
    is_member = rng.random(3000) < 0.5
    probe = np.where(is_member, member, rng.integers(0, 2**63, 3000).astype(np.uint64))
    found = contains_each(filters, which, probe)
    for i, f in enumerate(filters):
        assert (found[which == i] == f.contains(probe[which == i])).all()
    assert found[is_member].all() and found[~is_member].mean() < 0.5  # the 10-row filter is full: many false hits


def test_percentiles_of_many_histograms_are_each_histograms():
    rng = np.random.default_rng(2)
    hists = [ErrorStats(edges=histogram_edges()).update(rng.lognormal(m, 1, 500)).summary()["histogram"]
             for m in (-1, 0, 2)]
    values = rng.lognormal(0, 2, 1000)
    values[:3] = [np.nan, 0.0, 1e9]
    which = rng.integers(0, 3, 1000)
    arrays = [histogram_arrays(h) for h in hists]
    got = stacked_percentile(arrays[0][0], np.stack([a[1] for a in arrays]), np.array([a[2] for a in arrays]),
                             np.array([a[3] for a in arrays]), which, values)
    for i, h in enumerate(hists):
        np.testing.assert_array_equal(got[which == i], histogram_percentile(h, values[which == i]))
