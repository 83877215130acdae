"""Pieces shared by ``bench/quality.py`` and the suite: splits, aescore runs, classic baselines, cells.

The autoencoder is trained exactly as a user would: the Python API (``AnomalyAutoencoder``,
which trains as ``aescore train`` does) with its defaults (only ``seed`` set, plus any
explicit variant overrides), scored with the same ``RowScorer`` that ``aescore score``
uses. A benchmark must call the code it measures.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd


def split(x: pd.DataFrame, y: np.ndarray, seed: int,
          train_fraction: float = 0.6) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Normal rows only in training, every anomaly in the test set.

    Args:
        x: Feature rows.
        y: True where a row is an anomaly.
        seed: Shuffles the normal rows.
        train_fraction: Fraction of the normal rows that train (and validate) each method.

    Returns:
        (training rows, test rows, test labels): the test rows are the remaining normal
        rows followed by all anomalies.
    """
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(~y)
    rng.shuffle(normal)
    n_train = int(train_fraction * len(normal))
    test = np.concatenate([normal[n_train:], np.flatnonzero(y)])
    return x.iloc[normal[:n_train]], x.iloc[test], y[test]


def pca_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PCA reconstruction error: fit on ``a``, score ``b`` (both standardised).

    As many components as explain 90% of the training variance; score = squared error.
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=0.9, svd_solver="full").fit(a)
    recon = pca.inverse_transform(pca.transform(b))
    return ((b - recon) ** 2).sum(1)


def iforest_scores(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """IsolationForest with scikit-learn defaults (100 trees); score = -score_samples."""
    from sklearn.ensemble import IsolationForest

    return -IsolationForest(random_state=seed).fit(a).score_samples(b)


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, TrainConfig overrides); values parsed as YAML (lists in brackets)."""
    import yaml

    name, _, opts = text.partition(":")
    # Commas inside brackets belong to a list value: hidden_dims=[64,32],epochs=10
    pairs = [kv.split("=", 1) for kv in re.split(r",(?![^\[]*\])", opts) if kv]
    return name, {k.strip(): yaml.safe_load(v) for k, v in pairs}


def autoencoder_scores(train: pd.DataFrame, test: pd.DataFrame, seed: int, workdir: str,
                       options: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train aescore on ``train`` (defaults + ``options``); the test rows' anomaly_score and recon_error, and
    the training metrics.

    Through the Python API (``aemodel.AnomalyAutoencoder``), which trains as ``aescore train``
    does on one Parquet file of ``train`` (the same weights; tests/test_python_api.py).

    Args:
        train: Normal training rows (aescore holds out its own validation rows from them).
        test: Rows to score.
        seed: The ``seed`` option.
        workdir: Unused (the API writes nothing); kept for the callers' signature.
        options: Extra training options (variants); None means the defaults.
    """
    from aemodel import AnomalyAutoencoder

    del workdir
    det = AnomalyAutoencoder(seed=seed, **(options or {})).fit(train)
    scored = det.score_samples(test, top_k=0)
    return scored["anomaly_score"].to_numpy(), scored["recon_error"].to_numpy(), det.metrics_


def auroc_cell(aucs: np.ndarray) -> str:
    """Mean AUROC over seeds with its range, as one table cell."""
    return f"{aucs.mean():.3f} ({aucs.min():.3f}-{aucs.max():.3f})"


def paired_difference(diff: np.ndarray, baseline: str, label: str = "AE") -> str:
    """Per-seed AUROC differences (``label`` - baseline) as mean +/- standard error, seeds won."""
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return (f"{label} - {baseline} = {diff.mean():+.3f} +/- {se:.3f} "
            f"({label} ahead on {int((diff > 0).sum())}/{len(diff)} seeds)")
