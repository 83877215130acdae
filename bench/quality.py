"""Anomaly-detection quality on real data: the default autoencoder vs PCA and IsolationForest.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/quality.py [--seeds 20]

Data sets bundled with scikit-learn (no download): breast cancer (30 numeric columns),
wine (13 numeric columns), digits (64 bounded pixel columns, several constant: image-like)
and a mixed-type table built from the diabetes data (numeric columns, `sex` as a binary
column, and the BMI quartile as a categorical string column). In each, one class is held
out as the anomaly:

* breast cancer: malignant tumours are anomalies, benign are normal;
* wine: cultivar 2 is the anomaly, cultivars 0 and 1 are normal;
* digits: the digit 0 is the anomaly, the other nine digits are normal;
* diabetes (mixed): the top 10% disease progression is the anomaly.

Protocol per data set and seed: 60% of the normal rows train every method; the other 40%
plus all anomalies are the test set. The autoencoder is trained by ``jobs.train.run`` with
its defaults (only ``seed`` is set) and scored with the same ``RowScorer`` as
``aescore score``. PCA: standardised with training statistics, as many components as
explain 90% of the training variance, score = squared reconstruction error.
IsolationForest: scikit-learn defaults (100 trees), score = -score_samples. For context
only, three more detectors on the same standardised splits (Mahalanobis distance with a
Ledoit-Wolf covariance, mean distance to the 5 nearest training rows, a 2-component tied
Gaussian mixture): where none of them clearly beats IsolationForest either, a table is at
its ceiling for unsupervised detectors. Reported:
mean AUROC over seeds (and its range), and per data set the paired per-seed difference
autoencoder minus each baseline (mean +/- standard error, seeds won): with 5 seeds the
seed-to-seed spread on wine (0.91-0.99) swamps a 0.02 difference, hence 20 by default.
``--variant NAME:key=value,...`` adds a column for an autoencoder trained with those
``TrainConfig`` options on the same splits and seeds (e.g. ``--variant
val10:val_fraction=0.1`` measures the defaults against a 10% validation split side by
side). Final line, for the defaults:
``quality: ratio=<worst AE/best-baseline AUROC ratio> target=1.0 ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.suite.common import (auroc_cell, autoencoder_scores, iforest_scores,  # noqa: E402
                                paired_difference, parse_variant, pca_scores, split)


def load_sets() -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """name -> (features, is_anomaly)."""
    from sklearn import datasets

    out = {}
    bc = datasets.load_breast_cancer(as_frame=True)
    out["breast_cancer"] = (bc.data, (bc.target == 0).to_numpy())  # 0 = malignant
    wine = datasets.load_wine(as_frame=True)
    out["wine"] = (wine.data, (wine.target == 2).to_numpy())
    dg = datasets.load_digits(as_frame=True)
    out["digits"] = (dg.data.astype("float32"), (dg.target == 0).to_numpy())
    db = datasets.load_diabetes(as_frame=True, scaled=False)
    df = db.data.copy()
    df["sex"] = (df["sex"] == df["sex"].max()).astype("int8")  # two values: a binary column
    df["bmi_band"] = pd.qcut(df["bmi"], 4, labels=["low", "mid", "high", "top"]).astype(str)
    out["diabetes_mixed"] = (df, (db.target > np.quantile(db.target, 0.9)).to_numpy())
    return out


def numeric_matrix(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One-hot strings, standardise with training statistics (constant columns stay 0)."""
    both = pd.get_dummies(pd.concat([train, test]), dtype=float)
    a, b = both.iloc[: len(train)].to_numpy(float), both.iloc[len(train):].to_numpy(float)
    mu, sd = a.mean(0), a.std(0)
    sd[sd == 0] = 1.0
    return (a - mu) / sd, (b - mu) / sd


def reference_scores(a: np.ndarray, b: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Other classical detectors, printed for context only (the target is PCA and IsolationForest).

    They show where a table's ceiling lies for unsupervised methods: if none of them clearly
    beats IsolationForest either, a tie there is the data, not the autoencoder.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import NearestNeighbors

    return {
        "mahalanobis": LedoitWolf().fit(a).mahalanobis(b),
        "knn5": NearestNeighbors(n_neighbors=5).fit(a).kneighbors(b)[0].mean(1),
        "gmm2": -GaussianMixture(2, covariance_type="tied", random_state=seed).fit(a).score_samples(b),
    }


REFERENCE_NAMES = {"mahalanobis": "Mahalanobis (Ledoit-Wolf)", "knn5": "kNN distance (k=5)",
                   "gmm2": "Gaussian mixture (2, tied)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--sets", default="breast_cancer,wine,digits,diabetes_mixed")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... extra autoencoder column")
    args = ap.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)
    from aemodel import auroc
    # No Ray start: on one machine aescore trains without Ray (jobs/training/local.py).
    t0 = time.perf_counter()
    sets = load_sets()
    table, warnings = [], []
    for name in args.sets.split(","):
        x, y = sets[name]
        aucs: dict[str, list[float]] = {"autoencoder": [], "pca": [], "iforest": [], **{v: [] for v in variants},
                                        **{r: [] for r in REFERENCE_NAMES}}
        for seed in range(args.seeds):
            train, test, y_test = split(x, y, seed)
            with tempfile.TemporaryDirectory() as tmp:
                ae, _, metrics = autoencoder_scores(train, test, seed, tmp)
            warnings += [f"{name} seed {seed}: {c['check']}: {c['message']}"
                         for c in metrics["diagnostics"] if c["status"] != "ok"]
            aucs["autoencoder"].append(auroc(ae, y_test))
            a, b = numeric_matrix(train, test)  # one standardised copy for every classical detector
            aucs["pca"].append(auroc(pca_scores(a, b), y_test))
            aucs["iforest"].append(auroc(iforest_scores(a, b, seed), y_test))
            for r, scores in reference_scores(a, b, seed).items():
                aucs[r].append(auroc(scores, y_test))
            for v, options in variants.items():
                with tempfile.TemporaryDirectory() as tmp:
                    aucs[v].append(auroc(autoencoder_scores(train, test, seed, tmp, options)[0], y_test))
        table.append((name, x.shape, int(y.sum()), {k: np.array(v) for k, v in aucs.items()}))

    columns = ("autoencoder", "pca", "iforest", *variants)
    print("\n| data set | rows x cols | anomalies | autoencoder | PCA | IsolationForest |"
          + "".join(f" autoencoder {v} |" for v in variants))
    print("|---|---|---|---|---|---|" + "---|" * len(variants))
    ratios = []
    for name, shape, n_anom, res in table:
        cells = [auroc_cell(res[k]) for k in columns]
        print(f"| {name} | {shape[0]} x {shape[1]} | {n_anom} | " + " | ".join(cells) + " |")
        ratios.append(res["autoencoder"].mean() / max(res["pca"].mean(), res["iforest"].mean()))
    # Same split and seed for every method, so the per-seed differences show whether a
    # lead is larger than the seed-to-seed noise (mean +/- its standard error).
    for name, _, _, res in table:
        print(f"paired {name}: " + "; ".join(paired_difference(res["autoencoder"] - res[b], b) for b in ("pca", "iforest")))
    print("\nReference detectors (context, not the target), same splits:\n\n| data set | "
          + " | ".join(REFERENCE_NAMES.values()) + " |\n|---|" + "---|" * len(REFERENCE_NAMES))
    for name, _, _, res in table:
        print(f"| {name} | " + " | ".join(auroc_cell(res[r]) for r in REFERENCE_NAMES) + " |")
    for name, _, _, res in table:
        best = max(REFERENCE_NAMES, key=lambda r: res[r].mean())
        print(f"reference {name}: best {best}; " + paired_difference(res["autoencoder"] - res[best], best))
    for w in warnings:
        print("diagnostic:", w)
    wins = sum(r > 1 for r in ratios)
    print(f"quality: ratio={min(ratios):.3f} target=1.0 wins={wins}/{len(ratios)} seeds={args.seeds} "
          f"wall_s={time.perf_counter() - t0:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
