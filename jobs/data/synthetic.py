"""Synthetic mixed-type tabular data with injected anomalies (demo, tests, benchmarks).

Normal rows come from a low-dimensional latent model, so their columns are correlated
and an autoencoder can compress them. Anomalous rows break that structure: each of them
takes its column values from unrelated rows (marginals unchanged, joint structure gone),
and some also get an out-of-range value. The label column is never a feature.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.runtime.errors import OutputError
from aemodel.store import entry_names, url_to_fs

LABEL = "is_injected_anomaly"
ROW_ID = "row_id"
N_NUMERIC, N_BINARY, CATEGORY_SIZES = 8, 3, (4, 6)


def make_mixed_table(n_rows: int, seed: int = 0, anomaly_fraction: float = 0.03, start_id: int = 0,
                     missing_fraction: float = 0.01) -> pa.Table:
    """``n_rows`` rows: row_id, 8 numeric (mixed scales, one near-constant), 3 bool, 2 string columns, label.

    The structure (loadings) depends only on a fixed seed, so tables made with different
    ``seed`` values are samples of the same distribution.
    """
    structure = np.random.default_rng(12345)
    rng = np.random.default_rng(seed)
    k = 3
    w_num = structure.normal(size=(k, N_NUMERIC))
    w_bin = structure.normal(size=(k, N_BINARY))
    w_cat = [structure.normal(size=(k, c)) * 2.0 for c in CATEGORY_SIZES]
    scales = np.array([1.0, 10.0, 1000.0, 0.01, 5.0, 1.0, 100.0, 1.0])
    offsets = np.array([0.0, 50.0, 1e4, 0.0, -3.0, 1.0, 0.0, 0.0])

    z = rng.normal(size=(n_rows, k))
    num = (z @ w_num + 0.1 * rng.normal(size=(n_rows, N_NUMERIC))) * scales + offsets
    num[:, 7] = 42.0 + 1e-9 * rng.normal(size=n_rows)  # near-constant column
    bins = (z @ w_bin + 0.2 * rng.normal(size=(n_rows, N_BINARY))) > 0
    cats = [np.argmax(z @ w + 0.3 * rng.gumbel(size=(n_rows, w.shape[1])), axis=1) for w in w_cat]

    labels = rng.random(n_rows) < anomaly_fraction
    idx = np.flatnonzero(labels)
    if idx.size:
        def donor() -> np.ndarray:
            return rng.integers(0, n_rows, size=idx.size)
        for j in range(N_NUMERIC - 1):
            num[idx, j] = num[donor(), j]
        for j in range(N_BINARY):
            bins[idx, j] = bins[donor(), j]
        for c in cats:
            c[idx] = c[donor()]
        extreme = idx[rng.random(idx.size) < 0.3]
        num[extreme, 0] += rng.choice([-6.0, 6.0], size=extreme.size) * scales[0] * 3

    cols: dict[str, pa.Array] = {ROW_ID: pa.array(np.arange(start_id, start_id + n_rows, dtype=np.int64))}
    missing = rng.random(n_rows) < missing_fraction
    for j in range(N_NUMERIC):
        cols[f"num_{j}"] = pa.array(num[:, j], mask=missing if j == 1 else None)
    for j in range(N_BINARY):
        cols[f"flag_{j}"] = pa.array(bins[:, j])
    for i, c in enumerate(cats):
        cols[f"cat_{i}"] = pa.array([f"c{i}_{v}" for v in c])
    cols[LABEL] = pa.array(labels)
    return pa.table(cols)


SHARD = re.compile(r"part-\d{5}\.parquet")
"""The names ``write_shards`` gives its files: the only files it replaces."""


def check_shard_folder(uri: str, storage_options: dict | None = None) -> None:
    """Refuse a folder holding anything but ``write_shards``' own files (before anything is written).

    Raises:
        OutputError: ``uri`` is a file, or holds a file or folder ``write_shards`` did not write.
    """
    fs, path = url_to_fs(uri, storage_options)
    if fs.isfile(path):
        raise OutputError(f"{uri} is a file; the data is written as a folder of Parquet files there")
    foreign = sorted(e for e in entry_names(fs, path) if not SHARD.fullmatch(e))
    if foreign:
        raise OutputError(f"{uri} already holds files that aescore did not write ({', '.join(foreign[:5])}); "
                          "choose another --out")


def write_shards(table: pa.Table, uri: str, n_shards: int, storage_options: dict | None = None) -> list[str]:
    """Write ``table`` as ``n_shards`` Parquet files under ``uri``, replacing only earlier ``part-NNNNN.parquet`` files.

    Raises:
        OutputError: The folder holds anything else (``check_shard_folder``); nothing is deleted then.
    """
    check_shard_folder(uri, storage_options)
    fs, path = url_to_fs(uri, storage_options)
    for name in entry_names(fs, path):
        if SHARD.fullmatch(name):
            fs.rm(f"{path.rstrip('/')}/{name}")
    fs.makedirs(path, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, n_shards + 1).astype(int)
    out = []
    for i in range(n_shards):
        p = f"{path.rstrip('/')}/part-{i:05d}.parquet"
        with fs.open(p, "wb") as f:
            pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), f)
        out.append(fs.unstrip_protocol(p))
    return out


ENTITY = "entity_id"
KIND = "anomaly_kind"


def make_entity_table(n_entities: int, rows_per_entity: int, seed: int = 0, anomaly_fraction: float = 0.02,
                      n_features: int = 8, start_id: int = 0, sample: int = 0) -> pa.Table:
    """Rows of many entities, each with its own normal behaviour, and two kinds of anomalies.

    Entity ``e``'s normal rows are ``mu_e + A_e z + noise`` (its own centre and its own
    two-dimensional correlation structure; ``z`` standard normal). Anomalies (``LABEL``,
    kind in ``KIND``): ``swap``, a row drawn from another entity's normal behaviour, so it
    is normal in the data as a whole and anomalous only for its own entity; ``outlier``,
    three features shifted by 6 to 9 of the data's standard deviations. Half of each.
    The entity parameters depend only on ``seed`` and the entity's number; ``sample`` draws
    other rows of the same entities (a training set and a scoring set).
    """
    rng = np.random.default_rng([seed, 1_000_003, sample])
    params = []
    for e in range(n_entities):
        prng = np.random.default_rng([seed, e])
        params.append((prng.normal(0.0, 2.0, n_features), prng.normal(0.0, 1.0, (2, n_features))))
    ids = np.repeat(np.arange(n_entities), rows_per_entity)
    n = len(ids)
    source = ids.copy()
    kinds = np.full(n, "", dtype=object)
    hit = rng.random(n) < anomaly_fraction
    swap = hit & (rng.random(n) < 0.5)
    if n_entities > 1:
        source[swap] = (ids[swap] + rng.integers(1, n_entities, swap.sum())) % n_entities
    else:
        swap[:] = False
    kinds[swap] = "swap"
    x = np.empty((n, n_features))
    z = rng.normal(size=(n, 2))
    for e in range(n_entities):
        rows = source == e
        mu, a = params[e]
        x[rows] = mu + z[rows] @ a + rng.normal(0.0, 0.3, (rows.sum(), n_features))
    outlier = hit & ~swap
    kinds[outlier] = "outlier"
    scale = x.std(axis=0)
    for i in np.flatnonzero(outlier):
        cols = rng.choice(n_features, 3, replace=False)
        x[i, cols] += rng.choice([-1, 1], 3) * rng.uniform(6, 9, 3) * scale[cols]
    cols = {ROW_ID: np.arange(start_id, start_id + n), ENTITY: [f"e{e:05d}" for e in ids]}
    cols.update({f"x{j}": x[:, j] for j in range(n_features)})
    cols.update({LABEL: hit, KIND: kinds.astype(str)})
    return pa.table(cols)
