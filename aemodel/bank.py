"""A model bank: one autoencoder per entity (user, device, tenant) beside one global model.

Layout, inside the artefact's run folder (``aemodel.artifact``; the global model's files as
for any model, its ``model.json`` holding ``bank`` with the index's checksum)::

    entities/index.json        entity key -> part file, byte offset, length, sha256; rows and verdicts
    entities/part-NNNNN.bin    entity models back to back (``pack_entity``)

Decisions:

- **Preprocessing is shared**: every entity model encodes with the global model's
  preprocessor, fitted on all training rows. A few hundred rows give noisy quantiles and
  miss categories another entity has; one encoding also serves every entity in a batch. Each
  entity's own validation rows still set its per-column error scales, score terms and
  threshold, so "normal" is measured against the entity's own rows.
- **Thresholds are shrunk** towards the global one (``shrink_threshold``): an entity's
  quantile from few validation rows rests on a handful of rows above it.
- **Routing**: a row goes to its entity's model, else (an entity unseen in training, with
  fewer than ``min_entity_rows`` rows, whose model failed a diagnostic, or a null entity
  value) to the global model; ``model_scope`` says which.

Entity keys are the entity columns' values as strings, joined by ``ENTITY_SEP``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from aemodel.artifact import ArtifactError, ModelArtifact
from aemodel.drift import pool
from aemodel.model import AutoencoderConfig
from aemodel.preprocess import Preprocessor
from aemodel.leakage import BloomFilter, row_hashes
from aemodel.metrics import histogram_percentile
from aemodel.scoring import RowScorer, top_features
from aemodel.stack import ModelTerms, stacked_figures
from aemodel.store import join, read_bytes, url_to_fs

ENTITY_SEP = "\x1f"
INDEX_FILE = "entities/index.json"
MODEL_SCOPE = "model_scope"
PRIOR_EXCEEDANCES = 10.0
"""Shrinkage prior, in validation rows above the threshold: an entity whose threshold rests on
as many rows above it as this gets half its own threshold and half the global one."""


def entity_keys(table: pa.Table, columns: list[str]) -> np.ndarray:
    """Each row's entity key (object array of str), None where any entity column is null."""
    parts, null = [], np.zeros(table.num_rows, dtype=bool)
    for c in columns:
        col = table.column(c)
        null |= np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        parts.append(np.asarray(pc.cast(col, pa.string()).to_numpy(zero_copy_only=False), dtype=object))
    keys = parts[0] if len(parts) == 1 else np.array([ENTITY_SEP.join(v) if all(x is not None for x in v) else None
                                                      for v in zip(*parts)], dtype=object)
    keys[null] = None
    return keys


def entity_codes(table: pa.Table, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each row's entity as a code into the returned keys (as ``entity_keys``), -1 where any entity column is null.

    A hash table (Arrow's dictionary encoding), not a sort of the batch's key strings.
    """
    keys = (pc.cast(table.column(columns[0]), pa.string()) if len(columns) == 1
            else pa.chunked_array([pa.array(entity_keys(table, columns), type=pa.string())]))
    encoded = pc.dictionary_encode(keys).combine_chunks() if keys.num_chunks else None
    if encoded is None or not len(encoded):
        return np.full(table.num_rows, -1, dtype=np.int64), []
    codes = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return codes, encoded.dictionary.to_pylist()


def shrink_threshold(threshold: dict, global_value: float, validation_rows: int, quantile: float) -> dict:
    """An entity's threshold pulled towards the global one, by how many validation rows its own rests on.

    The weight of the entity's own value is ``m / (m + PRIOR_EXCEEDANCES)``, where
    ``m = validation_rows * (1 - quantile)`` is the expected number of its validation rows
    above its threshold: the quantile estimate's noise shrinks as ``m`` grows. Thresholds are
    combined on the log scale (scores are positive and right-skewed).
    """
    own = threshold.get("value")
    m = max(validation_rows, 0) * (1.0 - quantile)
    weight = m / (m + PRIOR_EXCEEDANCES)
    if own is None or global_value is None:
        return threshold
    if own > 0 and global_value > 0:
        value = math.exp(weight * math.log(own) + (1 - weight) * math.log(global_value))
    else:
        value = weight * own + (1 - weight) * global_value
    return {**threshold, "value": value, "entity_value": own, "global_value": global_value,
            "shrinkage_weight": weight, "validation_rows": validation_rows}


def pack_entity(art: ModelArtifact) -> bytes:
    """One entity model as bytes: its description (no preprocessor: the bank's), weights, Bloom filter."""
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in art.state_dict.items()})
    bloom = art.training_rows.to_bytes() if art.training_rows is not None else b""
    head = json.dumps({
        "model_config": art.model_config.to_dict(), "threshold": art.threshold, "reference": art.reference,
        "history": art.history, "metrics": art.metrics, "run_id": art.run_id, "weights_bytes": len(weights),
        "training_rows": ({**art.training_rows_info, "n_bits": art.training_rows.n_bits,
                           "n_hashes": art.training_rows.n_hashes} if art.training_rows is not None else None),
    }, sort_keys=True).encode()
    return len(head).to_bytes(8, "little") + head + weights + bloom


def unpack_entity(blob: bytes, preprocessor: Preprocessor, version: str) -> ModelArtifact:
    """``pack_entity``'s bytes as an artefact using the bank's ``preprocessor``."""
    n = int.from_bytes(blob[:8], "little")
    head = json.loads(blob[8:8 + n])
    weights = blob[8 + n:8 + n + head["weights_bytes"]]
    bloom = blob[8 + n + head["weights_bytes"]:]
    info = dict(head["training_rows"] or {})
    rows = BloomFilter(info.pop("n_bits"), info.pop("n_hashes"), bloom) if bloom else None
    return ModelArtifact(model_config=AutoencoderConfig(**head["model_config"]), preprocessor=preprocessor,
                         state_dict=load_safetensors(weights), threshold=head["threshold"],
                         reference=head["reference"], history=head["history"], metrics=head["metrics"],
                         run_id=head["run_id"], training_rows=rows, training_rows_info=info, version=version)


def entity_ranges(table: pa.Table, columns: list[str]) -> tuple[pa.Table, list[tuple[str, int, int]]]:
    """``table`` sorted by entity, and each entity's (key, start, stop) in it; rows with a null entity are left out."""
    keys = entity_keys(table, columns)
    keep = np.flatnonzero(keys != None)  # noqa: E711 - elementwise on an object array
    order = keep[np.argsort(keys[keep].astype(str), kind="stable")]
    sorted_keys = keys[order]
    table = table.take(pa.array(order))
    if not len(order):
        return table, []
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(order)]])
    return table, [(sorted_keys[a], int(a), int(b)) for a, b in zip(starts, stops)]


def read_index(location: str, bank: dict, storage_options: dict | None = None) -> dict:
    """The bank's index, its checksum checked against the one in ``model.json``.

    Raises:
        ArtifactError: The index is missing or does not match its checksum.
    """
    fs, path = url_to_fs(location, storage_options)
    data = read_bytes(fs, join(path, INDEX_FILE))
    if data is None or hashlib.sha256(data).hexdigest() != bank["index_sha256"]:
        raise ArtifactError(f"model bank at {location}: {INDEX_FILE} is missing or does not match its checksum")
    return json.loads(data)


class ModelBank:
    """The entity models of a bank, each read (one range read, checksum checked) the first time a row needs it.

    What scoring needs of a model is kept (``aemodel.stack.ModelTerms``: weights, scales,
    terms, histogram, filter), not its artefact: tens of kilobytes per entity met.
    """

    def __init__(self, art: ModelArtifact, storage_options: dict | None = None, device: str = "cpu",
                 precision: str = "fp32"):
        self.art, self.device, self.precision = art, device, precision
        self.columns: list[str] = art.bank["entity_columns"]
        self.fs, self.path = url_to_fs(art.location, storage_options)
        self.index: dict = read_index(art.location, art.bank, storage_options)["entities"]
        self.models: dict[str, ModelTerms] = {}

    def artifact(self, key: str) -> ModelArtifact | None:
        """The entity's model as an artefact (the bank's preprocessor), or None where the global model scores its rows."""
        entry = self.index.get(key) if key is not None else None
        if entry is None or "part" not in entry:
            return None
        start = entry["offset"]
        blob = self.fs.cat_file(join(self.path, entry["part"]), start=start, end=start + entry["bytes"])
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"model bank at {self.art.location}: the model of entity {key!r} does not "
                                "match its checksum (corrupt or tampered)")
        return unpack_entity(blob, self.art.preprocessor, f"{self.art.version}/{entry['sha256'][:8]}")

    def terms(self, key: str | None) -> ModelTerms | None:
        """What scoring needs of the entity's model, or None where the global model scores its rows."""
        if key not in self.models:
            art = self.artifact(key)
            if art is None:
                return None
            self.models[key] = ModelTerms.of(RowScorer(art, self.device, self.precision, network=False))
        return self.models[key]


class BankScorer(RowScorer):
    """``RowScorer``'s ``output_table`` for a bank: each row scored by its entity's model, or the global one.

    The batch is encoded once (the preprocessor is shared) and its Bloom-filter hashes taken
    once; the models present in the batch, the global one among them, run stacked
    (``aemodel.stack``: one batched pass per layer over every model's rows), and the rows
    file's table is assembled once. The rows keep their order and gain ``model_scope``.
    """

    def __init__(self, art: ModelArtifact, device: str = "cpu", precision: str = "fp32",
                 storage_options: dict | None = None):
        super().__init__(art, device, precision)
        self.bank = ModelBank(art, storage_options, device, precision)
        self.global_terms = ModelTerms.of(self)
        self.stores: dict = {}  # aemodel.stack.ShapeStore per shape, across batches

    def output_table(self, batch: pa.Table, passthrough: Iterable[str] = (), top_k: int = 0,
                     column_errors: bool = False, partials: bool = False) -> pa.Table:
        raw: dict = {}
        enc = self.preprocessor.transform(batch, raw)
        codes, keys = entity_codes(batch, self.bank.columns)
        order = np.argsort(codes, kind="stable")  # null (-1) first, then each entity's rows in batch order
        bounds = np.cumsum(np.bincount(codes + 1, minlength=len(keys) + 1))[:-1]
        members, groups, global_rows = [], [], []
        for key, idx in zip([None, *keys], np.split(order, bounds)):
            terms = None if not len(idx) or key is None else self.bank.terms(key)
            if terms is None:
                global_rows.append(idx)
            else:
                members.append(terms)
                groups.append(idx)
        own = np.ones(batch.num_rows, dtype=bool)
        if global_rows or not members:  # an empty batch: the global model, on no rows
            members.append(self.global_terms)
            groups.append(np.sort(np.concatenate(global_rows)) if global_rows else np.zeros(0, dtype=np.int64))
            own[groups[-1]] = False
        autocast = ({"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
                    if self.device.type == "cuda" else None)
        hashes = row_hashes(batch, self.preprocessor.specs, raw) if self.artifact.training_rows is not None else None
        fig = stacked_figures(members, groups, enc, self.device, hashes, autocast, self.stores)
        res = {k: fig[k] for k in ("anomaly_score", "score_percentile", "recon_error", "is_anomaly")}
        res.update(missing_cells=enc["missing_cells"], unseen_cells=enc["unseen_cells"])
        if top_k:
            res["top_features"] = top_features(fig["losses"], enc["observed"], self.columns, top_k, fig["ref_mean"],
                                               fig["ref_std"], enc["missing_cells"], fig["recon_error"])
        if column_errors:
            res["column_errors"] = np.where(enc["observed"] > 0, fig["losses"], np.nan).astype(np.float32)
        table = self.assemble(batch, res, list(passthrough), top_k, column_errors, fig.get("seen"))
        table = table.append_column(MODEL_SCOPE, pa.array(np.where(own, "entity", "global"), type=pa.string()))
        if partials:
            for name, col in self.partial_columns(batch, enc, raw, res["anomaly_score"]).items():
                table = table.append_column(name, col)
        return table


def fit_entities(params: dict, pp: Preprocessor, table: pa.Table, ranges: list[tuple[str, int, int]],
                 val: dict[str, pa.Table] | None, global_threshold: float | None, quantile: float
                 ) -> tuple[bytes, dict[str, dict]]:
    """Fit one model per entity of ``ranges`` (rows ``table[start:stop]``) in this process, stacked
    (``AnomalyAutoencoder.fit_each``).

    Args:
        params: ``AnomalyAutoencoder``'s parameters (the training options; one thread).
        pp: The global model's preprocessor, shared by every entity model.
        table: Rows sorted by entity (``entity_ranges``).
        ranges: (key, start, stop) of each entity to fit.
        val: Each entity's validation rows from a separate validation input, if any; else
            its rows' row-hash split.
        global_threshold: The global model's threshold, which entity thresholds shrink towards.
        quantile: The threshold's validation quantile.

    Returns:
        The part file's bytes (``pack_entity`` blobs back to back); each entity's index
        entry: rows, status (``ok``, or ``failed`` with the reason: its rows are scored by the
        global model), its verdicts, and for a model its offset, length and sha256 in the part;
        and the models' validation summaries pooled (``aemodel.drift.pool``; None without a model).
    """
    from aemodel.errors import TrainingError
    from aemodel.estimator import AnomalyAutoencoder

    buf, entries, references = bytearray(), {}, []
    fitted = AnomalyAutoencoder(**params).fit_each(
        [(table.slice(start, stop - start), (val or {}).get(key)) for key, start, stop in ranges], preprocessor=pp)
    for (key, start, stop), det in zip(ranges, fitted):
        entry: dict = {"rows": stop - start}
        if isinstance(det, (TrainingError, ValueError)):
            entries[key] = {**entry, "status": "failed", "reason": " ".join(str(det).split())[:300]}
            continue
        if isinstance(det, Exception):
            raise det
        art = det.artifact_
        art.threshold = shrink_threshold(art.threshold, global_threshold,
                                         int(art.threshold.get("validation_rows") or art.reference.get("count", 0)),
                                         quantile)
        references.append(at_threshold(art.reference, art.threshold["value"]))
        blob = pack_entity(art)
        m = art.metrics
        entries[key] = {**entry, "status": "ok", "offset": len(buf), "bytes": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest(), "threshold": art.threshold["value"],
                        "val_loss": m.get("val_loss"), "train_loss": m.get("train_loss"),
                        "flags": sorted(c["check"] for c in m.get("diagnostics", []) if c["status"] != "ok")}
        buf += blob
    return bytes(buf), entries, pool(references) if references else None


def at_threshold(reference: dict, threshold: float) -> dict:
    """A model's validation summary with its share above ``threshold`` (a shrunk one) read off its histogram."""
    above = 1.0 - float(histogram_percentile(reference["histogram"], np.array([threshold]))[0]) / 100.0
    return {**reference, "above_threshold_fraction": above}


def bank_reference(entity_pool: dict | None, global_reference: dict, global_rows: float) -> dict:
    """The validation score distribution a bank's scored rows are compared with (nightly drift, rates).

    The entity models' validation rows, each scored by its own model (``entity_pool``: their
    summaries pooled), plus, for the rows the global model scores (entities below
    ``min_entity_rows``, failed, null), the global model's validation distribution weighted
    to ``global_rows`` rows.
    """
    parts = [entity_pool] if entity_pool else []
    n = global_reference.get("count") or 0
    if global_rows > 0 and n:
        f = global_rows / n
        h = global_reference["histogram"]
        parts.append({**global_reference, "count": global_rows,
                      "histogram": {**h, "counts": [c * f for c in h["counts"]], "underflow": h["underflow"] * f,
                                    "overflow": h["overflow"] * f}})
    pooled = pool(parts) if parts else dict(global_reference)
    pooled["nonfinite"] = 0
    return pooled


def validation_reference(art: ModelArtifact) -> dict:
    """What a model's scores are compared with: a bank's pooled reference, else the model's own."""
    return (getattr(art, "bank", None) or {}).get("reference") or art.reference


def scorer_for(art: ModelArtifact, device: str = "cpu", precision: str = "fp32",
               storage_options: dict | None = None) -> RowScorer:
    """The scorer of an artefact: a ``BankScorer`` for a bank (its entity models read as rows need them)."""
    if art.bank:
        return BankScorer(art, device, precision, storage_options)
    return RowScorer(art, device, precision)
