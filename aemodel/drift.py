"""Drift between two reconstruction-error distributions given as fixed-edge histograms.

Every histogram in this project uses the same log-spaced edges (``histogram_edges``), plus
an underflow and an overflow count, so any two runs, nights or the model's validation
reference compare bin by bin. The statistics below are computed on those bins: KS is the
largest CDF gap at a bin edge (a lower bound of the exact KS), Wasserstein-1 integrates
the CDF gap across bins (the overflow bin is not integrated), PSI uses the bins directly.
"""

from __future__ import annotations

import math

import numpy as np

PSI_EPSILON = 1e-4  # keeps empty bins from making PSI infinite
NOISE_LEVEL = 0.999
"""An alert limit counts only where tonight's PSI or KS also exceeds what two samples of
these sizes from one distribution reach with this probability (``noise_levels``)."""
NOISE_DRAWS = 4000


def _probabilities(hist: dict) -> np.ndarray:
    counts = np.array([hist["underflow"], *hist["counts"], hist["overflow"]], dtype=np.float64)
    total = counts.sum()
    return counts / total if total else counts


def psi(current: dict, reference: dict) -> float:
    """Population stability index; > 0.1 moderate, > 0.2 large shift (common rule of thumb)."""
    return float(_psi_rows(_probabilities(current), _probabilities(reference)))


def ks(current: dict, reference: dict) -> float:
    """Largest gap between the two CDFs at the bin edges."""
    return float(np.abs(np.cumsum(_probabilities(current)) - np.cumsum(_probabilities(reference))).max())


def wasserstein(current: dict, reference: dict) -> float:
    """Wasserstein-1 distance: the area between the CDFs, bin by bin (0 to the last edge)."""
    edges = np.asarray(current["edges"], dtype=np.float64)
    widths = np.diff(np.concatenate([[0.0], edges]))  # underflow spans [0, first edge]
    gap = np.abs(np.cumsum(_probabilities(current)) - np.cumsum(_probabilities(reference)))[: len(widths)]
    return float((gap * widths).sum())


def _psi_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = p + PSI_EPSILON, q + PSI_EPSILON
    p, q = p / p.sum(axis=-1, keepdims=True), q / q.sum(axis=-1, keepdims=True)
    return ((p - q) * np.log(p / q)).sum(axis=-1)


def noise_levels(current: dict, reference: dict, n: int, m: int) -> dict:
    """The ``NOISE_LEVEL`` quantiles of PSI and KS between two samples of ``n`` and ``m`` rows of one distribution.

    On a few dozen rows PSI over these bins is large by chance alone (most bins hold one
    or no row, and the smoothing of empty bins inflates it further), and no closed form
    holds there, so the quantiles come from a parametric bootstrap: ``NOISE_DRAWS`` pairs
    of multinomial samples from the two histograms pooled, with a fixed seed so a report is
    reproducible. A few milliseconds per comparison.
    """
    if n <= 0 or m <= 0:
        return {"psi_noise": None, "ks_noise": None}
    pooled = n * _probabilities(current) + m * _probabilities(reference)
    pooled = pooled / pooled.sum()
    rng = np.random.default_rng(0)
    a = rng.multinomial(n, pooled, size=NOISE_DRAWS) / n
    b = rng.multinomial(m, pooled, size=NOISE_DRAWS) / m
    ks_draws = np.abs(np.cumsum(a, axis=1) - np.cumsum(b, axis=1)).max(axis=1)
    return {"psi_noise": float(np.quantile(_psi_rows(a, b), NOISE_LEVEL)),
            "ks_noise": float(np.quantile(ks_draws, NOISE_LEVEL))}


def _relative(current: float | None, reference: float | None) -> float | None:
    if current is None or reference is None or reference == 0:
        return None
    return (current - reference) / abs(reference)


def finite_count(summary: dict) -> int:
    """Rows with a finite score: an ``ErrorStats`` summary's ``count``, or a scoring summary's rows less the
    non-finite ones."""
    if "count" in summary:
        return summary["count"]
    return summary["row_count"] - summary.get("nonfinite", 0)


def anomaly_rate(summary: dict) -> float | None:
    """The fraction above the threshold, under either name (scoring summaries since format 3: ``anomaly_rate``)."""
    return summary.get("anomaly_rate", summary.get("above_threshold_fraction"))


def compare(current: dict, reference: dict) -> dict:
    """Drift of ``current`` against ``reference`` (``ErrorStats.summary()`` or scoring summary dicts)."""
    if current["histogram"]["edges"] != reference["histogram"]["edges"]:
        raise ValueError("histograms have different edges; they cannot be compared")
    rate, ref_rate = anomaly_rate(current), anomaly_rate(reference)
    observed_ref_rate = ref_rate
    if ref_rate == 0 and finite_count(reference):
        # None of a few dozen validation rows above the threshold says the rate is small, not
        # 0: with 0 no rate could ever alert. Half a row, as in the usual +0.5 correction.
        ref_rate = 0.5 / (finite_count(reference) + 1)
    z = None
    n, m = finite_count(current), finite_count(reference)
    if rate is not None and ref_rate is not None and 0 < ref_rate < 1 and n:
        # How many standard errors tonight's rate lies above the baseline's: a ratio on a
        # handful of rows is noise, not drift. Both rates are samples (the baseline is a few
        # dozen validation rows, or a few nights), so the two-proportion test with the pooled
        # rate; a baseline of unknown size is taken as exact (the one-sample binomial).
        if m:
            pooled = (rate * n + ref_rate * m) / (n + m)
            z = (rate - ref_rate) / math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m)) if 0 < pooled < 1 else None
        else:
            z = (rate - ref_rate) * n / math.sqrt(n * ref_rate * (1 - ref_rate))
    return {
        **noise_levels(current["histogram"], reference["histogram"], n, m),
        "psi": psi(current["histogram"], reference["histogram"]),
        "ks": ks(current["histogram"], reference["histogram"]),
        "wasserstein": wasserstein(current["histogram"], reference["histogram"]),
        "mean_shift": _relative(current.get("mean"), reference.get("mean")),
        "p99_shift": _relative(current["quantiles"].get("p99"), reference["quantiles"].get("p99")),
        "anomaly_rate": rate,
        "reference_anomaly_rate": observed_ref_rate,
        "anomaly_rate_ratio": None if rate is None or not ref_rate else rate / ref_rate,
        "anomaly_rate_z": z,
    }


def pool(summaries: list[dict]) -> dict:
    """One summary-like dict whose histogram and anomaly counts are the sum of ``summaries``."""
    first = summaries[0]["histogram"]
    hist = {"edges": first["edges"], "counts": [0] * len(first["counts"]), "underflow": 0, "overflow": 0}
    count = above = 0
    weighted_mean = 0.0
    for s in summaries:
        h = s["histogram"]
        hist["counts"] = [a + b for a, b in zip(hist["counts"], h["counts"])]
        hist["underflow"] += h["underflow"]
        hist["overflow"] += h["overflow"]
        n = finite_count(s)
        count += n
        above += (anomaly_rate(s) or 0.0) * n
        weighted_mean += (s.get("mean") or 0.0) * n
    p99s = [s["quantiles"].get("p99") for s in summaries if s["quantiles"].get("p99") is not None]
    return {"histogram": hist, "count": count, "mean": weighted_mean / count if count else None,
            "quantiles": {"p99": float(np.median(p99s)) if p99s else None},
            "above_threshold_fraction": above / count if count else None}


def within_noise(drift: dict, psi_limit: float, ks_limit: float) -> list[str]:
    """"PSI" and/or "KS" where the figure crossed its limit but not its noise level, so ``alerts`` left it out."""
    limits = {"psi": psi_limit, "ks": ks_limit}
    return [k.upper() for k in ("psi", "ks")
            if drift.get(f"{k}_noise") is not None and limits[k] < drift[k] <= drift[f"{k}_noise"]]


def alerts(drift: dict, psi_limit: float, ks_limit: float, rate_ratio_limit: float, min_z: float = 3.0
           ) -> list[str]:
    """Human-readable reasons this drift crosses the configured limits (empty: no alert).

    Each needs its limit crossed and the figure beyond sampling noise: PSI and KS above
    their ``noise_levels`` (reports from before those were stored: the limit alone), the
    anomaly-rate ratio above ``rate_ratio_limit`` with ``anomaly_rate_z`` above ``min_z``.
    """
    out = []
    if drift["psi"] > max(psi_limit, drift.get("psi_noise") or 0.0):
        out.append(f"PSI {drift['psi']:.3f} > {psi_limit}")
    if drift["ks"] > max(ks_limit, drift.get("ks_noise") or 0.0):
        out.append(f"KS {drift['ks']:.3f} > {ks_limit}")
    ratio = drift["anomaly_rate_ratio"]
    z = drift.get("anomaly_rate_z")
    if ratio is not None and math.isfinite(ratio) and ratio > rate_ratio_limit and z is not None and z > min_z:
        out.append(f"anomaly rate {drift['anomaly_rate']:.4f} is {ratio:.1f}x the reference's (z={z:.1f})")
    return out
