"""A challenger model scored beside the champion, on the same batch: its columns, and what the summary compares.

The rows keep the champion's columns and gain ``challenger_score`` and
``challenger_is_anomaly`` (the challenger's own threshold). Rows that the challenger flags
and the champion does not also carry the challenger's top features in a partial column
(``CHALLENGER_TOP``, never written): the comparison lists them, and computing them for
those rows only costs next to nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from aemodel.scoring import PARTIAL_PREFIX, RowScorer

CHALLENGER_SCORE = "challenger_score"
CHALLENGER_FLAG = "challenger_is_anomaly"
CHALLENGER_COLUMNS = (CHALLENGER_SCORE, CHALLENGER_FLAG)
CHALLENGER_TOP = PARTIAL_PREFIX + "challenger_top_features"


def same_features(champion: RowScorer, challenger: RowScorer) -> list[str]:
    """Why the two models cannot share one read (their feature columns or kinds differ), or [] when they can."""
    a = {s.name: s.kind for s in champion.preprocessor.specs}
    b = {s.name: s.kind for s in challenger.preprocessor.specs}
    return sorted(f"{n} ({a.get(n, 'absent')} / {b.get(n, 'absent')})" for n in a.keys() | b.keys()
                  if a.get(n) != b.get(n))


def challenger_columns(challenger: RowScorer, batch: pa.Table, champion_flags: np.ndarray,
                       top_k: int) -> dict[str, pa.Array]:
    """The challenger's columns for ``batch``: score, flag and (partial) top features where only it flags."""
    res = challenger.score_table(batch)
    flags = np.asarray(res["is_anomaly"], dtype=bool)
    cols = {CHALLENGER_SCORE: pa.array(res["anomaly_score"], type=pa.float32()),
            CHALLENGER_FLAG: pa.array(flags, type=pa.bool_())}
    only = np.flatnonzero(flags & ~np.asarray(champion_flags, dtype=bool))
    tops: list[str | None] = [None] * batch.num_rows
    if len(only) and top_k:
        feats = challenger.score_table(batch.take(pa.array(only)), top_k=top_k)["top_features"].to_pylist()
        for i, f in zip(only.tolist(), feats):
            tops[i] = json.dumps(f)
    cols[CHALLENGER_TOP] = pa.array(tops, type=pa.string())
    return cols
