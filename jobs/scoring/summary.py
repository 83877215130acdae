"""The scoring summary: mergeable accumulators taken from each block as it is written, plus its warnings."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aemodel import ModelArtifact
from aemodel.bank import validation_reference
from aemodel.marginal import stored_counts
from aemodel.columns import compare_to_model, counter_for
from aemodel.scoring import COLUMN_COUNTS, COLUMN_ERROR_PREFIX, SEEN, TOP_ROWS, TOP_VALUES
from aemodel.metrics import histogram_edges
from aemodel.aggregates import BlockAggregate, ErrorStatsAggregate, Mean, Sum, TopFeaturesAggregate
from jobs.data.datasets import ROW_HASH, skipped_files_warning

ALL_MISSING = "rows_all_missing"


class TopRowsAggregate(BlockAggregate):
    """The ``n`` rows with the highest anomaly_score: their ids, score, percentile and top features."""

    def __init__(self, id_columns: list[str], n: int):
        self.name, self._ids, self._n = "top_rows", id_columns, n

    def aggregate_block(self, table: pa.Table) -> bytes:
        score = np.nan_to_num(table.column("anomaly_score").to_numpy(zero_copy_only=False), nan=-np.inf)
        keep = np.argsort(-score, kind="stable")[: self._n] if len(score) <= self._n else \
            np.argpartition(-score, self._n - 1)[: self._n]
        cols = [*self._ids, "anomaly_score", "score_percentile",
                *(["top_features"] if "top_features" in table.column_names else []),
                *([TOP_VALUES] if TOP_VALUES in table.column_names else [])]
        rows = table.select(cols).take(pa.array(keep, type=pa.int64())).to_pylist()
        for row in rows:  # the feature values the scorer kept for its batch's top rows
            if TOP_VALUES in row:
                values = row.pop(TOP_VALUES)
                row["values"] = json.loads(values) if values else None
        return json.dumps(rows, default=str).encode()

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current:
            return new
        if not new:
            return current
        rows = json.loads(current) + json.loads(new)
        rows.sort(key=lambda r: -(r["anomaly_score"] if r["anomaly_score"] is not None else -np.inf))
        return json.dumps(rows[: self._n]).encode()

    def finalize(self, accumulator: bytes) -> list[dict]:
        rows = json.loads(accumulator) if accumulator else []
        return sorted(rows, key=lambda r: -(r["anomaly_score"] if r["anomaly_score"] is not None else -np.inf))


class ColumnDistributionAggregate(BlockAggregate):
    """The scored rows' per-column distribution (``aemodel.columns``), summed from the scorer's batch parts."""

    def __init__(self, art: ModelArtifact):
        self.name, self._pp = "columns_distribution", art.preprocessor

    def aggregate_block(self, table: pa.Table):
        if COLUMN_COUNTS not in table.column_names:
            return None
        counter = counter_for(self._pp)
        for part in table.column(COLUMN_COUNTS).drop_null().to_pylist():
            counter.add_state(pickle.loads(part))  # our own scorer's bytes, in this run
        return counter.state()

    def combine(self, current, new):
        if current is None or new is None:
            return current if new is None else new
        return tuple(a + b for a, b in zip(current, new))

    def finalize(self, accumulator) -> dict | None:
        if accumulator is None:
            return None
        counter = counter_for(self._pp)
        counter.add_state(accumulator)
        return counter.result()


class CountEqual(BlockAggregate):
    """Rows whose ``on`` column equals ``value``."""

    def __init__(self, name: str, on: str, value: int):
        self.name, self._on, self._value = name, on, value

    def aggregate_block(self, table: pa.Table) -> int:
        return int(pc.sum(pc.equal(table.column(self._on), self._value)).as_py() or 0)

    def combine(self, current, new):
        return new if current is None else current if new is None else current + new

    def finalize(self, accumulator):
        return int(accumulator or 0)


def training_missing_fraction(art: ModelArtifact) -> float | None:
    """Share of the training rows' feature cells that were missing (from the marginal term's counts; None without)."""
    marginal = (art.reference or {}).get("marginal")
    rows, cells = art.preprocessor.train_rows, len(art.preprocessor.specs)
    if not marginal or not rows or not cells:
        return None
    return max(0.0, 1.0 - sum(float(c.sum()) for c in stored_counts(marginal)) / (rows * cells))


def summary_aggregations(art: ModelArtifact, cfg, threshold: float) -> list[BlockAggregate]:
    """The mergeable accumulators of the scoring summary, taken from each block as it is written.

    Args:
        art: The model artefact (column names, training-row filter).
        cfg: The ``ScoreConfig`` (top_k, column_errors, id_columns).
        threshold: The anomaly threshold in use.
    """
    names = [s.name for s in art.preprocessor.specs]
    aggs = [ErrorStatsAggregate("anomaly_score", histogram_edges(), threshold),
            Sum("missing_cells"), Sum("unseen_cells"), CountEqual(ALL_MISSING, "missing_cells", len(names)),
            TopRowsAggregate(list(cfg.id_columns) or [ROW_HASH], TOP_ROWS), ColumnDistributionAggregate(art)]
    if cfg.column_errors:
        aggs += [Mean(COLUMN_ERROR_PREFIX + n) for n in names]
    if cfg.top_k:
        aggs.append(TopFeaturesAggregate())
    if art.training_rows is not None:
        aggs.append(Sum(SEEN))
    if art.bank:
        from jobs.scoring.bank import EntityAggregate

        aggs.append(EntityAggregate(art.bank["entity_columns"]))
    return aggs


def summary_from(agg: dict, art: ModelArtifact, cfg) -> dict:
    """The summary of the scored rows from the merged accumulators of ``summary_aggregations``.

    One name per concept: ``row_count`` rows, ``nonfinite`` of them without a finite score,
    ``anomaly_count`` / ``anomaly_rate`` (of the finite ones) above ``threshold``.
    """
    names = [s.name for s in art.preprocessor.specs]
    stats = dict(agg["error_stats(anomaly_score)"])
    finite, above = stats.pop("count"), stats.pop("above_threshold")
    rate = stats.pop("above_threshold_fraction")
    row_count = finite + stats["nonfinite"]
    summary = {"score": "anomaly_score", "row_count": row_count, "anomaly_count": above, "anomaly_rate": rate,
               **stats, "missing_cells": int(agg["missing_cells"] or 0), "rows_all_missing": agg[ALL_MISSING],
               "missing_cell_fraction": int(agg["missing_cells"] or 0) / (row_count * len(names)) if row_count else 0.0,
               "training_missing_cell_fraction": training_missing_fraction(art),
               # The validation rows' rate at the model's own threshold (unknown at a --threshold of the user's).
               "reference_anomaly_rate": (validation_reference(art) or {}).get("above_threshold_fraction")
               if cfg.threshold is None else None,
               "unseen_cells": int(agg["unseen_cells"] or 0), "top_rows": agg["top_rows"]}
    per_column: dict = {}
    if cfg.column_errors:
        per_column["mean_error"] = {n: agg[COLUMN_ERROR_PREFIX + n] for n in names
                                    if agg[COLUMN_ERROR_PREFIX + n] is not None}
    if cfg.top_k:
        top = json.loads(agg["top_features"])
        per_column.update({
            "top_k": cfg.top_k,
            "top1_rows": dict(sorted(top["top1_rows"].items(), key=lambda kv: -kv[1])),
            "top1_flagged_rows": dict(sorted(top["top1_flagged_rows"].items(), key=lambda kv: -kv[1])),
            "topk_rows": top["topk_rows"],
            "mean_share_in_topk": {n: top["share_sum"][n] / top["topk_rows"][n] for n in top["topk_rows"]}})
    if art.bank:  # each row's own model's threshold decided is_anomaly
        summary["entities"] = agg["entities"]
        summary["anomaly_count"] = agg["entities"]["anomaly_count"]
        summary["anomaly_rate"] = summary["anomaly_count"] / finite if finite else None
    summary["columns"] = per_column
    summary["columns_distribution"] = agg["columns_distribution"]
    summary["column_drift"] = compare_to_model(agg["columns_distribution"], art)
    if art.training_rows is not None:
        hits = int(agg[SEEN] or 0)
        fpr = art.training_rows_info.get("false_positive_rate", 0.0)
        summary["training_overlap"] = {"rows": hits, "fraction": hits / row_count if row_count else 0.0,
                                       "expected_false_matches": fpr * row_count,
                                       "method": "Bloom filter of training and validation row hashes"}
    return summary


def summary_warnings(summary: dict) -> list[str]:
    """Plain-language warnings about a scoring run."""
    out = []
    ov = summary.get("training_overlap")
    if ov and ov["rows"] > max(1.0, 3 * ov["expected_false_matches"]):
        out.append(f"{ov['rows']} scored rows ({100 * ov['fraction']:.2f}%) also occur in the model's training or "
                   "validation data: their low error reflects memorisation, not normality (data leakage)")
    if summary.get("nonfinite"):
        out.append(f"{summary['nonfinite']} rows have a non-finite anomaly_score")
    skipped = skipped_files_warning("the input", summary.get("input", {}).get("skipped_non_parquet_files") or [])
    if skipped:
        out.append(skipped)
    rows = summary["row_count"] or 1
    if summary.get("rows_all_missing"):
        out.append(f"{summary['rows_all_missing']} rows have every feature missing: missing cells are filled with "
                   "training values, so these rows score as typical and are never flagged")
    share, trained = summary.get("missing_cell_fraction", 0.0), summary.get("training_missing_cell_fraction")
    if share > (trained or 0.0) + 0.05:
        out.append(f"{100 * share:.1f}% of the feature cells are missing"
                   + (f" (training: {100 * trained:.1f}%)" if trained is not None else "")
                   + ": missing cells are filled with training values and left out of the error, so the scores "
                   "rest on fewer columns (and a column missing in every row moves them either way); a column may "
                   "have gone missing upstream")
    reference_rate = summary.get("reference_anomaly_rate")
    if (summary.get("anomaly_rate") or 0) > 0.2 and reference_rate is not None \
            and summary["anomaly_rate"] > 10 * max(reference_rate, 1e-3):
        out.append(f"{100 * summary['anomaly_rate']:.1f}% of the rows are flagged, against "
                   f"{100 * reference_rate:.2f}% of the model's validation rows: more likely the data changed "
                   "(units, column order, another source) than that most rows are anomalies")
    if summary.get("unseen_cells", 0) > 0.05 * rows:
        out.append(f"{summary['unseen_cells']} categorical cells hold values the model does not know: never seen "
                   "in training, or beyond the categories it kept (--max-categories, --min-category-count)")
    drift = summary.get("column_drift")
    if drift and drift["drifted"]:
        top = ", ".join(f"{c} (PSI {drift['columns'][c]['psi']:.2f})" for c in drift["drifted"][:3])
        out.append(f"{len(drift['drifted'])} of {len(drift['columns'])} feature columns moved away from their training "
                   f"distribution (PSI above {drift['psi_limit']:g} and its noise level): {top}"
                   + (", ..." if len(drift["drifted"]) > 3 else "") + "; report.html shows them")
    # Repeated here: a nightly job's log may be the only output anyone reads.
    out += [f"the model's training warned: {w}" for w in summary.get("model", {}).get("warnings", [])]
    return out
