"""The marginal term of ``anomaly_score``: how rare each of a row's values is on its own.

A reconstruction misses a value that is far out in its column's tail but agrees with the
row's other columns (every amount of the row large together). The marginal term scores
each observed cell by the negative log of how rare its value is among the training rows'
values of that column, and averages over the row's observed cells:

    numeric:      nll_c(x) = -log min(1, 2 min(P(X <= x), P(X >= x)))   (two-sided tail)
    binary, cat.: nll_c(x) = -log P(X = x)
    marginal_distance(row) = mean over observed cells of nll_c / scale

The probabilities are training counts, +1 smoothed ((count + 1) / (n + 1)); numeric values
are counted in ``BINS`` equal bins of the standardised (and clipped) scale, both ends
inclusive within a bin. ``scale`` is the mean ``nll_c`` of a training cell, averaged over
columns, so a typical training row scores about 1.0, like the other terms. Rank-based, the
term needs no assumption about a column's shape: a skewed amount's long tail is rare
however far it stretches (bench/RESULTS.md, "marginal tail term").

Training counts the values (``MarginalCounter`` a batch at a time, or ``marginal_counts``
over an iterable; summed over workers), ``marginal_fit`` keeps the counts as the stored
form (each column's counts as little-endian uint64, zlib-compressed and base64-encoded: one
short line of ``model.json`` per column, where a list of 512 numbers took 512 lines),
``marginal_tensors`` turns them into one lookup table, and ``marginal_distance`` scores
encoded rows.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np
import torch

BINS = 512
"""Bins of a numeric column's standardised range [-clip, clip]: 0.04 standard deviations each at the default clip of 10."""
SCALE_FLOOR = 0.05
"""Smallest ``scale`` (the mean nll of a training cell): see ``marginal_fit``."""


def _bins(x_num: torch.Tensor, clip: float, bins: int = BINS) -> torch.Tensor:
    """[B, n_numeric] each numeric cell's bin, as floats (whole numbers in [0, bins))."""
    return torch.add(x_num, clip).mul_(bins / (2 * clip)).floor_().clamp_(0, bins - 1)


def _cell_indices(x_num: torch.Tensor, x_bin: torch.Tensor, x_cat: torch.Tensor, offsets: torch.Tensor,
                  clip: float, bins: int = BINS) -> torch.Tensor:
    """[B, n_columns] each cell's position in the flat counts (numeric: its bin), in model column order."""
    n_numeric = x_num.shape[1]
    numeric_offsets = offsets[:n_numeric].to(x_num.dtype)  # exact: whole numbers far below 2**24
    numeric = _bins(x_num, clip, bins).add_(numeric_offsets).long()
    if offsets.numel() == n_numeric:
        return numeric
    return torch.cat([numeric, torch.cat([x_bin.long(), x_cat.long()], dim=1) + offsets[n_numeric:]], dim=1)


def _sizes(n_numeric: int, n_binary: int, category_sizes: list[int]) -> list[int]:
    """Counts per column, in model column order (numeric, binary, categorical)."""
    return [BINS] * n_numeric + [2] * n_binary + list(category_sizes)


def _offsets(sizes: list[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.long, device=device)


class MarginalCounter:
    """Running ``marginal_counts``: ``add`` one encoded batch at a time (for a pass that feeds other sums too).

    ``counts``: each column's counts of the observed values so far, concatenated in model
    column order (float64, flat, on the CPU).
    """

    def __init__(self, n_numeric: int, n_binary: int, category_sizes: list[int], clip: float):
        sizes = _sizes(n_numeric, n_binary, category_sizes)
        self.clip = clip
        self.counts = torch.zeros(sum(sizes), dtype=torch.float64)
        self._offsets = _offsets(sizes, "cpu")

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        """Count one encoded batch (``x_num``, ``x_bin``, ``x_cat``, ``observed``)."""
        x = [batch[k].cpu() for k in ("x_num", "x_bin", "x_cat")]
        self.counts += torch.bincount(_cell_indices(*x, self._offsets, self.clip).flatten(),
                                      weights=batch["observed"].double().cpu().flatten(), minlength=len(self.counts))


def marginal_counts(batches, n_numeric: int, n_binary: int, category_sizes: list[int], clip: float) -> torch.Tensor:
    """Each column's counts of observed training values, concatenated in model column order (float64, flat).

    ``batches`` yields encoded batches (``x_num``, ``x_bin``, ``x_cat``, ``observed``); the
    result of several workers is their sum.
    """
    counter = MarginalCounter(n_numeric, n_binary, category_sizes, clip)
    for batch in batches:
        counter.add(batch)
    return counter.counts


def _pack(counts: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.asarray(counts).astype("<u8").tobytes(), 9)).decode("ascii")


def stored_counts(marginal: dict) -> list[np.ndarray]:
    """Each column's counts (float64) from a stored marginal term (``marginal_fit``'s ``counts``)."""
    return [np.frombuffer(zlib.decompress(base64.b64decode(c)), dtype="<u8").astype(np.float64)
            for c in marginal["counts"]]


def _column_nll(counts: np.ndarray, numeric: bool) -> np.ndarray:
    """``nll_c`` of every bin or value of one column from its counts (the module's formula)."""
    n = counts.sum()
    if not numeric:
        return -np.log((counts + 1.0) / (n + 1.0))
    at_most = np.cumsum(counts)
    at_least = n - at_most + counts
    tail = 2.0 * np.minimum(at_most + 1.0, at_least + 1.0) / (n + 1.0)
    return -np.log(np.minimum(tail, 1.0))


def marginal_fit(counts: np.ndarray | list[float], n_numeric: int, n_binary: int, category_sizes: list[int],
                 clip: float, weight: float) -> dict:
    """The stored marginal term (``reference["marginal"]``): per-column counts, ``clip``, ``scale`` and ``weight``."""
    counts = np.asarray(counts, dtype=np.float64)
    sizes = _sizes(n_numeric, n_binary, category_sizes)
    per_column = np.split(counts, np.cumsum(sizes)[:-1])
    means = [float((c * _column_nll(c, i < n_numeric)).sum() / c.sum())
             for i, c in enumerate(per_column) if c.sum() > 0]
    return {"bins": BINS, "clip": float(clip), "n_numeric": n_numeric, "n_binary": n_binary,
            "category_sizes": list(category_sizes), "counts": [_pack(c) for c in per_column],
            # Floored: on near-constant training columns every seen value has nll ~0, and one unseen
            # value would otherwise score in the millions.
            "scale": max(float(np.mean(means)), SCALE_FLOOR) if means else 1.0, "weight": float(weight)}


def marginal_tensors(marginal: dict | None, device: torch.device | str) -> tuple | None:
    """A stored marginal term as the arguments of ``marginal_distance`` after the cells; None if absent."""
    if not marginal:
        return None
    n_numeric = marginal["n_numeric"]
    counts = stored_counts(marginal)
    table = np.concatenate([_column_nll(c, i < n_numeric) for i, c in enumerate(counts)]) / marginal["scale"]
    sizes = [len(c) for c in counts]
    return (torch.tensor(table, dtype=torch.float32, device=device), _offsets(sizes, device), float(marginal["clip"]),
            int(marginal["bins"]))


_ROWS = 8192
"""Rows per step of ``marginal_distance``: its [rows, n_columns] index temporaries stay in cache
instead of faulting in fresh pages for the whole batch (a quarter of the time; bench/RESULTS.md)."""


def marginal_distance(x_num: torch.Tensor, x_bin: torch.Tensor, x_cat: torch.Tensor, observed: torch.Tensor,
                      table: torch.Tensor, offsets: torch.Tensor, clip: float, bins: int = BINS,
                      row_tables: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row [B] marginal term of encoded rows: the mean scaled ``nll_c`` over the row's observed cells.

    ``bins`` is the artefact's own bin count (``marginal_tensors`` passes it), not today's ``BINS``.
    ``row_tables`` ([B] int64): where each row's model's table starts in ``table``, for the
    tables of several models of one shape laid end to end (``aemodel.stack``).
    """
    parts = []
    for start in range(0, x_num.shape[0], _ROWS):
        rows = slice(start, start + _ROWS)
        idx = _cell_indices(x_num[rows], x_bin[rows], x_cat[rows], offsets, clip, bins)
        cells = torch.take(table, idx if row_tables is None else idx.add_(row_tables[rows].unsqueeze(1)))
        obs = observed[rows]
        parts.append(cells.mul_(obs).sum(dim=1) / obs.sum(dim=1).clamp_min(1.0))
    return torch.cat(parts) if parts else x_num.new_zeros(0)
