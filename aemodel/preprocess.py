"""Preprocessing fitted on training data only, from mergeable partial statistics.

Fitting is two steps so that it runs distributed without pulling rows anywhere:
``partial_stats`` summarises one batch (a Ray Data block, a Parquet file), ``merge_stats``
combines summaries, ``Preprocessor.fit`` turns the merged summary into parameters.

Missing-value policy (documented in the README): null, NaN and +/-inf cells are missing.
A missing cell is imputed from training statistics (numeric: the training mean, binary:
the majority value, categorical: the most frequent category) so the encoder sees a
plausible input, is excluded from the row's reconstruction error, and is counted in
``missing_cells``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aemodel.moments import kurtosis, merge_moments, moments, signed_log, skewness
from aemodel.schema import ColumnSpec, SchemaError
from aemodel.units import share_units

OTHER_CATEGORY = "<other>"
# Keep at most this many distinct values per column in a partial summary, so an
# id-like column cannot blow up memory; the tail only ever lands in <other>.
MAX_TRACKED_VALUES = 10_000


@dataclass
class PreprocessConfig:
    """How statistics become preprocessing parameters."""

    clip_sigma: float = 10.0
    """Standardised numeric values are clipped to +/- this many training std devs."""
    min_scale_ratio: float = 1e-3
    """Scale floor relative to max(|mean|, 1): constant columns do not blow up the error."""
    max_categories: int = 64
    """Most frequent values kept per categorical column; the rest map to <other>."""
    min_category_count: int = 1
    """A value seen fewer times in training maps to <other>."""
    min_entropy: float = 0.05
    """Floor (nats) on the constant-predictor loss used to normalise binary/categorical losses."""
    log_skewness: float | None = None
    """A numeric column whose training skewness exceeds this in absolute value is modelled as
    sign(x) * log1p(|x|) (amounts, counts, heavy tails); None: never (the default)."""
    shared_units: bool = False
    """Scale numeric columns measured in one unit (``aemodel.units``) by their pooled standard
    deviation instead of each column's own."""

    def __post_init__(self) -> None:
        for name in ("clip_sigma", "min_scale_ratio", "min_entropy"):
            if not getattr(self, name) > 0:  # one message per field: the user set one of them
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.log_skewness is not None and not self.log_skewness >= 0:
            raise ValueError(f"log_skewness must be >= 0, or null to turn it off, got {self.log_skewness}")
        for name in ("max_categories", "min_category_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def numeric_values(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Float64 values with every missing cell (null, NaN, inf) as NaN."""
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def string_values(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The column as plain strings (dictionary-encoded or other types cast)."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    return col


def _binary_values(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    vals = numeric_values(col)
    bad = ~np.isnan(vals) & (vals != 0) & (vals != 1)
    if bad.any():
        raise SchemaError(f"binary column {name!r} has values other than 0/1 (e.g. {vals[bad][0]})")
    return vals


def partial_stats(table: pa.Table, specs: list[ColumnSpec], log_moments: bool = False) -> dict:
    """Mergeable summary of one batch: counts, moments, category counts per column.

    ``log_moments`` adds the moments of ``signed_log`` of each numeric column, which
    ``Preprocessor.fit`` needs only when ``PreprocessConfig.log_skewness`` is set.
    """
    out: dict[str, dict] = {}
    for s in specs:
        col = table.column(s.name)
        if s.kind == "numeric":
            v = numeric_values(col)
            ok = v[~np.isnan(v)]
            n = int(ok.size)
            integral = bool(np.all(ok == np.round(ok)))
            out[s.name] = {**moments(ok), "min": float(ok.min()) if n else None,
                           "max": float(ok.max()) if n else None,
                           "missing": int(v.size - n), "integral": integral}
            if integral:  # for aemodel.leakage.id_like_columns: integers that never repeat
                out[s.name].update(repeats=n - pc.count_distinct(pa.array(ok)).as_py(), pairs=n * (n - 1) // 2)
            if log_moments:
                out[s.name]["log"] = moments(signed_log(ok))
        elif s.kind == "binary":
            v = _binary_values(col, s.name)
            ok = v[~np.isnan(v)]
            out[s.name] = {"n": int(ok.size), "pos": int(ok.sum()), "missing": int(v.size - ok.size)}
        else:
            vc = pc.value_counts(string_values(col))
            values = vc.field("values").to_pylist()
            counts = vc.field("counts").to_pylist()
            d = {v: c for v, c in zip(values, counts) if v is not None}
            missing = sum(c for v, c in zip(values, counts) if v is None)
            out[s.name] = {"counts": _cap_counts(d), "n": int(len(col) - missing), "missing": int(missing)}
    out["__rows__"] = {"n": table.num_rows}
    return out


def _cap_counts(d: dict[str, int]) -> dict[str, int]:
    if len(d) <= MAX_TRACKED_VALUES:
        return d
    return dict(sorted(d.items(), key=lambda kv: -kv[1])[:MAX_TRACKED_VALUES])


def merge_stats(a: dict, b: dict) -> dict:
    """Combine two summaries from ``partial_stats`` (associative, commutative)."""
    out: dict[str, dict] = {}
    for name in a:
        x, y = a[name], b[name]
        if "mean" in x:
            if x["n"] + y["n"] == 0:
                out[name] = dict(x, missing=x["missing"] + y["missing"])
                continue
            mins = [v for v in (x["min"], y["min"]) if v is not None]
            maxs = [v for v in (x["max"], y["max"]) if v is not None]
            out[name] = {**merge_moments(x, y), "min": min(mins), "max": max(maxs),
                         "missing": x["missing"] + y["missing"],
                         "integral": x.get("integral", True) and y.get("integral", True)}
            if out[name]["integral"]:  # repeats within each batch, and the pairs of rows they were sought among
                out[name].update({k: x.get(k, 0) + y.get(k, 0) for k in ("repeats", "pairs")})
            if "log" in x and "log" in y:
                out[name]["log"] = merge_moments(x["log"], y["log"])
        elif "pos" in x:
            out[name] = {k: x[k] + y[k] for k in x}
        elif "counts" in x:
            counts = dict(x["counts"])
            for k, c in y["counts"].items():
                counts[k] = counts.get(k, 0) + c
            out[name] = {"counts": _cap_counts(counts), "n": x["n"] + y["n"],
                         "missing": x["missing"] + y["missing"]}
        else:
            out[name] = {"n": x["n"] + y["n"]}
    return out


def _entropy(probs: np.ndarray) -> float:
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


@dataclass
class Preprocessor:
    """Fitted preprocessing: turns an Arrow table into model tensors.

    Attributes:
        specs: Feature columns in model order (numeric, binary, categorical).
        numeric: Per numeric column: mean, scale (std with a floor, or the pooled std of the
            ``shared_unit`` columns), training std and kurtosis of the modelled values, raw
            min/max and skewness, and ``transform``: ``identity`` or
            ``signed_log1p`` (``PreprocessConfig.log_skewness``).
        binary: Per binary column: training rate of 1s and the imputation value.
        categorical: Per categorical column: vocabulary (the last entry is <other>),
            training frequency of each entry, imputation index.
        baselines: Per column, in model order, the loss of the best constant predictor
            fitted on training data (for ``shared_unit`` columns their average, 1); each
            column's loss is divided by it.
        config: The options used for fitting.
        train_rows: Rows seen when fitting.
    """

    specs: list[ColumnSpec]
    numeric: dict[str, dict] = field(default_factory=dict)
    binary: dict[str, dict] = field(default_factory=dict)
    categorical: dict[str, dict] = field(default_factory=dict)
    baselines: list[float] = field(default_factory=list)
    config: PreprocessConfig = field(default_factory=PreprocessConfig)
    train_rows: int = 0

    @classmethod
    def fit(cls, specs: list[ColumnSpec], stats: dict, config: PreprocessConfig | None = None) -> Preprocessor:
        """Parameters from merged training statistics.

        Raises:
            SchemaError: A feature column has no observed value at all in training.
        """
        config = config or PreprocessConfig()
        pp = cls(specs=specs, config=config, train_rows=int(stats["__rows__"]["n"]))
        for s in specs:
            st = stats[s.name]
            observed = st["n"]
            if observed == 0:
                raise SchemaError(f"column {s.name!r} has no non-missing value in the training data; "
                                  "exclude it (--exclude-columns) or fix the data")
            if s.kind == "numeric":
                skew = skewness(st)
                logged = (config.log_skewness is not None and abs(skew) > config.log_skewness
                          and "log" in st)
                m = st["log"] if logged else st
                std = math.sqrt(m["m2"] / m["n"]) if math.isfinite(m["m2"]) else math.inf
                if not (math.isfinite(m["mean"]) and math.isfinite(std)):
                    raise SchemaError(f"column {s.name!r} holds values too large to standardise (up to "
                                      f"{max(abs(st['min']), abs(st['max'])):.3g}: its variance overflows float64); "
                                      "rescale it, or exclude it (--exclude-columns)")
                floor = config.min_scale_ratio * max(abs(m["mean"]), 1.0)
                pp.numeric[s.name] = {"mean": m["mean"], "scale": max(std, floor), "std": std,
                                      "min": st["min"], "max": st["max"], "skewness": skew, "kurtosis": kurtosis(m),
                                      "transform": "signed_log1p" if logged else "identity"}
                pp.baselines.append(1.0)  # predicting the mean of a standardised column costs 1 (on average, shared)
            elif s.kind == "binary":
                rate = st["pos"] / st["n"]
                pp.binary[s.name] = {"rate": rate, "fill": 1.0 if rate >= 0.5 else 0.0}
                h = _entropy(np.array([rate, 1 - rate]))
                pp.baselines.append(max(h, config.min_entropy))
            else:
                ranked = sorted(st["counts"].items(), key=lambda kv: (-kv[1], kv[0]))
                vocab = [v for v, c in ranked[: config.max_categories] if c >= config.min_category_count]
                if not vocab:  # every value rare: keep the most frequent so the column means something
                    vocab = [ranked[0][0]]
                kept = sum(st["counts"][v] for v in vocab)
                freq = np.array([st["counts"][v] for v in vocab] + [observed - kept], dtype=np.float64)
                freq /= freq.sum()
                pp.categorical[s.name] = {"vocab": vocab + [OTHER_CATEGORY], "freq": freq.tolist(),
                                          "fill": 0, "distinct": len(st["counts"])}
                pp.baselines.append(max(_entropy(freq), config.min_entropy))
        if config.shared_units:
            share_units(pp.numeric, pp.numeric_names, config.min_scale_ratio)
        return pp

    @property
    def numeric_names(self) -> list[str]:
        return [s.name for s in self.specs if s.kind == "numeric"]

    @property
    def shared_unit_indices(self) -> list[int]:
        """Model-order positions of the numeric columns scaled in one shared unit (``aemodel.units``)."""
        return [i for i, n in enumerate(self.numeric_names) if self.numeric[n].get("shared_unit")]

    @property
    def binary_names(self) -> list[str]:
        return [s.name for s in self.specs if s.kind == "binary"]

    @property
    def categorical_names(self) -> list[str]:
        return [s.name for s in self.specs if s.kind == "categorical"]

    @property
    def category_sizes(self) -> list[int]:
        return [len(self.categorical[n]["vocab"]) for n in self.categorical_names]

    def constant_columns(self) -> dict[str, str]:
        """Feature columns with a single value in every observed training cell: name -> that value.

        Any other value at scoring is one the model never saw, and its cell's error then
        dominates the row (often a label or outcome column left among the features).
        """
        found = {n: f"{p['min']:g}" for n, p in self.numeric.items() if p["min"] == p["max"]}
        found.update({n: str(p["rate"] == 1.0) for n, p in self.binary.items() if p["rate"] in (0.0, 1.0)})
        found.update({n: repr(p["vocab"][0]) for n, p in self.categorical.items() if p.get("distinct") == 1})
        return {s.name: found[s.name] for s in self.specs if s.name in found}  # model column order

    def numeric_like_categoricals(self, min_distinct: int = 20, share: float = 0.9) -> dict[str, int]:
        """Text columns with many distinct values, most of those kept parsing as numbers: name -> distinct.

        Usually numbers stored as strings (one "n/a" makes a whole CSV column text); as a
        category each value is only equal or different, so nearness is lost.
        """
        def is_number(v: str) -> bool:
            try:
                float(v)
            except ValueError:
                return False
            return True

        found = {}
        for n, p in self.categorical.items():
            kept = p["vocab"][:-1]
            if p.get("distinct", 0) >= min_distinct and kept and sum(map(is_number, kept)) >= share * len(kept):
                found[n] = p["distinct"]
        return found

    def constant_outputs(self) -> dict:
        """Outputs of the best constant predictor: the mean-reconstruction baseline.

        Numerics predict the training mean (0 after standardising), binaries the training
        rate, categoricals the training frequencies; see ``diagnostics.mean_reconstruction``.
        """
        rates = np.clip([self.binary[n]["rate"] for n in self.binary_names], 1e-6, 1 - 1e-6)
        return {"n_numeric": len(self.numeric_names),
                "binary_logits": np.log(rates / (1 - rates)).tolist(),
                "categorical_logits": [np.log(np.clip(self.categorical[n]["freq"], 1e-9, None)).tolist()
                                       for n in self.categorical_names]}

    def transform(self, table: pa.Table, raw: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Encode a table for the model.

        Args:
            table: Rows with (at least) the feature columns.
            raw: If given, receives each numeric and binary column's values as read
                (``numeric_values``: float64, NaN where missing), before any transform or
                imputation, so ``leakage.row_hashes`` need not read them again.

        Returns:
            ``x_num`` float32 [B, n_numeric] standardised and clipped; ``x_bin`` float32
            [B, n_binary]; ``x_cat`` int64 [B, n_categorical] vocabulary indices;
            ``observed`` float32 [B, n_columns], 0 where the cell was missing;
            ``missing_cells`` and ``unseen_cells`` int32 [B].
        """
        n = table.num_rows
        clip = self.config.clip_sigma
        x_num = np.zeros((n, len(self.numeric_names)), dtype=np.float32)
        x_bin = np.zeros((n, len(self.binary_names)), dtype=np.float32)
        x_cat = np.zeros((n, len(self.categorical_names)), dtype=np.int64)
        observed = np.ones((n, len(self.specs)), dtype=np.float32)
        unseen = np.zeros(n, dtype=np.int32)
        j = 0
        for i, name in enumerate(self.numeric_names):
            p = self.numeric[name]
            v = numeric_values(table.column(name))
            if raw is not None:
                raw[name] = v
            miss = np.isnan(v)
            if p.get("transform") == "signed_log1p":  # artefacts before this option have no key: identity
                v = signed_log(v)
            z = np.clip((v - p["mean"]) / p["scale"], -clip, clip)
            z[miss] = 0.0
            x_num[:, i] = z
            observed[:, j] = ~miss
            j += 1
        for i, name in enumerate(self.binary_names):
            v = _binary_values(table.column(name), name)
            if raw is not None:
                raw[name] = v
            miss = np.isnan(v)
            x_bin[:, i] = np.where(miss, self.binary[name]["fill"], v)
            observed[:, j] = ~miss
            j += 1
        for i, name in enumerate(self.categorical_names):
            p = self.categorical[name]
            strings = string_values(table.column(name))
            known = pa.array(p["vocab"][:-1], type=pa.string())
            idx = pc.index_in(strings, value_set=known)
            miss = pc.is_null(strings).to_numpy(zero_copy_only=False)
            codes = pc.fill_null(idx, len(p["vocab"]) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
            unseen += (~miss & (codes == len(p["vocab"]) - 1)).astype(np.int32)
            codes[miss] = p["fill"]
            x_cat[:, i] = codes
            observed[:, j] = ~miss
            j += 1
        missing = (observed.shape[1] - observed.sum(axis=1)).astype(np.int32)
        return {"x_num": x_num, "x_bin": x_bin, "x_cat": x_cat, "observed": observed,
                "missing_cells": missing, "unseen_cells": unseen}

    def to_dict(self) -> dict:
        return {"specs": [s.to_dict() for s in self.specs], "numeric": self.numeric,
                "binary": self.binary, "categorical": self.categorical, "baselines": self.baselines,
                "config": asdict(self.config), "train_rows": self.train_rows}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls(specs=[ColumnSpec.from_dict(s) for s in d["specs"]], numeric=d["numeric"],
                   binary=d["binary"], categorical=d["categorical"], baselines=list(d["baselines"]),
                   config=PreprocessConfig(**d["config"]), train_rows=int(d["train_rows"]))
