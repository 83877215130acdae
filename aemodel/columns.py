"""Per-column drift: each feature's distribution in training against a scoring run's or a night's.

A distribution is, per column in model column order, the counts of its observed values on
the model's own encoding (numeric: ``BINS`` equal bins of the standardised, clipped value,
as the marginal term counts them; binary: 0 and 1; categorical: the vocabulary, the last
entry ``<other>``), the column's missing cells and the rows; numeric columns also keep the
sum and sum of squares of their standardised values, for exact means. Every part is a sum,
so batches, blocks, workers and nights merge by adding (``ColumnCounter``, ``merge``).
Training keeps the training rows' distribution in the artefact (``reference["columns_distribution"]``);
scoring counts its rows in the same pass that scores them.

``compare`` gives per column: PSI (numeric: over ten bins of equal training mass; others
over their values), KS for numeric columns (the largest gap between the two CDFs over the
fine bins) and the Jensen-Shannon distance (base 2, in [0, 1]) for the others, the mean
shift in training standard deviations, the p05/p50/p95 shifts, the missing share before
and after, and the sampling-noise level of PSI, KS and JS for the two row counts (a
parametric bootstrap as for the score, ``aemodel.drift``). A column has drifted when its
PSI is above the limit and above its noise level; ``compare`` ranks them by PSI.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np
import torch

from aemodel.marginal import BINS, _cell_indices, _offsets, _sizes

DEFAULT_PSI_LIMIT = 0.2
"""A column whose PSI exceeds this (and its noise level) has drifted (the common rule of thumb)."""
PSI_BINS = 10
"""Numeric PSI is taken over this many bins of equal training mass."""
NOISE_LEVEL = 0.999
NOISE_DRAWS = 2000
_EPS = 1e-4


def _pack(values: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.asarray(values, dtype="<f8").tobytes(), 9)).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<f8").copy()


class ColumnCounter:
    """Running per-column counts of encoded batches (``add``), their missing cells and numeric sums."""

    def __init__(self, n_numeric: int, n_binary: int, category_sizes: list[int], clip: float):
        self.sizes = _sizes(n_numeric, n_binary, category_sizes)
        self.n_numeric, self.clip = n_numeric, float(clip)
        self.counts = torch.zeros(sum(self.sizes), dtype=torch.float64)
        self.missing = torch.zeros(len(self.sizes), dtype=torch.float64)
        self.sums = torch.zeros(2, n_numeric, dtype=torch.float64)
        self.rows = 0
        self._offsets = _offsets(self.sizes, "cpu")

    def add(self, batch: dict) -> None:
        """Count one encoded batch (``x_num``, ``x_bin``, ``x_cat``, ``observed``; tensors or arrays)."""
        x = [torch.as_tensor(batch[k]).cpu() for k in ("x_num", "x_bin", "x_cat")]
        observed = torch.as_tensor(batch["observed"]).cpu()
        cells = _cell_indices(*x, self._offsets, self.clip).flatten()
        missing = batch.get("missing_cells")  # the preprocessor's count per row: cheaper than scanning ``observed``
        complete = not (missing.any() if missing is not None else bool((observed == 0).any()))
        if complete:  # the common case: a count per cell, no weights, no products
            self.counts += torch.bincount(cells, minlength=len(self.counts))
            num = x[0]
        else:
            self.counts += torch.bincount(cells, weights=observed.double().flatten(), minlength=len(self.counts))
            self.missing += observed.shape[0] - observed.double().sum(0)
            num = x[0] * observed[:, :self.n_numeric]
        # A batch's sums in float32 (torch's cascade sum: about 1e-6 relative, a sixth of the
        # float64 sums' cost), the running totals in float64.
        num = num.float()
        self.sums += torch.stack([num.sum(0), (num * num).sum(0)]).double()
        self.rows += int(observed.shape[0])

    def reduce(self, reduce) -> ColumnCounter:
        """Replace the sums by ``reduce`` of them (their total over workers, as one flat list)."""
        c, k, n = len(self.counts), len(self.missing), self.n_numeric
        flat = reduce([*self.counts.tolist(), *self.missing.tolist(), *self.sums.flatten().tolist(), float(self.rows)])
        self.counts = torch.tensor(flat[:c], dtype=torch.float64)
        self.missing = torch.tensor(flat[c:c + k], dtype=torch.float64)
        self.sums = torch.tensor(flat[c + k:c + k + 2 * n], dtype=torch.float64).reshape(2, n)
        self.rows = int(round(flat[-1]))
        return self

    def state(self) -> tuple:
        """The raw sums (numpy), for adding batches' parts cheaply (``add_state``) before one ``result``."""
        return self.counts.numpy(), self.missing.numpy(), self.sums.numpy(), self.rows

    def add_state(self, state: tuple) -> None:
        """Add another counter's ``state`` (a batch scored elsewhere)."""
        counts, missing, sums, rows = state
        self.counts += torch.from_numpy(counts)
        self.missing += torch.from_numpy(missing)
        self.sums += torch.from_numpy(sums)
        self.rows += int(rows)

    def result(self) -> dict:
        """The distribution as plain data (``merge``-able; compact: each column's counts compressed)."""
        per_column = np.split(self.counts.numpy(), np.cumsum(self.sizes)[:-1])
        return {"bins": BINS, "clip": self.clip, "n_numeric": self.n_numeric, "rows": self.rows,
                "counts": [_pack(c) for c in per_column], "missing": self.missing.tolist(),
                "sum": self.sums[0].tolist(), "sumsq": self.sums[1].tolist()}


def merge(a: dict | None, b: dict | None) -> dict | None:
    """The sum of two distributions of the same model (``ColumnCounter.result``)."""
    if not a or not b:
        return a or b
    return {**a, "rows": a["rows"] + b["rows"],
            "counts": [_pack(_unpack(x) + _unpack(y)) for x, y in zip(a["counts"], b["counts"])],
            "missing": [x + y for x, y in zip(a["missing"], b["missing"])],
            "sum": [x + y for x, y in zip(a["sum"], b["sum"])], "sumsq": [x + y for x, y in zip(a["sumsq"], b["sumsq"])]}


def counter_for(pp) -> ColumnCounter:
    """A ``ColumnCounter`` for the fitted preprocessing ``pp``."""
    return ColumnCounter(len(pp.numeric_names), len(pp.binary_names), pp.category_sizes, pp.config.clip_sigma)


def compare_to_model(current: dict, art, psi_limit: float = DEFAULT_PSI_LIMIT,
                     reference: dict | None = None) -> dict | None:
    """``compare`` of a scoring run's distribution with the artefact's training rows, or with ``reference``
    (say, previous nights pooled: ``merge``); None if either is missing (an artefact from before these)."""
    reference = reference or (art.reference or {}).get("columns_distribution")
    if not reference or not current:
        return None
    pp = art.preprocessor
    scales = [(p["mean"], p["scale"]) if p.get("transform", "identity") == "identity" else None
              for p in (pp.numeric[n] for n in pp.numeric_names)]
    labels = {**{n: ["0", "1"] for n in pp.binary_names},
              **{n: list(pp.categorical[n]["vocab"]) for n in pp.categorical_names}}
    return compare(current, reference, [s.name for s in pp.specs], [s.kind for s in pp.specs], scales, psi_limit,
                   labels)


def _psi(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = p + _EPS, q + _EPS
    p, q = p / p.sum(axis=-1, keepdims=True), q / q.sum(axis=-1, keepdims=True)
    return ((p - q) * np.log(p / q)).sum(axis=-1)


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(m > 0, m, 1)), 0.0).sum(axis=-1)

    return np.sqrt(np.maximum((kl(p) + kl(q)) / 2, 0.0))


def _ks(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)).max(axis=-1)


def _groups(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Each fine bin's group: ``bins`` groups of about equal reference mass, fine bins kept whole."""
    cdf = np.cumsum(reference) / max(reference.sum(), 1e-12)
    return np.maximum.accumulate(np.minimum((cdf * bins - 1e-9).astype(int), bins - 1).clip(0))


def _coarse(counts: np.ndarray, reference: np.ndarray, bins: int = PSI_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Both count vectors summed into ``bins`` groups of about equal reference mass (fine bins kept whole)."""
    group = _groups(reference, bins)
    out_c, out_r = np.zeros(bins), np.zeros(bins)
    np.add.at(out_c, group, counts)
    np.add.at(out_r, group, reference)
    keep = (out_c + out_r) > 0
    return out_c[keep], out_r[keep]


def _quantile(counts: np.ndarray, q: float, clip: float) -> float | None:
    """The ``q`` quantile of a numeric column's standardised values from its fine bins (bin centre)."""
    total = counts.sum()
    if total <= 0:
        return None
    idx = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
    width = 2 * clip / len(counts)
    return float(-clip + (min(idx, len(counts) - 1) + 0.5) * width)


def _noise(p_pool: np.ndarray, n: int, m: int, stats: dict, coarse_ref: np.ndarray | None) -> dict:
    """The ``NOISE_LEVEL`` quantile of each statistic between two samples of ``n`` and ``m`` rows from ``p_pool``.

    PSI and JS come from multinomial draws of both samples (PSI of a numeric column over its
    ``PSI_BINS`` groups, drawn as groups: the same distribution as fine draws summed, at a
    fiftieth of the cost). KS comes from the Gaussian form of the same draws: under one pooled
    distribution the two CDFs' difference at the fine bins is a Brownian bridge at the pooled
    CDF's points, scaled by sqrt(1/n + 1/m) (the same covariance; drawing 512 fine bins twice
    per column was the largest fixed cost of a scoring run, ``bench/score_throughput.py``).
    """
    if n <= 0 or m <= 0 or p_pool.sum() <= 0:
        return {f"{k}_noise": None for k in stats}
    rng = np.random.default_rng(0)
    out = {}
    for name, fn in stats.items():
        if name == "ks":
            support = p_pool[p_pool > 0]
            walk = np.cumsum(rng.standard_normal((NOISE_DRAWS, len(support))) * np.sqrt(support), axis=1)
            bridge = walk - np.cumsum(support) * walk[:, -1:]
            values = np.abs(bridge).max(axis=1) * np.sqrt(1 / n + 1 / m)
        else:
            pool = p_pool
            if name == "psi" and coarse_ref is not None:  # the same groups as the statistic itself
                pool = np.bincount(_groups(coarse_ref), weights=p_pool, minlength=PSI_BINS)
            values = fn(rng.multinomial(n, pool, size=NOISE_DRAWS) / n, rng.multinomial(m, pool, size=NOISE_DRAWS) / m)
        out[f"{name}_noise"] = float(np.quantile(values, NOISE_LEVEL))
    return out


PLOT_BINS = 40
"""Bins of a numeric column's before/after histogram in a report."""


def _plot_bins(cur: np.ndarray, ref: np.ndarray, clip: float, scale: tuple[float, float] | None) -> dict:
    """Both shares over ``PLOT_BINS`` bins spanning where either has mass, with the bins' edges (column units if known)."""
    mass = np.flatnonzero((cur + ref) > 0)
    lo, hi = (mass[0], mass[-1] + 1) if len(mass) else (0, len(cur))
    groups = np.array_split(np.arange(lo, hi), min(PLOT_BINS, hi - lo))
    width = 2 * clip / len(cur)
    edges = [-clip + g[0] * width for g in groups] + [-clip + hi * width]
    if scale is not None:
        edges = [e * scale[1] + scale[0] for e in edges]
    share = lambda c: [float(c[g].sum() / max(c.sum(), 1e-12)) for g in groups]  # noqa: E731
    return {"edges": edges, "shares": share(cur), "reference_shares": share(ref), "standardised": scale is None}


def compare(current: dict, reference: dict, columns: list[str], kinds: list[str],
            numeric_scale: list[tuple[float, float]] | None = None, psi_limit: float = DEFAULT_PSI_LIMIT,
            labels: dict[str, list[str]] | None = None) -> dict:
    """Per-column drift of ``current`` against ``reference`` (two ``ColumnCounter.result`` dicts).

    Args:
        columns, kinds: The model's columns in model order and their kinds.
        numeric_scale: Per numeric column, (mean, scale) of its standardisation, to state
            values in the column's own units too (None for a column, or all: standardised only).
        psi_limit: A column drifted when its PSI exceeds this and its noise level.
        labels: The values of each binary and categorical column (for its shares' names).

    Returns:
        ``columns`` (name -> figures, ranked by PSI, largest first), ``drifted`` (names),
        ``drifted_share``, ``psi_limit``, ``rows`` and ``reference_rows``.
    """
    out: dict = {}
    n, m = int(current["rows"]), int(reference["rows"])
    n_numeric = int(current["n_numeric"])
    clip = float(reference["clip"])
    for i, (name, kind) in enumerate(zip(columns, kinds)):
        cur, ref = _unpack(current["counts"][i]), _unpack(reference["counts"][i])
        cn, rn = cur.sum(), ref.sum()
        p, q = cur / max(cn, 1e-12), ref / max(rn, 1e-12)
        col: dict = {"kind": kind, "missing_share": current["missing"][i] / max(n, 1),
                     "reference_missing_share": reference["missing"][i] / max(m, 1)}
        if i < n_numeric:
            cc, cr = _coarse(cur, ref)
            col["psi"] = float(_psi(cc / max(cc.sum(), 1e-12), cr / max(cr.sum(), 1e-12)))
            col["ks"] = float(_ks(p, q))
            mean = current["sum"][i] / cn if cn else None
            ref_mean = reference["sum"][i] / rn if rn else None
            ref_var = reference["sumsq"][i] / rn - ref_mean ** 2 if rn else None
            ref_sd = float(np.sqrt(max(ref_var, 1e-12))) if ref_var is not None else None
            col.update(mean=mean, reference_mean=ref_mean,
                       mean_shift_sd=(mean - ref_mean) / ref_sd if None not in (mean, ref_mean, ref_sd) else None)
            for qname, qv in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
                a, b = _quantile(cur, qv, clip), _quantile(ref, qv, clip)
                col[qname], col[f"reference_{qname}"] = a, b
            if numeric_scale is not None and numeric_scale[i] is not None:  # the column's own units
                mu, sd = numeric_scale[i]
                for key in ("mean", "reference_mean", "p05", "reference_p05", "p50", "reference_p50", "p95",
                            "reference_p95"):
                    if col.get(key) is not None:
                        col[f"{key}_value"] = col[key] * sd + mu
            pool = (cur + ref) / max(cn + rn, 1e-12)
            col.update(_noise(pool, int(cn), int(rn), {"psi": _psi, "ks": _ks}, ref))
            col["plot"] = _plot_bins(cur, ref, clip, numeric_scale[i] if numeric_scale else None)
        else:
            col["psi"] = float(_psi(p, q))
            col["js"] = float(_js(p, q))
            col["shares"] = p.tolist()
            col["reference_shares"] = q.tolist()
            col["labels"] = (labels or {}).get(name) or [str(j) for j in range(len(p))]
            pool = (cur + ref) / max(cn + rn, 1e-12)
            col.update(_noise(pool, int(cn), int(rn), {"psi": _psi, "js": _js}, None))
        col["drifted"] = bool(col["psi"] > max(psi_limit, col.get("psi_noise") or 0.0))
        out[name] = col
    ranked = dict(sorted(out.items(), key=lambda kv: -kv[1]["psi"]))
    drifted = [c for c, v in ranked.items() if v["drifted"]]
    return {"columns": ranked, "drifted": drifted, "drifted_share": len(drifted) / max(len(columns), 1),
            "psi_limit": psi_limit, "rows": n, "reference_rows": m}


def drifted_columns(comparison: dict, psi_limit: float) -> list[str]:
    """The columns of a stored ``compare`` result whose PSI is above ``psi_limit`` and its noise level."""
    return [c for c, v in comparison["columns"].items() if v["psi"] > max(psi_limit, v.get("psi_noise") or 0.0)]
