"""The scoring summary: one Ray Data aggregation over the written rows, plus its warnings."""

from __future__ import annotations

import json

import ray.data

from aemodel import ModelArtifact
from aemodel.metrics import histogram_edges
from jobs.ray_runtime import ErrorStatsAggregate, TopFeaturesAggregate, aggregate_blocks

COLUMN_ERROR_PREFIX = "err_"
SEEN = "seen_in_training"


def summarize(rows: ray.data.Dataset, threshold: float, art: ModelArtifact, cfg) -> dict:
    """Error distribution, cell counts, per-column error and training overlap of scored rows.

    Reads back only the summary columns of the staged rows, so the rows never reach the
    driver and the figures describe exactly what is committed.

    Args:
        rows: The staged output rows.
        threshold: The anomaly threshold in use.
        art: The model artefact (column names, training-row filter).
        cfg: The ``ScoreConfig`` (top_k, column_errors).
    """
    names = [s.name for s in art.preprocessor.specs]
    err_cols = [COLUMN_ERROR_PREFIX + n for n in names] if cfg.column_errors else []
    aggs = [ErrorStatsAggregate("anomaly_score", histogram_edges(), threshold),
            ray.data.aggregate.Sum("missing_cells", alias_name="missing_cells"),
            ray.data.aggregate.Sum("unseen_cells", alias_name="unseen_cells")]
    aggs += [ray.data.aggregate.Mean(c, alias_name=c) for c in err_cols]
    columns = ["anomaly_score", "missing_cells", "unseen_cells", *err_cols]
    if cfg.top_k:
        aggs.append(TopFeaturesAggregate())
        columns.append("top_features")
    seen = art.training_rows is not None
    if seen:
        aggs.append(ray.data.aggregate.Sum(SEEN, alias_name=SEEN))
        columns.append(SEEN)
    agg = aggregate_blocks(rows.select_columns(columns), *aggs)
    stats = agg["error_stats(anomaly_score)"]
    row_count = stats["count"] + stats["nonfinite"]
    summary = {**stats, "score": "anomaly_score", "row_count": row_count, "anomaly_count": stats["above_threshold"],
               "anomaly_rate": stats["above_threshold_fraction"], "missing_cells": int(agg["missing_cells"] or 0),
               "unseen_category_cells": int(agg["unseen_cells"] or 0)}
    per_column: dict = {}
    if err_cols:
        per_column["mean_error"] = {n: agg[c] for n, c in zip(names, err_cols) if agg[c] is not None}
    if cfg.top_k:
        top = json.loads(agg["top_features"])
        per_column.update({
            "top_k": cfg.top_k,
            "top1_rows": dict(sorted(top["top1_rows"].items(), key=lambda kv: -kv[1])),
            "topk_rows": top["topk_rows"],
            "mean_share_in_topk": {n: top["share_sum"][n] / top["topk_rows"][n] for n in top["topk_rows"]}})
    summary["columns"] = per_column
    if seen:
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
    skipped = summary.get("input", {}).get("skipped_non_parquet_files") or []
    if skipped:
        out.append(f"{len(skipped)} file(s) in the input lack the .parquet extension and were not read "
                   f"(e.g. {skipped[0]}); rename them or pass a glob that names them")
    rows = summary["row_count"] or 1
    if summary.get("unseen_category_cells", 0) > 0.05 * rows:
        out.append(f"{summary['unseen_category_cells']} categorical cells hold values never seen in training")
    return out
