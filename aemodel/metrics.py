"""Distribution statistics of per-row reconstruction error, as mergeable accumulators.

``ErrorStats`` summarises any number of error values in constant memory: exact count,
mean, std, min, max, exact counts on fixed histogram bins and above the threshold, and
quantiles from a log-bucket sketch with 0.2% relative accuracy. Partial accumulators
from separate blocks merge exactly and in any order to the same result, so statistics
never need all rows in one place and two runs over the same rows report identical
numbers whatever the blocking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

QUANTILES: dict[str, float] = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99_9": 0.999}
RELATIVE_ACCURACY = 0.002
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_MIN_VALUE = 1e-12  # smaller values (and zeros) share the zero bucket
ZERO_BUCKET = -(2**62)


def sketch_add(buckets: dict[int, int], values: np.ndarray) -> dict[int, int]:
    """Count ``values`` (>= 0) into log buckets: bucket k holds (gamma^(k-1), gamma^k].

    The DDSketch mapping (Masson et al., VLDB 2019): any quantile read back is within
    RELATIVE_ACCURACY of a value of the right rank. Written here, vectorised, because the
    ddsketch package adds values one Python call at a time.
    """
    v = np.asarray(values, dtype=np.float64)
    small = v <= _MIN_VALUE
    keys = np.ceil(np.log(v[~small]) / _LOG_GAMMA).astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    out = dict(buckets)
    for k, c in zip(uniq.tolist(), counts.tolist()):
        out[k] = out.get(k, 0) + c
    if small.any():
        out[ZERO_BUCKET] = out.get(ZERO_BUCKET, 0) + int(small.sum())
    return out


SUM_SHIFT = 200  # float32 values are m * 2**(e - 24) with e - 24 >= -172
SUMSQ_SHIFT = 400


def exact_sums(values: np.ndarray) -> tuple[int, int]:
    """Exact sum and sum of squares of float32-representable values, as scaled integers.

    Floating-point sums depend on the order of addition, so partial sums merged in a
    different order (another blocking, another run) would differ in the last bits.
    Integers do not: each value is split into its 24-bit integer mantissa and exponent,
    mantissas are summed per exponent (exactly: float64 holds integers up to 2**53), and
    the per-exponent sums are shifted into one Python integer. Mean and std derived from
    them are correctly rounded and identical however the values were split.
    """
    frac, exp = np.frexp(np.asarray(values, dtype=np.float32).astype(np.float64))
    mant = np.rint(frac * (1 << 24)).astype(np.int64)  # |mant| < 2**24, value = mant * 2**(exp - 24)
    shift = exp.astype(np.int64) - 24 + SUM_SHIFT
    sums = np.bincount(shift, weights=mant.astype(np.float64))
    total = sum(int(c) << i for i, c in enumerate(sums.tolist()) if c)
    sq = mant * mant  # < 2**48: split in 24-bit halves so each bincount stays exact
    sq_shift = 2 * (exp.astype(np.int64) - 24) + SUMSQ_SHIFT
    hi = np.bincount(sq_shift, weights=(sq >> 24).astype(np.float64))
    lo = np.bincount(sq_shift, weights=(sq & ((1 << 24) - 1)).astype(np.float64))
    total_sq = sum(((int(h) << 24) + int(lo_)) << i for i, (h, lo_) in enumerate(zip(hi.tolist(), lo.tolist()))
                   if h or lo_)
    return total, total_sq


def sketch_merge(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for k, c in b.items():
        out[k] = out.get(k, 0) + c
    return out


def sketch_quantiles(buckets: dict[int, int], qs: list[float]) -> list[float | None]:
    """Quantiles (lower rank convention, rank = q * (n - 1)) from log buckets."""
    n = sum(buckets.values())
    if n == 0:
        return [None] * len(qs)
    keys = sorted(buckets)
    cum = np.cumsum([buckets[k] for k in keys])
    out: list[float | None] = []
    for q in qs:
        i = int(np.searchsorted(cum, q * (n - 1), side="right"))
        k = keys[min(i, len(keys) - 1)]
        out.append(0.0 if k == ZERO_BUCKET else 2.0 * _GAMMA**k / (_GAMMA + 1.0))
    return out


def histogram_edges(lo: float = 1e-4, hi: float = 1e3, per_decade: int = 10) -> list[float]:
    """Fixed, log-spaced bin edges for reconstruction error.

    ``recon_error`` is normalised (1.0 = the error of a typical validation row, see
    ``aemodel.losses``), so one fixed grid suits every model and makes the
    histograms of any two runs, models or nights directly comparable. Values below
    ``lo`` (e.g. exact zeros) count as ``underflow``, above ``hi`` as ``overflow``.
    """
    decades = math.log10(hi) - math.log10(lo)
    return np.logspace(math.log10(lo), math.log10(hi), int(round(decades * per_decade)) + 1).tolist()


def histogram_percentile(hist: dict, values: np.ndarray) -> np.ndarray:
    """Percentile (0-100) of each value within the distribution a histogram summarises.

    The share of the histogram's rows below the value, interpolating linearly inside the
    value's bin (log-spaced bins are narrow, so this is close to the exact rank);
    underflow counts as below every bin, overflow as above. NaN stays NaN.

    Args:
        hist: ``ErrorStats.summary()["histogram"]`` (edges, counts, underflow, overflow).
        values: Scores to place.
    """
    edges, counts, under, over = histogram_arrays(hist)
    return stacked_percentile(edges, counts[None], under[None], over[None], np.zeros(np.shape(values), np.int64),
                              values)


def histogram_arrays(hist: dict) -> tuple[np.ndarray, ...]:
    """A histogram's edges, counts, underflow and overflow as float64 arrays (the last two of shape [])."""
    return (np.asarray(hist["edges"], dtype=np.float64), np.asarray(hist["counts"], dtype=np.float64),
            np.float64(hist.get("underflow", 0)), np.float64(hist.get("overflow", 0)))


def stacked_percentile(edges: np.ndarray, counts: np.ndarray, under: np.ndarray, over: np.ndarray,
                       which: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``histogram_percentile`` of each value within histogram ``which[i]`` of H on one grid of ``edges``.

    Args:
        edges: [n_bins + 1] the histograms' shared edges.
        counts, under, over: [H, n_bins], [H], [H] each histogram's counts, underflow, overflow.
        which: Per value, its histogram.
        values: Scores to place.
    """
    v = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    under, over = np.asarray(under, dtype=np.float64), np.asarray(over, dtype=np.float64)
    total = (counts.sum(axis=1) + under + over)[which]
    below = under[:, None] + np.concatenate([np.zeros((len(counts), 1)), np.cumsum(counts, axis=1)], axis=1)
    i = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, counts.shape[1] - 1)
    frac = np.clip((v - edges[i]) / (edges[i + 1] - edges[i]), 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a histogram of no rows: NaN below
        pct = (below[which, i] + frac * counts[which, i]) / total
        pct = np.where(v < edges[0], under[which] / total * (v > 0), pct)
        pct = np.where(v > edges[-1], (total - over[which]) / total, pct)  # at least all but overflow
    return np.where(np.isnan(v) | (total == 0), np.nan, 100.0 * pct)


@dataclass
class ErrorStats:
    """Mergeable summary of error values (see module docstring)."""

    edges: list[float]
    threshold: float | None = None
    count: int = 0
    sum_scaled: int = 0
    """Exact sum of the values times 2**SUM_SHIFT (see ``exact_sums``)."""
    sumsq_scaled: int = 0
    """Exact sum of squares times 2**SUMSQ_SHIFT."""
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0
    above: int = 0
    underflow: int = 0
    overflow: int = 0
    bins: list[int] = field(default_factory=list)
    sketch: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bins:
            self.bins = [0] * (len(self.edges) - 1)

    def update(self, values: np.ndarray) -> ErrorStats:
        """Add a batch of values (in place); non-finite values are only counted."""
        v = np.asarray(values, dtype=np.float32).astype(np.float64)  # stored errors are float32
        finite = np.isfinite(v)
        self.nonfinite += int((~finite).sum())
        v = v[finite]
        if v.size == 0:
            return self
        total, total_sq = exact_sums(v)
        other = ErrorStats(edges=self.edges, threshold=self.threshold, count=int(v.size), sum_scaled=total,
                           sumsq_scaled=total_sq, min=float(v.min()), max=float(v.max()))
        edges = np.asarray(self.edges)
        other.underflow = int((v < edges[0]).sum())
        other.overflow = int((v > edges[-1]).sum())
        other.bins = np.histogram(v, bins=edges)[0].astype(int).tolist()
        if self.threshold is not None:
            other.above = int((v > self.threshold).sum())
        other.sketch = sketch_add({}, v)
        return self.merge(other)

    def merge(self, other: ErrorStats) -> ErrorStats:
        """Combine ``other`` into this accumulator (in place) and return it."""
        if other.edges != self.edges:
            raise ValueError("cannot merge error statistics with different histogram edges")
        self.count += other.count
        self.sum_scaled += other.sum_scaled
        self.sumsq_scaled += other.sumsq_scaled
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.nonfinite += other.nonfinite
        self.above += other.above
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.bins = [a + b for a, b in zip(self.bins, other.bins)]
        self.sketch = sketch_merge(self.sketch, other.sketch)
        return self

    @property
    def mean(self) -> float | None:
        if not self.count:
            return None
        return float(Fraction(self.sum_scaled, self.count << SUM_SHIFT))

    @property
    def std(self) -> float | None:
        """Population standard deviation, from exact sums (correctly rounded)."""
        if not self.count:
            return None
        mean = Fraction(self.sum_scaled, self.count << SUM_SHIFT)
        var = Fraction(self.sumsq_scaled, self.count << SUMSQ_SHIFT) - mean * mean
        return math.sqrt(max(float(var), 0.0))

    def quantiles(self, qs: list[float]) -> list[float | None]:
        return sketch_quantiles(self.sketch, qs)

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
            "mean": self.mean,
            "std": self.std,
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


def auroc_from_sketches(positive: dict[int, int], negative: dict[int, int]) -> float:
    """AUROC from the log-bucket sketches of positives' and negatives' scores.

    P(positive > negative) + P(tie)/2 where values in one bucket (0.2% wide) count as
    ties, so the result is within that resolution of the exact AUROC, and both sketches
    merge across blocks: no rows need to be collected.

    Raises:
        ValueError: one class is empty.
    """
    n_pos, n_neg = sum(positive.values()), sum(negative.values())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative labels")
    neg_below, total = 0, 0.0
    for k in sorted(set(positive) | set(negative)):
        p, n = positive.get(k, 0), negative.get(k, 0)
        total += p * (neg_below + 0.5 * n)
        neg_below += n
    return total / (n_pos * n_neg)
