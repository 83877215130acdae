"""Summary figures of the suite: mean AUROC ranks, wins against IsolationForest, worst gap.

``results`` everywhere maps table name -> detector column -> per-seed AUROCs (same seeds
and splits for every column). A detector's rank on a table comes from its mean AUROC over
seeds among the compared detectors (1 = best, ties share the average rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.suite.common import auroc_cell, paired_difference

TARGET = "target=auroc:best,rank:best,wins:0.75,gap:0.03"
"""The goal: the best mean AUROC and mean rank of all detectors, above IsolationForest on 75% of the
tables, never more than 0.03 below the best reference on a table."""


@dataclass(frozen=True)
class Summary:
    """Figures of one subject (aescore or a variant) on a set of tables.

    Attributes:
        ranks: Mean rank of every compared detector (the subject and the references).
        aurocs: Mean AUROC over the tables of every compared detector.
        wins: Tables where the subject's mean AUROC is above IsolationForest's.
        tables: Tables compared.
        worst_gap: Largest (best reference - subject) mean AUROC over the tables; > 0 means behind.
        worst_table: The table of ``worst_gap``.
    """

    ranks: dict[str, float]
    aurocs: dict[str, float]
    wins: int
    tables: int
    worst_gap: float
    worst_table: str


def _ranks(means: dict[str, float]) -> dict[str, float]:
    """Rank 1 for the highest mean AUROC; ties share the average rank."""
    from scipy.stats import rankdata

    keys = list(means)
    return {k: float(r) for k, r in zip(keys, rankdata([-means[k] for k in keys], method="average"))}


def summarise(results: dict[str, dict[str, np.ndarray]], tables: list[str], subject: str,
              references: list[str]) -> Summary | None:
    """The subject's figures against ``references`` on ``tables`` (None if no table)."""
    if not tables:
        return None
    total = {k: 0.0 for k in (subject, *references)}
    auc = dict.fromkeys(total, 0.0)
    wins, gaps = 0, []
    for name in tables:
        means = {k: float(results[name][k].mean()) for k in total}
        for k, r in _ranks(means).items():
            total[k] += r
            auc[k] += means[k]
        wins += means[subject] > means["iforest"]
        gaps.append((max(means[r] for r in references) - means[subject], name))
    worst_gap, worst_table = max(gaps)
    n = len(tables)
    return Summary({k: v / n for k, v in total.items()}, {k: v / n for k, v in auc.items()}, wins, n, worst_gap,
                   worst_table)


def quality_line(prefix: str, s: Summary | None, subject: str = "aescore") -> str:
    """``<prefix>: rank=.. wins_vs_iforest=k/n worst_gap=.. target=...`` (or why it is missing)."""
    if s is None:
        return f"{prefix}: no table of this half in this run"
    best = max(s.aurocs, key=lambda k: s.aurocs[k])
    return (f"{prefix}: auroc={s.aurocs[subject]:.3f} (best {best} {s.aurocs[best]:.3f}) rank={s.ranks[subject]:.2f} "
            f"wins_vs_iforest={s.wins}/{s.tables} worst_gap={s.worst_gap:+.3f} ({s.worst_table}) {TARGET}")


def meets_target(s: Summary, subject: str) -> bool:
    """``TARGET``: the best mean AUROC and mean rank, wins over IsolationForest on >= 75% of tables, worst gap <= 0.03."""
    return (s.aurocs[subject] >= max(s.aurocs.values()) and s.ranks[subject] <= min(s.ranks.values())
            and s.wins >= 0.75 * s.tables and s.worst_gap <= 0.03)


def reference_line(prefix: str, results: dict[str, dict[str, np.ndarray]], tables: list[str],
                   detectors: list[str]) -> str:
    """Every detector held to the same target against all the others: is the target reachable here at all?

    ``<prefix>: knn rank=.. wins_vs_iforest=k/n worst_gap=.. (table); ...; met by: <names or none>``
    """
    if not tables:
        return f"{prefix}: -"
    parts, met = [], []
    for d in detectors:
        s = summarise(results, tables, d, [r for r in detectors if r != d])
        wins = "-" if d == "iforest" else f"{s.wins}/{s.tables}"
        parts.append(f"{d} auroc={s.aurocs[d]:.3f} rank={s.ranks[d]:.2f} wins_vs_iforest={wins} "
                     f"worst_gap={s.worst_gap:+.3f} ({s.worst_table})")
        if d != "iforest" and meets_target(s, d):
            met.append(d)
    return f"{prefix}: " + "; ".join(parts) + f"; target met by: {', '.join(met) or 'none'}"


def ranks_line(prefix: str, s: Summary | None) -> str:
    """Every compared detector's mean rank, best first, and where the worst gap is."""
    if s is None:
        return f"{prefix}: -"
    order = sorted(s.ranks, key=lambda k: s.ranks[k])
    return (f"{prefix}: " + " ".join(f"{k}={s.ranks[k]:.2f}" for k in order)
            + f" (worst gap on {s.worst_table})")


def auroc_table(results: dict[str, dict[str, np.ndarray]], info: dict[str, str], columns: list[str],
                headers: list[str]) -> str:
    """Markdown table: one row per table, one column per detector (mean AUROC and range over seeds)."""
    lines = ["| table | kind | half | rows x cols (num/bin/cat) | anomalies | " + " | ".join(headers) + " |",
             "|---|---|---|---|---|" + "---|" * len(columns)]
    for name, res in results.items():
        best = max(columns, key=lambda k: res[k].mean())
        cells = [("**" + auroc_cell(res[k]) + "**") if k == best else auroc_cell(res[k]) for k in columns]
        lines.append(f"| {name} | {info[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_lines(results: dict[str, dict[str, np.ndarray]], subject: str, references: list[str]) -> list[str]:
    """Per table: subject minus each reference, per-seed paired (mean +/- standard error, seeds won)."""
    return [f"paired {name} ({subject}): " + "; ".join(
        paired_difference(res[subject] - res[r], r, label=subject) for r in references)
        for name, res in results.items()]
