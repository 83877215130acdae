"""Leakage checks: row-content hashes, a mergeable Bloom filter of training rows, id-like columns.

A scoring row that also occurs in the training or validation data has a low error
because the model saw it, not because it is normal; the summary counts such rows. The
training rows are remembered as a Bloom filter (fixed size, merged by OR, so it is built
block by block without collecting rows) stored in the model artefact.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from aemodel.preprocess import numeric_values, string_values
from aemodel.schema import ColumnSpec

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
MAX_BLOOM_BITS = 1 << 29
"""64 MiB cap on the filter; beyond ~28M rows its false-positive rate grows (and is reported)."""


def row_hashes(table: pa.Table, specs: list[ColumnSpec], values: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A 64-bit hash of each row's feature values, independent of the storage type.

    Numeric and binary cells hash as float64 (so 3 and 3.0 match; every missing value
    hashes alike), categorical cells as strings. pandas' hash uses a fixed key, so hashes
    agree across processes, runs and machines.

    Args:
        table: The rows.
        specs: The feature columns, in the order they are combined.
        values: ``numeric_values`` of some numeric or binary columns, already read (the
            ``raw`` of ``Preprocessor.transform``); the others are read from ``table``.
    """
    values = values or {}
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for s in specs:
        col = table.column(s.name)
        if s.kind == "categorical":
            vals = np.asarray(string_values(col).to_pylist(), dtype=object)
        else:
            vals = values[s.name] if s.name in values else numeric_values(col)
        with np.errstate(over="ignore"):
            h = h * _GOLDEN + pd.util.hash_array(vals)
    return h


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a second, independent hash for double hashing."""
    with np.errstate(over="ignore"):
        z = h + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class BloomFilter:
    """A Bloom filter over 64-bit row hashes (``bits`` packed into bytes).

    Args:
        n_bits: Filter size in bits (a multiple of 8).
        n_hashes: Bit positions per item.
        data: Packed bits, or None for an empty filter.
    """

    def __init__(self, n_bits: int, n_hashes: int, data: bytes | np.ndarray | None = None):
        self.n_bits, self.n_hashes = int(n_bits), int(n_hashes)
        if data is None:
            self.bits = np.zeros(self.n_bits // 8, dtype=np.uint8)
        else:
            self.bits = np.frombuffer(bytes(data), dtype=np.uint8).copy()
            if self.bits.size * 8 != self.n_bits:
                raise ValueError(f"Bloom filter data holds {self.bits.size * 8} bits, expected {self.n_bits}")

    @classmethod
    def for_rows(cls, n_rows: int, fpr: float = 1e-4) -> BloomFilter:
        """A filter sized for ``n_rows`` items at false-positive rate ``fpr`` (capped size)."""
        bits = math.ceil(max(n_rows, 1) * -math.log(fpr) / math.log(2) ** 2 / 8) * 8
        bits = min(max(bits, 1024), MAX_BLOOM_BITS)
        k = max(1, round(bits / max(n_rows, 1) * math.log(2)))
        return cls(bits, min(k, 16))

    @staticmethod
    def _hash_pair(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The two hashes of double hashing: the row hash and an odd second one."""
        h1 = np.asarray(hashes).astype(np.uint64)
        return h1, _mix(h1) | np.uint64(1)

    def _position(self, h1: np.ndarray, h2: np.ndarray, i: np.ndarray | int) -> np.ndarray:
        """Bit ``i`` (or bits, broadcast) of the items with hash pair ``(h1, h2)``."""
        return _bit(h1, h2, i, np.uint64(self.n_bits))

    def _positions(self, hashes: np.ndarray) -> np.ndarray:
        """[n_hashes, items] every bit of every item."""
        h1, h2 = self._hash_pair(hashes)
        return self._position(h1[None, :], h2[None, :], np.arange(self.n_hashes, dtype=np.uint64)[:, None])

    def add(self, hashes: np.ndarray) -> BloomFilter:
        pos = self._positions(hashes).ravel()
        np.bitwise_or.at(self.bits, pos >> 3, (1 << (pos & 7)).astype(np.uint8))
        return self

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash: True if possibly added (false positives at ``false_positive_rate``)."""
        return contains_each([self], np.zeros(len(hashes), dtype=np.int64), hashes)

    def merge(self, other: BloomFilter) -> BloomFilter:
        if (other.n_bits, other.n_hashes) != (self.n_bits, self.n_hashes):
            raise ValueError("cannot merge Bloom filters of different shapes")
        self.bits |= other.bits
        return self

    @property
    def false_positive_rate(self) -> float:
        """Chance that a row never added tests positive, from the filter's fill."""
        # Popcount per byte through a table: unpacking would need one byte per bit (512 MiB at the cap).
        fill = int(_POPCOUNT[self.bits].sum(dtype=np.int64)) / self.n_bits if self.bits.size else 0.0
        return fill ** self.n_hashes

    def to_bytes(self) -> bytes:
        return self.bits.tobytes()


ID_REPEATS = 5.0
"""Expected repeats by chance above which an integer column that never repeats is id-like: P(none) ~ exp(-5) < 1%."""


def _bit(h1: np.ndarray, h2: np.ndarray, i: np.ndarray | int, n_bits: np.ndarray | np.uint64) -> np.ndarray:
    """Double hashing: bit ``i`` of an item with hash pair ``(h1, h2)`` in a filter of ``n_bits``."""
    with np.errstate(over="ignore"):
        return ((h1 + np.asarray(i, dtype=np.uint64) * h2) % n_bits).astype(np.int64)


def contains_each(filters: list[BloomFilter], which: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Per hash: True if possibly added to filter ``filters[which[i]]`` (``BloomFilter.contains``).

    Bit by bit, only for the hashes whose bits so far were all set: about half the bits of a
    full filter are clear, so most rows that were not added leave after one or two of the
    ``n_hashes`` lookups (the same answer as checking every bit). Several filters (a model
    bank's, ``aemodel.stack``) are looked up as one: their bits end to end, each row at its
    filter's start.
    """
    h1, h2 = BloomFilter._hash_pair(hashes)
    left = np.arange(len(h1))
    if len(filters) == 1:
        f = filters[0]
        bits, n_hashes, size, start = f.bits, np.array([f.n_hashes]), np.uint64(f.n_bits), 0
    else:
        bits = np.concatenate([f.bits for f in filters])
        n_hashes = np.array([f.n_hashes for f in filters])
        sizes = np.array([f.n_bits for f in filters], dtype=np.uint64)
        starts = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64))])
    passed = []
    for i in range(int(n_hashes.max()) if len(filters) else 0):
        if len(filters) > 1:
            w = which[left]
            done = n_hashes[w] <= i  # every bit of these rows' filters was set
            passed.append(left[done])
            left, w = left[~done], w[~done]
            size, start = sizes[w], starts[w]
        pos = _bit(h1[left], h2[left], i, size) + start
        left = left[((bits[pos >> 3] >> (pos & 7).astype(np.uint8)) & 1).astype(bool)]
        if len(left) == 0:
            break
    found = np.zeros(len(h1), dtype=bool)
    found[np.concatenate([left, *passed]).astype(np.int64)] = True
    return found


def id_like_columns(specs: list[ColumnSpec], stats: dict, min_rows: int = 50) -> list[dict]:
    """Feature columns whose values look like row identifiers (near-unique).

    An id used as a feature lets the model memorise rows and makes every unseen id an
    "anomaly". Flagged: categorical columns whose values are nearly all distinct or seen
    once, integer columns that densely cover a range about as long as the row count
    (sequential ids), and integer columns with no value repeated where values drawn at
    random over their range would have repeated at least ``ID_REPEATS`` times (a sample of
    ids, a unique timestamp). Uses only the training statistics of ``partial_stats``, whose
    repeats are counted within each batch of rows (exact counts of distinct values would
    not merge in bounded memory), so the expected count is over those same pairs of rows.
    """
    found = []
    for s in specs:
        st = stats.get(s.name, {})
        n = st.get("n", 0)
        if n < min_rows:
            continue
        if s.kind == "categorical":
            counts = st["counts"]
            singles = sum(1 for c in counts.values() if c == 1)
            if len(counts) >= 0.9 * n or (len(counts) >= min_rows and singles >= 0.9 * len(counts)):
                found.append({"column": s.name, "reason": f"{len(counts)} distinct values in {n} rows, "
                                                          f"{singles} seen once"})
        elif s.kind == "numeric" and st.get("integral") and st["max"] is not None:
            span = st["max"] - st["min"] + 1
            std = math.sqrt(st["m2"] / n)
            uniform_std = span / math.sqrt(12)
            # Uniform draws collide least for a given range, so the expected repeats are a lower bound.
            expected = st.get("pairs", 0) / span
            if 0.9 * n <= span <= 1.5 * n and 0.8 <= std / max(uniform_std, 1e-12) <= 1.2:
                found.append({"column": s.name, "reason": f"integers spread evenly over "
                                                          f"[{st['min']:.0f}, {st['max']:.0f}] for {n} rows"})
            elif st.get("repeats") == 0 and expected >= ID_REPEATS:
                found.append({"column": s.name, "reason": f"{n} integers over [{st['min']:.0f}, {st['max']:.0f}], "
                                                          f"none repeated (random values over that range would "
                                                          f"have repeated about {expected:.0f} times)"})
    return found
