"""``aescore train --entity-columns``: the entity models of a model bank, fitted by Ray tasks.

After the global model is fitted (``jobs.train``), the driver reads the training rows with
their entity columns, sorts them by entity, and hands the entities with at least
``--min-entity-rows`` rows to Ray tasks (about four tasks per CPU): each task fits its
entities stacked, with one torch thread (``aemodel.bank.fit_entities``), and returns one
part file, which the driver writes into the
run folder as it arrives. A few thousand entities are a few dozen tasks, not a few thousand
Ray Train runs. The index and the global model's ``model.json`` (holding the index's
checksum) are written last, by the commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import pyarrow as pa

from aemodel.bank import INDEX_FILE, PRIOR_EXCEEDANCES, bank_reference, entity_ranges, fit_entities
from aemodel.drift import pool
from aemodel.commit import OutputCommit
from aemodel.options import TrainingOptions
from aemodel.store import write_bytes
from jobs.data.datasets import ParquetInput
from jobs.runtime.errors import InputError

FLAGGED_SHOWN = 20
"""Entities named per verdict in model.json and the report (the index lists them all)."""


def check_entity_columns(columns: list[str], data: ParquetInput, flag: str = "--data") -> None:
    """Every entity column exists in every file, with a type whose values read as strings."""
    for c in columns:
        for f in data.files:
            if c not in f.schema.names:
                raise InputError(f"{flag} {f.uri}: no entity column {c!r} (--entity-columns)")
            t = f.schema.field(c).type
            if pa.types.is_nested(t) or pa.types.is_floating(t):
                raise InputError(f"{flag} {f.uri}: entity column {c!r} is {t}; entity values are ids (integers, "
                                 "strings, dates)")


def _read(data: ParquetInput, specs: list, columns: list[str]) -> pa.Table:
    names = [s.name for s in specs]
    tables = [t for _, _, t in data.iter_tables([*names, *columns], specs, 1 << 20, tuple(columns))]
    if not tables:
        return data.read_schema([*names, *columns], specs, tuple(columns)).empty_table()
    return pa.concat_tables(tables)


def _groups(ranges: list[tuple[str, int, int]], n: int) -> list[list[tuple[str, int, int]]]:
    """``ranges`` in at most ``n`` contiguous groups of similar row counts."""
    total = sum(b - a for _, a, b in ranges)
    out, current, rows = [], [], 0
    for r in ranges:
        current.append(r)
        rows += r[2] - r[1]
        if rows >= total / n and len(out) < n - 1:
            out.append(current)
            current, rows = [], 0
    return out + ([current] if current else [])


def train_bank(cfg, art, train_in: ParquetInput, val_in: ParquetInput | None, commit: OutputCommit,
               cpus: int) -> dict:
    """Fit the entity models into ``commit``'s run folder; returns the ``bank`` of the global model's ``model.json``.

    Args:
        cfg: The ``TrainConfig`` (``entity_columns``, ``min_entity_rows``, the training options).
        art: The global model (its preprocessor and threshold).
        train_in, val_in: The training (and validation) input.
        commit: The begun commit of the model prefix.
        cpus: CPUs of the Ray cluster the tasks run on.
    """
    import ray

    t0 = time.perf_counter()
    columns, specs = list(cfg.entity_columns), art.preprocessor.specs
    table, ranges = entity_ranges(_read(train_in, specs, columns), columns)
    val = None
    if val_in is not None:
        vtable, vranges = entity_ranges(_read(val_in, specs, columns), columns)
        val = {k: vtable.slice(a, b - a) for k, a, b in vranges}
    big = [r for r in ranges if r[2] - r[1] >= cfg.min_entity_rows]
    entries = {k: {"rows": b - a, "status": "too_few_rows"} for k, a, b in ranges if b - a < cfg.min_entity_rows}
    params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainingOptions) if f.init}
    threshold, quantile = art.threshold_value, cfg.quantile
    fit = ray.remote(num_cpus=1)(fit_entities)
    pending = {}
    for i, group in enumerate(_groups(big, max(1, 4 * cpus))):
        a0, b1 = group[0][1], group[-1][2]
        chunk = table.take(pa.array(range(a0, b1)))  # its own buffers: only these rows travel
        local = [(k, a - a0, b - a0) for k, a, b in group]
        part_val = {k: val[k] for k, _, _ in group if k in val} if val is not None else None
        pending[fit.remote(params, art.preprocessor, chunk, local, part_val, threshold, quantile)] = i
    print(f"bank: fitting {len(big):,} entity models ({len(entries):,} entities below --min-entity-rows "
          f"{cfg.min_entity_rows}) in {len(pending)} Ray tasks", flush=True)
    pooled = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        blob, found, references = ray.get(done[0])
        if references:
            pooled.append(references)
        part = f"entities/part-{i:05d}.bin"
        if blob:
            write_bytes(commit.fs, commit.path_of(part), blob)
        entries.update({k: ({**e, "part": part} if e["status"] == "ok" else e) for k, e in found.items()})
    index = json.dumps({"format": "aescore-bank", "entity_columns": columns, "min_entity_rows": cfg.min_entity_rows,
                        "entities": entries}, sort_keys=True).encode()
    write_bytes(commit.fs, commit.path_of(INDEX_FILE), index)
    summary = bank_summary(cfg, entries, table.num_rows, index, time.perf_counter() - t0,
                           null_rows=train_in.num_rows - table.num_rows)
    # The rows the global model scores, at the global model's validation share of them.
    global_rows = summary["rows"]["total"] * summary["rows"]["global_only_share"] * art.reference["count"] / max(
        art.preprocessor.train_rows + art.reference["count"], 1)
    summary["reference"] = bank_reference(pool(pooled) if pooled else None, art.reference, global_rows)
    return summary


def bank_summary(cfg, entries: dict, entity_rows: int, index: bytes, seconds: float, null_rows: int) -> dict:
    """``model.json``'s ``bank``: the index's checksum, counts, and the entities each verdict flags."""
    ok = {k: e for k, e in entries.items() if e["status"] == "ok"}
    flagged: dict[str, list[str]] = {}
    for k, e in sorted(ok.items()):
        for check in e["flags"]:
            flagged.setdefault(check, []).append(k)
    model_rows = sum(e["rows"] for e in ok.values())
    return {
        "entity_columns": list(cfg.entity_columns), "min_entity_rows": cfg.min_entity_rows,
        "index_sha256": hashlib.sha256(index).hexdigest(), "preprocessing": "shared with the global model",
        "threshold_prior_exceedances": PRIOR_EXCEEDANCES,
        "entities": {"seen": len(entries), "models": len(ok),
                     "too_few_rows": sum(e["status"] == "too_few_rows" for e in entries.values()),
                     "failed": sorted(k for k, e in entries.items() if e["status"] == "failed")[:FLAGGED_SHOWN],
                     "failed_count": sum(e["status"] == "failed" for e in entries.values())},
        "rows": {"total": entity_rows + null_rows, "entity_models": model_rows, "null_entity": null_rows,
                 "global_only_share": 1 - model_rows / max(entity_rows + null_rows, 1)},
        "flagged": {c: {"count": len(v), "entities": v[:FLAGGED_SHOWN]} for c, v in sorted(flagged.items())},
        "seconds": round(seconds, 2),
    }
