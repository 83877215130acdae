"""Scoring with a model bank: per-entity figures of the summary, and what a bank cannot do.

Each row's ``is_anomaly`` uses its own model's threshold (its entity's, or the global
model's), so a bank's anomaly count is the count of flagged rows, not of scores above one
threshold; the summary's ``entities`` gives rows and flagged rows per model scope, and the
entities with the highest anomaly rate.
"""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa

from aemodel.aggregates import BlockAggregate
from aemodel.bank import MODEL_SCOPE, entity_keys
from jobs.runtime.errors import InputError

NULL_ENTITY = "(null)"
HIGHEST_SHOWN = 20
MIN_ROWS_RANKED = 20
"""Entities with fewer scored rows are not ranked by anomaly rate (one flagged row of three is not a rate)."""


class EntityAggregate(BlockAggregate):
    """Rows, flagged rows and rows an entity model scored, per entity (a dict of small lists, merged by sum)."""

    name = "entities"

    def __init__(self, columns: list[str]):
        self.columns = columns

    def aggregate_block(self, table: pa.Table) -> bytes:
        keys = entity_keys(table, self.columns)
        keys[keys == None] = NULL_ENTITY  # noqa: E711 - elementwise on an object array
        uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
        flagged = np.asarray(table.column("is_anomaly").to_numpy(zero_copy_only=False), dtype=np.int64)
        own = np.asarray(table.column(MODEL_SCOPE).to_numpy(zero_copy_only=False) == "entity", dtype=np.int64)
        counts = [np.bincount(inverse, weights=w, minlength=len(uniq)).astype(np.int64)
                  for w in (np.ones(len(keys)), flagged, own)]
        return pickle.dumps({k: [int(c[i]) for c in counts] for i, k in enumerate(uniq.tolist())})

    def combine(self, current: bytes, new: bytes) -> bytes:
        a, b = pickle.loads(current), pickle.loads(new)
        for k, v in b.items():
            a[k] = [x + y for x, y in zip(a[k], v)] if k in a else v
        return pickle.dumps(a)

    def finalize(self, accumulator: bytes | None) -> dict:
        per = pickle.loads(accumulator) if accumulator else {}
        rows = sum(v[0] for v in per.values())
        own = sum(v[2] for v in per.values())
        ranked = sorted(((k, v) for k, v in per.items() if v[0] >= MIN_ROWS_RANKED),
                        key=lambda kv: (-kv[1][1] / kv[1][0], -kv[1][0], kv[0]))
        return {"entities": len(per), "anomaly_count": sum(v[1] for v in per.values()),
                "rows_by_scope": {"entity": own, "global": rows - own},
                "global_share": (rows - own) / rows if rows else 0.0,
                "entities_by_scope": {"entity": sum(1 for v in per.values() if v[2]),
                                      "global_only": sum(1 for v in per.values() if not v[2])},
                "highest_rate": [{"entity": k, "rows": v[0], "anomaly_count": v[1], "anomaly_rate": v[1] / v[0],
                                  "scope": "entity" if v[2] else "global"} for k, v in ranked[:HIGHEST_SHOWN]]}


def check_bank_options(cfg, art) -> None:
    """Refuse what a bank cannot do yet: a --threshold override (each entity has its own) and a challenger."""
    if not art.bank:
        return
    if cfg.threshold is not None:
        raise InputError(f"--threshold {cfg.threshold}: {cfg.model} is a model bank with one threshold per entity; "
                         "it takes no single override")
    if cfg.challenger:
        raise InputError(f"--challenger {cfg.challenger}: {cfg.model} is a model bank; comparing a bank with "
                         "another model in one read is not supported")


def bank_lines(entities: dict | None) -> list[str]:
    """The console's lines on a bank's entities (none for one model)."""
    if not entities:
        return []
    top = ", ".join(f"{e['entity']} {100 * e['anomaly_rate']:.1f}%" for e in entities["highest_rate"][:3])
    return [f"  entities       {entities['entities']:,} ({entities['entities_by_scope']['entity']:,} with their own "
            f"model); {100 * entities['global_share']:.1f}% of rows scored by the global model"
            + (f"; highest rates: {top}" if top else "")]
