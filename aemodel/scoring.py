"""Batch scoring with a loaded artefact: Arrow table in, per-row error arrays out."""

from __future__ import annotations

import json
import pickle
import sys
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from aemodel.artifact import ModelArtifact
from aemodel.columns import counter_for
from aemodel.leakage import row_hashes
from aemodel.losses import anomaly_score, column_losses, latent_distance, latent_tensors, row_errors
from aemodel.marginal import marginal_distance, marginal_tensors
from aemodel.metrics import histogram_percentile
from aemodel.preprocess import Preprocessor

TOP_ROWS = 20
"""Rows with the highest anomaly_score kept, with their feature values, in summary.json and the report."""
PARTIAL_PREFIX = "__aescore_"
"""Columns of a scored table that carry a batch's part of the run's summary, never written."""
COLUMN_COUNTS = PARTIAL_PREFIX + "column_counts"
TOP_VALUES = PARTIAL_PREFIX + "top_values"
COLUMN_ERROR_PREFIX = "err_"
"""Prefix of the per-column error columns (``--column-errors``)."""
SEEN = "seen_in_training"
"""Whether the row's values occur in the model's training or validation rows (its Bloom filter)."""
OUTPUT_COLUMNS = ("anomaly_score", "score_percentile", "recon_error", "is_anomaly", "missing_cells", "unseen_cells",
                  "top_features", SEEN)
"""Columns of a scored table besides the passthrough (id) columns and ``err_<column>`` (``RowScorer.output_table``)."""

TOP_FEATURE_TYPE = pa.list_(pa.struct([("column", pa.dictionary(pa.int32(), pa.string())), ("share", pa.float32()),
                                       ("z", pa.float32())]))
"""``top_features``: per row, the k columns with the largest error, largest first.

``column`` is dictionary-encoded (indices into the model's column names): it reads back
as the same strings, and writing and summarising it costs a fraction of one string per
cell (bench/score_throughput.py, per-row extras)."""


def _largest(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, column indices) of each row's ``k`` largest, largest first, ties leftmost first.

    ``values``: float32 [B, C], every cell >= +0.0 or negative for cells never to list
    first (NaN, as for ``numpy.argmax``, counts as the largest).

    For a few columns per row, each cell becomes one int64 key, its float bits above its
    reversed column index (a non-negative float's bits order as the float does), and each
    of the ``k`` passes is one ``amax`` across the rows: about half the time of ``k``
    numpy ``argmax`` passes, which loop row by row (bench/score_throughput.py, per-row extras).
    """
    b, c = values.shape
    if k <= 8:
        low = 1 << 32
        x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        # key = bits * 2**32 + (c - 1 - column), written straight into the int64's two 32-bit
        # words: a third of the time of converting the bits to int64 and adding, which also
        # allocates a temporary as large as the key (bench/score_throughput.py, per-row extras).
        key = torch.empty((b, c), dtype=torch.int64)
        words = key.view(torch.int32).view(b, c, 2)
        low_word, high_word = (0, 1) if sys.byteorder == "little" else (1, 0)
        words[:, :, low_word] = torch.arange(c - 1, -1, -1, dtype=torch.int32)
        words[:, :, high_word] = x.view(torch.int32)
        top = torch.empty((b, k), dtype=torch.int64)
        for j in range(k):
            first = (c - 1) - (key.amax(dim=1, keepdim=True) & (low - 1))
            top[:, j:j + 1] = first
            key.scatter_(1, first, torch.iinfo(torch.int64).min)
        return torch.gather(x, 1, top).numpy(), top.numpy()
    top_np = np.argpartition(-values, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (b, 1))
    order = np.argsort(-np.take_along_axis(values, top_np, axis=1), axis=1, kind="stable")
    top_np = np.take_along_axis(top_np, order, axis=1)
    return np.take_along_axis(values, top_np, axis=1), top_np


def top_features(col_losses: np.ndarray, observed: np.ndarray, names: list[str], k: int,
                 ref_mean: np.ndarray | None, ref_std: np.ndarray | None, missing_cells: np.ndarray | None = None,
                 recon_error: np.ndarray | None = None) -> pa.Array:
    """The ``k`` columns contributing most to each row's error, with share and z-score.

    ``share`` is the column's part of the row's error (cells sum to 1 over all observed
    columns); ``z`` is how many validation standard deviations the column's error is above
    its validation mean (NaN without a reference). Missing cells are never listed.
    ``missing_cells`` and ``recon_error`` (per row, as scoring has them already) save
    recomputing them from ``observed`` and ``col_losses``.
    """
    k = min(k, col_losses.shape[1])
    # A cell's loss (a rounding error below 0 counts as 0) where observed, -1 where missing
    # (sorts last), rewritten only in the rows that have a missing cell.
    contrib = np.maximum(col_losses, 0, dtype=np.float32)
    if missing_cells is None:
        missing_cells = col_losses.shape[1] - np.asarray(observed, dtype=np.float32).sum(axis=1)
    partial = np.flatnonzero(missing_cells)
    contrib[partial] = np.where(observed[partial] > 0, contrib[partial], -1.0)
    if recon_error is None:  # the row's error summed over its observed cells
        total = np.einsum("ij,ij->i", col_losses, observed)[:, None]
    else:  # recon_error is that sum over the observed cells' count
        total = (recon_error * (col_losses.shape[1] - missing_cells).astype(np.float32))[:, None]
    picked, top = _largest(contrib, k)
    share = np.where(total > 0, np.clip(picked, 0, None) / np.maximum(total, 1e-30), 0.0)
    if ref_mean is not None and ref_std is not None and ref_mean.ndim == 2:  # per row (a model bank's rows)
        z = ((picked - np.take_along_axis(ref_mean, top, 1))
             / np.maximum(np.take_along_axis(ref_std, top, 1), 1e-6))
    elif ref_mean is not None and ref_std is not None:
        z = (picked - ref_mean[top]) / np.maximum(ref_std[top], 1e-6)
    else:
        z = np.full_like(picked, np.nan)
    keep = (picked >= 0).ravel()  # drop missing cells (rows with fewer than k observed)
    counts = sum((picked[:, j] >= 0).astype(np.int64) for j in range(k))  # k column ops, not a per-row sum
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    column = pa.DictionaryArray.from_arrays(pa.array(top.ravel()[keep].astype(np.int32)),
                                            pa.array(names, type=pa.string()), safe=False)  # indices < len(names)
    values = pa.StructArray.from_arrays(
        [column, pa.array(share.ravel()[keep], type=pa.float32()), pa.array(z.ravel()[keep], type=pa.float32())],
        fields=list(TOP_FEATURE_TYPE.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=TOP_FEATURE_TYPE)


def rows_per_call(pp: Preprocessor, budget_bytes: int = 64 * 2**20) -> int:
    """Rows per model call whose float32 outputs and loss terms take about ``budget_bytes``.

    A row costs about 16 bytes per output value (the reconstruction, the log-softmax and
    loss terms of each categorical level): a high-cardinality categorical column gets
    small calls, a table of a few dozen numbers the maximum of 65,536 rows, where each
    call's fixed cost is spread widest on CPU (bench/score_throughput.py).
    """
    width = len(pp.numeric_names) + len(pp.binary_names) + sum(pp.category_sizes)
    return int(np.clip(budget_bytes // (16 * max(width, 1)), 256, 65536))


def _json_value(v, kind: str):
    """A feature value as the top rows' JSON keeps it: missing and non-finite as None, categories as text."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return float(v) if isinstance(v, float) else str(v) if kind == "categorical" else v


def top_indices(score: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` highest scores (NaN lowest; ties to the earlier row), in no set order.

    The set a stable descending sort's first ``k`` would give, by a partition: a sort of
    every batch was most of the top rows' cost (``bench/score_throughput.py``).
    """
    s = -np.nan_to_num(score, nan=-np.inf)
    if len(s) <= k:
        return np.arange(len(s))
    kth = np.partition(s, k - 1)[k - 1]
    above = np.flatnonzero(s < kth)
    return np.concatenate([above, np.flatnonzero(s == kth)[:k - len(above)]])


class RowScorer:
    """Scores tables with one model; build once per worker and reuse.

    Args:
        artifact: The loaded model artefact.
        device: Torch device to run on.
        precision: ``bf16``/``fp16`` run the network under CUDA autocast (losses stay
            float32); ignored on CPU.
        network: Build the network (False: the score's terms only, for ``aemodel.stack``,
            which runs the weights stacked with other models').
    """

    def __init__(self, artifact: ModelArtifact, device: str | torch.device = "cpu",
                 precision: Literal["fp32", "bf16", "fp16"] = "fp32", network: bool = True):
        self.artifact = artifact
        self.precision = precision
        self.preprocessor = artifact.preprocessor
        self.columns = [s.name for s in self.preprocessor.specs]  # model column order
        self.device = torch.device(device)
        self.model = artifact.build_model().to(self.device) if network else None
        self.threshold = artifact.threshold_value
        ref = artifact.reference.get("columns")
        # Per-column validation scales (see aemodel.losses); artefacts written before them
        # have none, and their thresholds were calibrated unscaled, so 1.0 keeps them consistent.
        scales = np.array([ref[c].get("scale", 1.0) for c in self.columns]) if ref else np.ones(len(self.columns))
        self.loss_scales = torch.tensor(np.asarray(self.preprocessor.baselines) * scales, dtype=torch.float32,
                                        device=self.device)
        """Divisor of each column's raw loss: training baseline times validation scale."""
        self.validation_histogram = artifact.reference.get("histogram")
        """The validation rows' anomaly_score histogram: where ``score_percentile`` places a row."""
        # The latent term of anomaly_score; artefacts without one have weight 0 for it.
        latent = artifact.reference.get("latent")
        self.latent_weight = float(latent["weight"]) if latent else 0.0
        self.latent = latent_tensors(latent, self.device)
        # The marginal term (aemodel.marginal); artefacts written before it have none.
        marginal = artifact.reference.get("marginal")
        self.marginal_weight = float(marginal["weight"]) if marginal else 0.0
        self.marginal = marginal_tensors(marginal, self.device)
        # z-scores compare scaled losses, so the validation reference is scaled the same way.
        self.ref_mean = np.array([ref[c]["mean"] for c in self.columns]) / scales if ref else None
        self.ref_std = np.array([ref[c]["std"] for c in self.columns]) / scales if ref else None

    def errors_encoded(self, enc: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row ``anomaly_score`` [B], ``recon_error`` [B] and per-cell scaled loss [B, n_columns]."""
        dev = self.device
        cuda = dev.type == "cuda"
        # On CUDA, copy from pinned host memory so the transfer is asynchronous.
        t = {k: (torch.from_numpy(enc[k]).pin_memory() if cuda else torch.from_numpy(enc[k])).to(dev, non_blocking=cuda)
             for k in ("x_num", "x_bin", "x_cat", "observed")}
        autocast = cuda and self.precision != "fp32"
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.inference_mode():
            with torch.autocast("cuda", dtype=dtype, enabled=autocast):
                recon = self.model(t["x_num"], t["x_bin"], t["x_cat"])
            if autocast:
                recon = type(recon)(recon.numeric.float(), recon.binary_logits.float(),
                                    [c.float() for c in recon.categorical_logits], recon.latent.float())
            losses = column_losses(recon, t["x_num"], t["x_bin"], t["x_cat"], self.loss_scales)
            err = row_errors(losses, t["observed"])
            dist = latent_distance(recon.latent, *self.latent) if self.latent is not None else None
            rare = (marginal_distance(t["x_num"], t["x_bin"], t["x_cat"], t["observed"], *self.marginal)
                    if self.marginal is not None else None)
            score = anomaly_score(err, dist, self.latent_weight, rare, self.marginal_weight)
        return score.float().cpu().numpy(), err.float().cpu().numpy(), losses.float().cpu().numpy()

    def score_encoded(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Per-row ``anomaly_score`` for an encoded batch (see ``Preprocessor.transform``)."""
        return self.errors_encoded(enc)[0]

    def score_table(self, table: pa.Table, top_k: int = 0, column_errors: bool = False,
                    raw: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``anomaly_score``, ``score_percentile``, ``recon_error``, ``is_anomaly``, ``missing_cells``,
        ``unseen_cells`` per row.

        ``score_percentile`` (0-100) is the row's rank within the model's validation rows:
        99.5 means 0.5% of normal validation rows scored higher.
        ``is_anomaly`` compares ``anomaly_score`` (``recon_error`` plus the model's latent
        and marginal terms, see ``aemodel.losses``) with the threshold.

        Args:
            table: Rows with (at least) the model's feature columns.
            top_k: Also return ``top_features`` (see ``top_features``) with this many columns.
            column_errors: Also return ``column_errors``, [B, n_columns] normalised loss per
                cell in ``self.columns`` order, NaN where the cell was missing.
            raw: Passed to ``Preprocessor.transform`` (receives the numeric columns as read).
        """
        return self._score(self.preprocessor.transform(table, raw), top_k, column_errors)

    def row_figures(self, enc: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """Per row of an encoded batch under this model: ``anomaly_score``, ``recon_error``, the per-cell scaled
        loss [B, n_columns], ``score_percentile`` and ``is_anomaly``."""
        score, err, losses = self.errors_encoded(enc)
        pct = (histogram_percentile(self.validation_histogram, score).astype(np.float32)
               if self.validation_histogram else np.full(len(score), np.nan, np.float32))
        flagged = score > self.threshold if self.threshold is not None else np.zeros(len(err), dtype=bool)
        return score, err, losses, pct, flagged

    def _score(self, enc: dict[str, np.ndarray], top_k: int, column_errors: bool) -> dict[str, np.ndarray]:
        score, err, losses, pct, flagged = self.row_figures(enc)
        out = {
            "anomaly_score": score,
            "score_percentile": pct,
            "recon_error": err,
            "is_anomaly": flagged,
            "missing_cells": enc["missing_cells"],
            "unseen_cells": enc["unseen_cells"],
        }
        if top_k:
            out["top_features"] = top_features(losses, enc["observed"], self.columns, top_k, self.ref_mean,
                                               self.ref_std, enc["missing_cells"], err)
        if column_errors:
            out["column_errors"] = np.where(enc["observed"] > 0, losses, np.nan).astype(np.float32)
        return out

    def output_table(self, batch: pa.Table, passthrough: list[str] = (), top_k: int = 0,
                     column_errors: bool = False, partials: bool = False) -> pa.Table:
        """The rows file's columns for ``batch``: the ``passthrough`` input columns, then every score column.

        ``anomaly_score``, ``score_percentile``, ``recon_error``, ``is_anomaly``, ``missing_cells``,
        ``unseen_cells``; ``top_features`` with ``top_k``; ``seen_in_training`` when the artefact
        holds a filter of its training rows; ``err_<column>`` with ``column_errors`` (null where
        the cell was missing). ``aescore score`` and the Python API write exactly these.

        ``partials`` adds two columns for the run's summary, never written (``PARTIAL_PREFIX``):
        the batch's per-column distribution (``aemodel.columns``; one value, in the first row)
        and the feature values of the batch's ``TOP_ROWS`` highest-scoring rows (JSON; null in
        the others), counted here from the encoding the scoring made anyway.
        """
        seen = self.artifact.training_rows
        raw = {} if seen is not None or partials else None  # the numeric columns as read
        enc = self.preprocessor.transform(batch, raw)
        res = self._score(enc, top_k, column_errors)
        hits = seen.contains(row_hashes(batch, self.preprocessor.specs, raw)) if seen is not None else None
        table = self.assemble(batch, res, passthrough, top_k, column_errors, hits)
        if partials:
            for name, col in self.partial_columns(batch, enc, raw, res["anomaly_score"]).items():
                table = table.append_column(name, col)
        return table

    def assemble(self, batch: pa.Table, res: dict[str, np.ndarray], passthrough: list[str], top_k: int,
                 column_errors: bool, seen: np.ndarray | None) -> pa.Table:
        """The rows file's table from ``_score``'s results (and ``seen_in_training``, where known)."""
        cols = {c: batch.column(c) for c in passthrough}
        cols.update({
            "anomaly_score": pa.array(res["anomaly_score"], type=pa.float32()),
            "score_percentile": pa.array(res["score_percentile"], type=pa.float32()),
            "recon_error": pa.array(res["recon_error"], type=pa.float32()),
            "is_anomaly": pa.array(res["is_anomaly"], type=pa.bool_()),
            "missing_cells": pa.array(res["missing_cells"], type=pa.int32()),
            "unseen_cells": pa.array(res["unseen_cells"], type=pa.int32()),
        })
        if top_k:
            cols["top_features"] = res["top_features"]
        if seen is not None:
            cols[SEEN] = pa.array(seen, type=pa.bool_())
        if column_errors:
            for i, name in enumerate(self.columns):
                v = res["column_errors"][:, i]
                cols[f"{COLUMN_ERROR_PREFIX}{name}"] = pa.array(v, type=pa.float32(), mask=np.isnan(v))
        return pa.table(cols)

    def partial_columns(self, batch: pa.Table, enc: dict, raw: dict, score: np.ndarray) -> dict[str, pa.Array]:
        """The batch's part of the run's summary (``output_table``'s ``partials``), from its encoding and scores."""
        counter = counter_for(self.preprocessor)
        counter.add(enc)
        first = [pickle.dumps(counter.state())] + [None] * (batch.num_rows - 1) if batch.num_rows else []
        top = top_indices(score, TOP_ROWS)
        values: list[str | None] = [None] * batch.num_rows
        columns = {s.name: [_json_value(v, s.kind) for v in (raw[s.name][top].tolist() if s.name in raw else
                                                              batch.column(s.name).take(top).to_pylist())]
                   for s in self.preprocessor.specs}
        for j, i in enumerate(top.tolist()):
            values[i] = json.dumps({name: vals[j] for name, vals in columns.items()})
        return {COLUMN_COUNTS: pa.array(first, type=pa.binary()), TOP_VALUES: pa.array(values, type=pa.string())}
