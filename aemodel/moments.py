"""Mergeable moments of a numeric column and the signed-log transform for skewed columns.

Preprocessing statistics are computed per batch and merged (``aemodel.preprocess``), so
the moments here merge exactly: count, mean and the sums of the 2nd, 3rd and 4th powers of the
deviations.
"""

from __future__ import annotations

import math

import numpy as np


def signed_log(v: np.ndarray) -> np.ndarray:
    """``sign(v) * log1p(|v|)``: compresses heavy tails on both sides, keeps 0 and the order of values."""
    return np.sign(v) * np.log1p(np.abs(v))


def moments(v: np.ndarray) -> dict:
    """Count, mean and the 2nd, 3rd and 4th central moment sums of finite values (mergeable)."""
    n = int(v.size)
    if not n:
        return {"n": 0, "mean": 0.0, "m2": 0.0, "m3": 0.0, "m4": 0.0}
    with np.errstate(over="ignore", invalid="ignore"):  # values near float max: inf, refused by Preprocessor.fit
        mean = float(v.mean())
        d = v - mean
        d2 = d * d
        return {"n": n, "mean": mean, "m2": float(d2.sum()), "m3": float((d2 * d).sum()),
                "m4": float((d2 * d2).sum())}


def merge_moments(x: dict, y: dict) -> dict:
    """Moments of the union of two samples (Chan et al.; Pebay 2008 for the third and fourth)."""
    na, nb = x["n"], y["n"]
    n = na + nb
    if na == 0 or nb == 0:
        return dict(x if nb == 0 else y)
    delta = y["mean"] - x["mean"]
    m3a, m3b = x.get("m3", 0.0), y.get("m3", 0.0)
    m2 = x["m2"] + y["m2"] + delta * delta * na * nb / n
    m3 = m3a + m3b + delta ** 3 * na * nb * (na - nb) / (n * n) + 3.0 * delta * (na * y["m2"] - nb * x["m2"]) / n
    m4 = (x.get("m4", 0.0) + y.get("m4", 0.0) + delta ** 4 * na * nb * (na * na - na * nb + nb * nb) / n ** 3
          + 6.0 * delta * delta * (na * na * y["m2"] + nb * nb * x["m2"]) / (n * n)
          + 4.0 * delta * (na * m3b - nb * m3a) / n)
    return {"n": n, "mean": x["mean"] + delta * nb / n, "m2": m2, "m3": m3, "m4": m4}


def skewness(moments: dict) -> float:
    """Sample skewness (population formula) from ``moments``; 0 for fewer than 3 values or no spread."""
    n, m2 = moments["n"], moments["m2"]
    if n < 3 or m2 <= 0:
        return 0.0
    return float(math.sqrt(n) * moments.get("m3", 0.0) / m2 ** 1.5)


def kurtosis(moments: dict) -> float:
    """Sample kurtosis (population formula, 3 for a normal column) from ``moments``; 3 without enough
    values, spread or a fourth moment (statistics from before it was kept)."""
    n, m2 = moments["n"], moments["m2"]
    if n < 4 or m2 <= 0 or "m4" not in moments:
        return 3.0
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(n * moments["m4"] / (m2 * m2))
    return value if math.isfinite(value) else 3.0  # a fourth power past float max says nothing
