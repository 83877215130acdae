"""Distribution statistics of per-row reconstruction error, as mergeable accumulators.

``ErrorStats`` summarises any number of error values in constant memory: exact count,
mean, std, min, max, exact counts on fixed histogram bins and above the threshold, and
a relative-error quantile sketch (Apache DataSketches REQ, high-rank-accuracy mode, so
tail quantiles such as p99.9 are the precise ones). Partial accumulators from separate
blocks merge exactly, so statistics never need all rows in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from datasketches import req_floats_sketch

QUANTILES: dict[str, float] = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99_9": 0.999}
SKETCH_K = 24  # REQ section size: ~0.1% rank error near the top ranks, ~20 KB sketches


def histogram_edges(lo: float = 1e-4, hi: float = 1e3, per_decade: int = 10) -> list[float]:
    """Fixed, log-spaced bin edges for reconstruction error.

    ``recon_error`` is normalised (1.0 = no better than predicting the training
    distribution of each column), so one fixed grid suits every model and makes the
    histograms of any two runs, models or nights directly comparable. Values below
    ``lo`` (e.g. exact zeros) count as ``underflow``, above ``hi`` as ``overflow``.
    """
    decades = math.log10(hi) - math.log10(lo)
    return np.logspace(math.log10(lo), math.log10(hi), int(round(decades * per_decade)) + 1).tolist()


@dataclass
class ErrorStats:
    """Mergeable summary of error values (see module docstring)."""

    edges: list[float]
    threshold: float | None = None
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0
    above: int = 0
    underflow: int = 0
    overflow: int = 0
    bins: list[int] = field(default_factory=list)
    sketch: bytes = b""

    def __post_init__(self) -> None:
        if not self.bins:
            self.bins = [0] * (len(self.edges) - 1)

    def update(self, values: np.ndarray) -> ErrorStats:
        """Add a batch of values (in place); non-finite values are only counted."""
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        self.nonfinite += int((~finite).sum())
        v = v[finite]
        if v.size == 0:
            return self
        other = ErrorStats(edges=self.edges, threshold=self.threshold, count=int(v.size),
                           mean=float(v.mean()), min=float(v.min()), max=float(v.max()))
        other.m2 = float(((v - other.mean) ** 2).sum())
        edges = np.asarray(self.edges)
        other.underflow = int((v < edges[0]).sum())
        other.overflow = int((v > edges[-1]).sum())
        other.bins = np.histogram(v, bins=edges)[0].astype(int).tolist()
        if self.threshold is not None:
            other.above = int((v > self.threshold).sum())
        sk = req_floats_sketch(k=SKETCH_K, is_hra=True)
        sk.update(v.astype(np.float32))
        other.sketch = sk.serialize()
        return self.merge(other)

    def merge(self, other: ErrorStats) -> ErrorStats:
        """Combine ``other`` into this accumulator (in place) and return it."""
        if other.edges != self.edges:
            raise ValueError("cannot merge error statistics with different histogram edges")
        n = self.count + other.count
        if other.count:
            delta = other.mean - self.mean
            self.mean += delta * other.count / n
            self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.count = n
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.nonfinite += other.nonfinite
        self.above += other.above
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.bins = [a + b for a, b in zip(self.bins, other.bins)]
        if other.sketch:
            if self.sketch:
                sk = req_floats_sketch.deserialize(self.sketch)
                sk.merge(req_floats_sketch.deserialize(other.sketch))
                self.sketch = sk.serialize()
            else:
                self.sketch = other.sketch
        return self

    def quantiles(self, qs: list[float]) -> list[float | None]:
        if not self.sketch:
            return [None] * len(qs)
        return [float(x) for x in req_floats_sketch.deserialize(self.sketch).get_quantiles(qs)]

    def summary(self, extra_quantiles: dict[str, float] | None = None) -> dict:
        """JSON-ready statistics: count, moments, quantiles, histogram, threshold counts.

        Args:
            extra_quantiles: More named quantiles to report beside the standard ones.
        """
        empty = self.count == 0
        wanted = {**QUANTILES, **(extra_quantiles or {})}
        qs = self.quantiles(list(wanted.values()))
        return {
            "count": self.count,
            "nonfinite": self.nonfinite,
            "mean": None if empty else self.mean,
            "std": None if empty else math.sqrt(self.m2 / self.count),
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "quantiles": dict(zip(wanted, qs)),
            "histogram": {"edges": self.edges, "counts": self.bins,
                          "underflow": self.underflow, "overflow": self.overflow},
            "threshold": self.threshold,
            "above_threshold": None if self.threshold is None else self.above,
            "above_threshold_fraction": None if self.threshold is None or empty else self.above / self.count,
        }


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half).

    Raises:
        ValueError: labels are all one class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank within each run of tied scores (Mann-Whitney U).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
