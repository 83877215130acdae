"""Champion and challenger on the same rows: ``comparison.json`` of a scoring run with ``--challenger``.

Counts and top rows are mergeable block accumulators (``ComparisonAggregate``), taken in
the pass that scores and writes the rows. The rank correlation needs every row's two
ranks: it is computed after the pass from the committed row files' two score columns (a
columnar read of 8 bytes a row; the input is not read again).

Figures: each model's anomaly count and rate, and the rate's ratio to the rate the model
had on its own validation rows; the Spearman rank correlation of the two scores; the
overlap of their ``TOP_N`` highest-scored rows and of their flagged rows (both, either,
Jaccard); the ``ONLY_ROWS`` highest rows that one model flags and the other does not, with
the flagging model's top features; with a labelled reference set (``--reference-data``,
``--label-column``), each model's AUROC and precision and recall at its threshold there.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aemodel.aggregates import BlockAggregate
from aemodel.challenger import CHALLENGER_FLAG, CHALLENGER_SCORE, CHALLENGER_TOP

TOP_N = 100
"""Rows per model in the top-rows overlap."""
ONLY_ROWS = 20
"""Rows listed per model among those only it flags."""


def _top(table: pa.Table, score: str, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """The rows (of ``mask``) with the ``n`` highest scores, highest first, ties in row order.

    Sorted here, not only when two blocks' lists merge: a run of one block (one chunk of
    small files joined) is never merged.
    """
    s = np.nan_to_num(table.column(score).to_numpy(zero_copy_only=False).astype(np.float64), nan=-np.inf)
    idx = np.arange(len(s)) if mask is None else np.flatnonzero(mask)
    if len(idx) > n:
        idx = np.sort(idx[np.argpartition(-s[idx], n - 1)[:n]])
    return idx[np.argsort(-s[idx], kind="stable")]


class ComparisonAggregate(BlockAggregate):
    """Flag counts, each model's top rows and the rows only one model flags, per block, merged by keeping the top."""

    def __init__(self, id_columns: list[str]):
        self.name, self._ids = "comparison", id_columns

    def _rows(self, table: pa.Table, idx: np.ndarray, features: str | None) -> list[dict]:
        cols = [*self._ids, "anomaly_score", CHALLENGER_SCORE, *([features] if features else [])]
        rows = table.select(cols).take(pa.array(idx, type=pa.int64())).to_pylist()
        for r in rows:
            if features == CHALLENGER_TOP:
                value = r.pop(CHALLENGER_TOP)
                r["top_features"] = json.loads(value) if value else None
        return rows

    def aggregate_block(self, table: pa.Table) -> bytes:
        a = table.column("is_anomaly").to_numpy(zero_copy_only=False).astype(bool)
        b = table.column(CHALLENGER_FLAG).to_numpy(zero_copy_only=False).astype(bool)
        champion_features = "top_features" if "top_features" in table.column_names else None
        return json.dumps({
            "rows": len(a), "champion": int(a.sum()), "challenger": int(b.sum()), "both": int((a & b).sum()),
            "top_champion": self._rows(table, _top(table, "anomaly_score", TOP_N), None),
            "top_challenger": self._rows(table, _top(table, CHALLENGER_SCORE, TOP_N), None),
            "only_champion": self._rows(table, _top(table, "anomaly_score", ONLY_ROWS, a & ~b), champion_features),
            "only_challenger": self._rows(table, _top(table, CHALLENGER_SCORE, ONLY_ROWS, b & ~a), CHALLENGER_TOP),
        }, default=str).encode()

    def combine(self, current: bytes, new: bytes) -> bytes:
        if not current or not new:
            return current or new
        x, y = json.loads(current), json.loads(new)
        out = {k: x[k] + y[k] for k in ("rows", "champion", "challenger", "both")}
        for key, score, n in (("top_champion", "anomaly_score", TOP_N), ("top_challenger", CHALLENGER_SCORE, TOP_N),
                              ("only_champion", "anomaly_score", ONLY_ROWS),
                              ("only_challenger", CHALLENGER_SCORE, ONLY_ROWS)):
            out[key] = _highest(x[key] + y[key], score, n)
        return json.dumps(out, default=str).encode()

    def finalize(self, accumulator: bytes | None) -> dict | None:
        return json.loads(accumulator) if accumulator else None


def _highest(rows: list[dict], score: str, n: int) -> list[dict]:
    return sorted(rows, key=lambda r: -(r[score] if r[score] is not None else -np.inf))[:n]


def _key(row: dict, ids: list[str]) -> tuple:
    return tuple(row[c] for c in ids)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties) of two score columns; rows with a NaN are left out."""
    import pandas as pd

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return None
    ra, rb = pd.Series(a[ok]).rank(method="average"), pd.Series(b[ok]).rank(method="average")
    value = float(np.corrcoef(ra.to_numpy(), rb.to_numpy())[0, 1])
    return value if np.isfinite(value) else None


def comparison(acc: dict, ids: list[str], scores: tuple[np.ndarray, np.ndarray], models: tuple[dict, dict],
               reference: dict | None = None) -> dict:
    """``comparison.json`` from the merged accumulator, the committed rows' two score columns and the two models.

    Args:
        acc: ``ComparisonAggregate``'s result.
        ids: The id columns the rows are named by.
        scores: (anomaly_score, challenger_score) of every committed row.
        models: Per model, ``uri``, ``version``, ``threshold`` and ``validation_rate`` (the
            share of its validation rows above its threshold; None for an override).
        reference: ``reference_metrics``'s result, when a labelled reference set was given.
    """
    n = max(acc["rows"], 1)
    per = {}
    for (name, key, top), model in zip((("champion", "champion", "top_champion"),
                                        ("challenger", "challenger", "top_challenger")), models):
        rate = acc[key] / n
        val = model.get("validation_rate")
        per[name] = {**model, "anomaly_count": acc[key], "anomaly_rate": rate,
                     "rate_vs_validation": rate / val if val else None}
    top_a = {_key(r, ids) for r in acc["top_champion"]}
    top_b = {_key(r, ids) for r in acc["top_challenger"]}
    either = acc["champion"] + acc["challenger"] - acc["both"]
    out = {
        "rows": acc["rows"], "champion": per["champion"], "challenger": per["challenger"],
        "spearman": spearman(*scores),
        "top_rows_overlap": {"n": min(TOP_N, acc["rows"]), "shared": len(top_a & top_b),
                             "share": len(top_a & top_b) / max(min(TOP_N, acc["rows"]), 1)},
        "flagged_overlap": {"both": acc["both"], "champion_only": acc["champion"] - acc["both"],
                            "challenger_only": acc["challenger"] - acc["both"], "either": either,
                            "jaccard": acc["both"] / either if either else None},
        "only_champion": acc["only_champion"], "only_challenger": acc["only_challenger"],
    }
    if reference is not None:
        out["reference"] = reference
    return out


def committed_scores(fs, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The two score columns of the committed row files (float64; the only columns read)."""
    import pyarrow.parquet as pq

    parts = [pq.read_table(f, columns=["anomaly_score", CHALLENGER_SCORE], filesystem=fs) for f in files]
    if not parts:
        return np.array([]), np.array([])
    table = pa.concat_tables(parts)
    return tuple(pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
                 for c in ("anomaly_score", CHALLENGER_SCORE))


def reference_metrics(table: pa.Table, labels: np.ndarray, scorers: tuple) -> dict:
    """Each model's AUROC, and precision and recall at its own threshold, on a labelled reference set."""
    from aemodel.metrics import auroc

    out = {"rows": int(len(labels)), "anomalies": int(labels.sum())}
    for name, scorer in zip(("champion", "challenger"), scorers):
        res = scorer.score_table(table)
        flags = np.asarray(res["is_anomaly"], dtype=bool)
        tp = int((flags & labels).sum())
        out[name] = {"auroc": float(auroc(res["anomaly_score"], labels)),
                     "precision": tp / int(flags.sum()) if flags.any() else None,
                     "recall": tp / int(labels.sum()) if labels.any() else None}
    return out


def prepare_challenger(cfg, art, options: dict, loader) -> tuple:
    """``cfg`` with ``--challenger`` resolved once (pointer file or registry version), and its loaded artefact.

    Raises:
        InputError: The challenger's feature columns or their kinds differ from the
            champion's (one read serves both only when they are the same).
    """
    from dataclasses import replace

    from aemodel.scoring import RowScorer
    from aemodel.challenger import same_features
    from jobs.runtime.errors import InputError
    from jobs.lifecycle.registry import resolve_model
    from jobs.data.storage import check_no_overlap, check_uris

    if not cfg.challenger:
        return cfg, None, None
    uri, registry = resolve_model(cfg.challenger, cfg.tracking_uri, options, loader, "--challenger")
    check_uris({"--challenger": uri}, options)
    check_no_overlap(cfg.out, {"--challenger": uri}, options)
    challenger = loader(uri, options)
    differ = same_features(RowScorer(art), RowScorer(challenger))
    if differ:
        raise InputError(f"--challenger {cfg.challenger}: its feature columns differ from the model's "
                         f"({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}; model / challenger): one "
                         "read scores both only when they use the same columns")
    return replace(cfg, challenger=uri), challenger, registry


def model_figures(uri: str, art, threshold: float, override: bool) -> dict:
    """What comparison.json says of one model: where it is, its version, threshold and validation flag rate."""
    return {"uri": uri, "version": art.version, "threshold": threshold,
            "validation_rate": None if override else art.threshold.get("validation_fpr")}


def labelled_reference(cfg, art, challenger, options: dict) -> dict | None:
    """Both models' AUROC, precision and recall on ``--reference-data`` (labels in ``--label-column``)."""
    if not cfg.reference_data:
        return None
    from aemodel.scoring import RowScorer
    from jobs.data.datasets import open_parquet_input
    from jobs.runtime.errors import InputError

    specs = art.preprocessor.specs
    data = open_parquet_input(cfg.reference_data, options, specs=specs)
    if any(cfg.label_column not in f.schema.names for f in data.files):
        raise InputError(f"--reference-data {cfg.reference_data}: no column {cfg.label_column!r}")
    columns = [*(s.name for s in specs if s.name != cfg.label_column), cfg.label_column]
    table = pa.concat_tables(t for _, _, t in data.iter_tables(columns, specs, 1 << 20, (cfg.label_column,)))
    raw = table.column(cfg.label_column).to_pylist()
    values = {v for v in raw}
    if not values <= {0, 1, True, False} or len(values) < 2:
        raise InputError(f"--reference-data {cfg.reference_data}: column {cfg.label_column!r} must hold 0/1 "
                         f"(or false/true) with both classes present, found {sorted(map(str, values))[:5]}")
    labels = np.array([bool(v) for v in raw])
    return reference_metrics(table, labels, (RowScorer(art), RowScorer(challenger)))


def challenger_summary(compared: dict) -> dict:
    """The comparison's headline figures, as ``summary.json`` keeps them (the whole is comparison.json)."""
    ch, cc = compared["champion"], compared["challenger"]
    out = {"uri": cc["uri"], "version": cc["version"], "registry": cc.get("registry"),
           "anomaly_rate": cc["anomaly_rate"], "rate_vs_validation": cc["rate_vs_validation"],
           "champion_anomaly_rate": ch["anomaly_rate"], "spearman": compared["spearman"],
           "top_rows_shared": compared["top_rows_overlap"]["share"], "flagged": compared["flagged_overlap"]}
    if "reference" in compared:
        out["reference_auroc"] = {k: compared["reference"][k]["auroc"] for k in ("champion", "challenger")}
    return out


def challenger_lines(summary: dict) -> list[str]:
    """The console's lines on the challenger (none without one)."""
    c = summary.get("challenger")
    if not c:
        return []
    f = c["flagged"]
    lines = [f"  challenger     {c['uri']} (version {c['version']}): {100 * c['anomaly_rate']:.2f}% flagged "
             f"(model {100 * c['champion_anomaly_rate']:.2f}%), Spearman "
             + (f"{c['spearman']:.3f}" if c["spearman"] is not None else "-")
             + f", flagged by both {f['both']:,}, only the model {f['champion_only']:,}, only the challenger "
               f"{f['challenger_only']:,}; comparison.json"]
    if c.get("reference_auroc"):
        r = c["reference_auroc"]
        lines.append(f"  reference      AUROC model {r['champion']:.3f}, challenger {r['challenger']:.3f}")
    return lines


def comparison_tables(compared: dict | None, ids: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """report.html's champion-and-challenger tables: the figures, then the rows only one model flags."""
    if not compared:
        return []
    fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    rows = []
    for name in ("champion", "challenger"):
        m = compared[name]
        ref = (compared.get("reference") or {}).get(name) or {}
        rows.append([("model" if name == "champion" else "challenger") + f" ({m['version']})",
                     f"{m['anomaly_count']:,} ({100 * m['anomaly_rate']:.2f}%)", fmt(m["rate_vs_validation"], ".2f"),
                     fmt(ref.get("auroc")), fmt(ref.get("precision")), fmt(ref.get("recall"))])
    o, t = compared["flagged_overlap"], compared["top_rows_overlap"]
    figures = ("Model and challenger on the same rows (Spearman rank correlation "
               f"{fmt(compared['spearman'])}; top {t['n']} rows shared {t['shared']}; flagged by both {o['both']:,}, "
               f"only the model {o['champion_only']:,}, only the challenger {o['challenger_only']:,})",
               ["model", "rows flagged", "rate / validation rate", "reference AUROC", "precision", "recall"], rows)
    only = []
    for who, key in (("model", "only_champion"), ("challenger", "only_challenger")):
        for r in compared[key]:
            feats = ", ".join(f"{f['column']} ({100 * f['share']:.0f}%)" for f in (r.get("top_features") or []))
            only.append([who, ", ".join(f"{c}={r.get(c)}" for c in ids), fmt(r["anomaly_score"], ".4g"),
                         fmt(r["challenger_score"], ".4g"), feats or "-"])
    return [figures, ("Rows only one model flags (highest first, with the flagging model's largest errors)",
                      ["flagged by", "row", "anomaly_score", "challenger_score", "top features"], only)]
