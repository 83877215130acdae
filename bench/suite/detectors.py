"""Reference detectors of the suite, all on the same splits as aescore.

Encoding (fitted on the training rows only): string columns are one-hot encoded with the
categories seen in training (an unseen test category is all zeros), booleans become 0/1,
then every column is standardised with training means and standard deviations (constant
columns are left centred, not scaled). The hand-written autoencoder gets the same one-hot
matrix min-max scaled with training minima and maxima instead.

* ``pca``: PCA reconstruction error (components explaining 90% of training variance).
* ``iforest``: scikit-learn IsolationForest, defaults (100 trees), seeded.
* ``knn``: mean Euclidean distance to the 5 nearest training rows.
* ``ecod``: PyOD's ECOD (empirical-CDF outlyingness), defaults.
* ``mlp_ae``: a plain PyTorch MLP autoencoder (``mlp_ae.py``).
* ``pyod_ae``: PyOD's ``AutoEncoder`` at its defaults (64-32 hidden, ReLU, batch norm, dropout
  0.2, weight decay 1e-5, squared error, its own standard scaling) for 50 epochs, seeded: the
  autoencoder a user compares with first.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from bench.suite.common import iforest_scores, pca_scores
from bench.suite.mlp_ae import mlp_ae_scores

REFERENCES: dict[str, str] = {
    "pca": "PCA reconstruction",
    "iforest": "IsolationForest",
    "knn": "kNN distance (k=5)",
    "ecod": "ECOD (PyOD)",
    "mlp_ae": "MLP autoencoder (hand-written)",
    "pyod_ae": "AutoEncoder (PyOD)",
}
"""Reference detector key -> display name, in printing order."""


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(series.dtype) or pd.api.types.is_string_dtype(series.dtype)


def one_hot(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Numbers as they are, booleans as 0/1, strings one-hot with the training categories."""
    cols_a: list[np.ndarray] = []
    cols_b: list[np.ndarray] = []
    for col in train.columns:
        if _is_text(train[col]):
            a, b = train[col].astype(str).to_numpy(), test[col].astype(str).to_numpy()
            for value in sorted(set(a)):
                cols_a.append((a == value).astype(float))
                cols_b.append((b == value).astype(float))
        else:
            cols_a.append(train[col].to_numpy(float))
            cols_b.append(test[col].to_numpy(float))
    return np.column_stack(cols_a), np.column_stack(cols_b)


def standardise(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale both with the statistics of ``a`` (constant columns: scale 1)."""
    mu, sd = a.mean(0), a.std(0)
    sd[sd == 0] = 1.0
    return (a - mu) / sd, (b - mu) / sd


def min_max(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ``a``'s range of each column to [0, 1] (constant columns: range 1); ``b`` may leave it."""
    lo, span = a.min(0), a.max(0) - a.min(0)
    span[span == 0] = 1.0
    return (a - lo) / span, (b - lo) / span


def knn_scores(a: np.ndarray, b: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean distance of each row of ``b`` to its ``k`` nearest rows of ``a``."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(a).kneighbors(b)[0].mean(1)


def ecod_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PyOD ECOD fitted on ``a``; larger is more anomalous."""
    from pyod.models.ecod import ECOD

    return ECOD().fit(a).decision_function(b)


def pyod_ae_scores(a: np.ndarray, b: np.ndarray, seed: int, epochs: int = 50) -> np.ndarray:
    """PyOD's AutoEncoder (defaults, ``epochs`` epochs) fitted on ``a``; larger is more anomalous."""
    from pyod.models.auto_encoder import AutoEncoder

    return AutoEncoder(epoch_num=epochs, random_state=seed, verbose=0).fit(a).decision_function(b)


def reference_scores(train: pd.DataFrame, test: pd.DataFrame, seed: int,
                     mlp_max_epochs: int = 200) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Scores of every reference detector for ``test`` after fitting on ``train``.

    Args:
        train: Normal training rows (as fed to aescore: numbers, booleans, strings).
        test: Rows to score.
        seed: Seeds IsolationForest and the hand-written autoencoder.
        mlp_max_epochs: Epoch cap of the hand-written autoencoder (200; lower only for smoke runs).

    Returns:
        (detector key -> scores of ``test``, detector key -> seconds spent).
    """
    raw_a, raw_b = one_hot(train, test)
    a, b = standardise(raw_a, raw_b)
    runs = {
        "pca": lambda: pca_scores(a, b),
        "iforest": lambda: iforest_scores(a, b, seed),
        "knn": lambda: knn_scores(a, b),
        "ecod": lambda: ecod_scores(a, b),
        "mlp_ae": lambda: mlp_ae_scores(*min_max(raw_a, raw_b), seed=seed, max_epochs=mlp_max_epochs),
        "pyod_ae": lambda: pyod_ae_scores(a, b, seed, epochs=min(50, mlp_max_epochs)),
    }
    scores, seconds = {}, {}
    for key, fn in runs.items():
        t0 = time.perf_counter()
        scores[key] = fn()
        seconds[key] = time.perf_counter() - t0
    return scores, seconds
