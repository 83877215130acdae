"""The marginal term: counts, the tail formula, missing cells, merging workers, calibration = scoring."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from aemodel.marginal import (BINS, marginal_counts, marginal_distance, marginal_fit, marginal_tensors,
                              stored_counts)


def _batch(x_num, x_bin=None, x_cat=None, observed=None):
    n = len(x_num)
    x_bin = np.zeros((n, 0), np.float32) if x_bin is None else x_bin
    x_cat = np.zeros((n, 0), np.int64) if x_cat is None else x_cat
    width = x_num.shape[1] + x_bin.shape[1] + x_cat.shape[1]
    observed = np.ones((n, width), np.float32) if observed is None else observed
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
            {"x_num": x_num.astype(np.float32), "x_bin": x_bin.astype(np.float32), "x_cat": x_cat,
             "observed": observed}.items()}


def _score(batch, marginal):
    return marginal_distance(batch["x_num"], batch["x_bin"], batch["x_cat"], batch["observed"],
                             *marginal_tensors(marginal, "cpu")).numpy()


def test_numeric_cells_score_their_two_sided_tail_and_binary_and_categorical_their_frequency():
    rng = np.random.default_rng(0)
    z = rng.lognormal(size=(4000, 1))  # skewed: one long right tail
    z = (z - z.mean()) / z.std()
    cats = rng.choice(3, size=(4000, 1), p=[0.7, 0.29, 0.01])
    bins_ = (rng.random((4000, 1)) < 0.1).astype(np.float32)
    train = _batch(z, bins_, cats)
    m = marginal_fit(marginal_counts([train], 1, 1, [3], clip=10.0), 1, 1, [3], clip=10.0, weight=0.5)
    n = 4000
    table, offsets, _, bins = marginal_tensors(m, "cpu")
    assert bins == BINS == m["bins"]
    nll = table.numpy() * m["scale"]
    # Binary and categorical: -log of the +1-smoothed training frequency.
    counts = np.bincount(cats[:, 0], minlength=3)
    np.testing.assert_allclose(nll[BINS + 2:], -np.log((counts + 1) / (n + 1)), rtol=1e-5)
    np.testing.assert_allclose(nll[BINS:BINS + 2], -np.log((np.bincount(bins_[:, 0].astype(int)) + 1) / (n + 1)),
                               rtol=1e-5)
    # Numeric: the empirical two-sided tail, with the values of a probe's bin counted on both sides.
    probe = np.quantile(z, [0.001, 0.02, 0.5, 0.98, 0.999])
    bin_of = lambda v: np.clip(np.floor((v + 10.0) * BINS / 20.0), 0, BINS - 1)  # noqa: E731
    exact = [-np.log(min(1.0, 2 * min(((bin_of(z) <= bin_of(v)).sum() + 1) / (n + 1),
                                      ((bin_of(z) >= bin_of(v)).sum() + 1) / (n + 1)))) for v in probe]
    got = _score(_batch(probe[:, None], np.zeros((5, 1)), np.zeros((5, 1), np.int64),
                        np.array([[1, 0, 0]] * 5, np.float32)), m) * m["scale"]
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    assert got[2] == pytest.approx(0.0, abs=1e-6)  # the median is not rare
    assert got[4] > got[3] > 3.0  # the long right tail: rarer the further out
    # Beyond anything seen in training (inside the clip): the rarest value, one in n + 1 on either side.
    y = rng.normal(size=(1000, 1))
    m1 = marginal_fit(marginal_counts([_batch(y)], 1, 0, [], clip=10.0), 1, 0, [], clip=10.0, weight=0.5)
    beyond = _score(_batch(np.array([[y.max() + 1], [y.min() - 1]])), m1) * m1["scale"]
    np.testing.assert_allclose(beyond, -np.log(2 / 1001), rtol=1e-5)


def test_a_training_row_scores_1_on_average_missing_cells_are_skipped_and_workers_merge():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3000, 3))
    cats = rng.choice(4, size=(3000, 2))
    whole = _batch(z, None, cats)
    counts = marginal_counts([whole], 3, 0, [4, 4], clip=10.0)
    halves = [_batch(z[:1200], None, cats[:1200]), _batch(z[1200:], None, cats[1200:])]
    merged = sum(marginal_counts([h], 3, 0, [4, 4], clip=10.0) for h in halves)  # as the all-reduce sums them
    assert torch.equal(counts, merged) and float(counts[:BINS].sum()) == 3000
    m = marginal_fit(counts, 3, 0, [4, 4], clip=10.0, weight=0.5)
    # Stored compactly (one short string per column) and read back exactly.
    np.testing.assert_array_equal(np.concatenate(stored_counts(m)), counts.numpy())
    assert [len(c) for c in stored_counts(m)] == [BINS] * 3 + [4, 4] and max(len(c) for c in m["counts"]) < 2000
    assert _score(whole, m).mean() == pytest.approx(1.0, rel=1e-5)  # every cell observed: exactly 1
    # A missing cell neither counts nor scores: the row's mean over its other cells.
    observed = np.ones((1, 5), np.float32)
    observed[0, 0] = 0
    row = _batch(np.array([[50.0, 0.1, -0.2]]), None, cats[:1], observed)
    assert _score(row, m)[0] == pytest.approx(np.mean([
        _score(_batch(np.array([[0.0, 0.1, -0.2]]), None, cats[:1], np.eye(5, dtype=np.float32)[[j]]), m)[0]
        for j in range(1, 5)]), rel=1e-5)
    skipped = marginal_counts([_batch(z[:10], None, cats[:10], np.zeros((10, 5), np.float32))], 3, 0, [4, 4], 10.0)
    assert float(skipped.sum()) == 0.0


def test_the_marginal_term_is_calibrated_and_scored_the_same_and_needs_format_4():
    """anomaly_score = recon_error + m * marginal_distance, in calibration and in scoring."""
    from aemodel import ModelArtifact, RowScorer
    from aemodel.artifact import format_version
    from aemodel.training import validation_reference
    from tests.test_diagnostics_leakage import _BatchSource, _tiny_model_and_data

    pp, cfg, model, t = _tiny_model_and_data()
    enc = pp.transform(t)
    batches = _BatchSource(enc, rows_per_batch=150).iter_torch_batches(0, None, 0)  # counts must merge
    marginal = marginal_fit(marginal_counts(batches, cfg.n_numeric, cfg.n_binary, cfg.category_sizes, 10.0),
                            cfg.n_numeric, cfg.n_binary, cfg.category_sizes, 10.0, weight=0.5)
    ref, thr = validation_reference(model, _BatchSource(enc, 150), torch.device("cpu"), torch.tensor(pp.baselines),
                                    0.9, pp.constant_outputs(), [s.name for s in pp.specs], scale_floor=0.05,
                                    marginal=marginal)
    art = ModelArtifact(model_config=cfg, preprocessor=pp, state_dict=model.state_dict(), threshold=thr,
                        reference=ref, history=[])
    scored = RowScorer(art).score_table(t)
    rare = (scored["anomaly_score"] - scored["recon_error"]) / 0.5
    observed = enc["observed"]
    assert rare.min() >= 0 and rare.mean() == pytest.approx(ref["marginal"]["validation_mean_distance"], rel=1e-4)
    if observed.min() > 0:  # every cell observed: the training rows average exactly 1
        assert rare.mean() == pytest.approx(1.0, rel=1e-4)
    assert scored["anomaly_score"].mean() == pytest.approx(ref["mean"], rel=1e-5)  # the calibrated distribution
    np.testing.assert_array_equal(scored["is_anomaly"], scored["anomaly_score"] > thr["value"])
    assert format_version(ref) == 4
    # The same rows with one value far beyond anything in training: each scores at least as high, most higher.
    extreme = t.set_column(0, t.schema[0].name, pa.array(np.full(t.num_rows, 1e6), t.schema[0].type))
    far = RowScorer(art).score_table(extreme)
    far_rare = (far["anomaly_score"] - far["recon_error"]) / 0.5
    assert np.all(far_rare >= rare - 1e-5) and (far_rare > rare + 0.1).mean() > 0.9


def test_one_read_of_the_training_rows_feeds_the_latent_and_marginal_sums():
    """After training, a streamed shard is read once for both terms, with the sums of separate passes."""
    from aemodel.marginal import MarginalCounter
    from aemodel.terms import LatentSample, LatentSums, latent_codes, latent_sums, one_pass
    from tests.test_diagnostics_leakage import _BatchSource, _tiny_model_and_data

    pp, cfg, model, t = _tiny_model_and_data()
    enc = pp.transform(t)
    batches = list(_BatchSource(enc, rows_per_batch=150).iter_torch_batches(0, None, 0))
    reads = []

    def stream():  # a streamed shard: each batch read as it is asked for
        for b in batches:
            reads.append(1)
            yield b

    sums, sample = LatentSums(model, cfg.latent_dim), LatentSample(model, max_rows=100, seed=3)
    counter = MarginalCounter(cfg.n_numeric, cfg.n_binary, cfg.category_sizes, 10.0)
    one_pass(stream(), [sums, sample, counter])
    assert len(reads) == len(batches) > 1
    np.testing.assert_allclose(sums.result(), latent_sums(model, batches, cfg.latent_dim), rtol=1e-12)
    np.testing.assert_array_equal(sample.result(), latent_codes(model, batches, max_rows=100, seed=3))
    assert torch.equal(counter.counts, marginal_counts(batches, cfg.n_numeric, cfg.n_binary, cfg.category_sizes, 10.0))
    assert counter.counts.sum() == enc["observed"].sum()
    one_pass(stream(), [])  # nothing to gather: the rows are not read
    assert len(reads) == len(batches)
