"""Column kinds, preprocessing statistics, constant columns, missing values, unseen categories."""

import math

import numpy as np
import pyarrow as pa
import pytest

from aemodel import PreprocessConfig, Preprocessor, SchemaError, check_schema, merge_stats, partial_stats, resolve_columns


def _table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table({
        "id": pa.array(np.arange(n)),
        "x": pa.array(rng.normal(10, 2, n)),
        "k": pa.array(rng.integers(0, 5, n).astype(np.int32)),
        "const": pa.array(np.full(n, 3.0)),
        "flag": pa.array(rng.random(n) < 0.3),
        "color": pa.array(rng.choice(["red", "green", "blue"], n)),
        "ts": pa.array(np.arange(n).astype("datetime64[s]")),
    })


def _fit(table, **kw):
    specs = resolve_columns(table.schema, exclude_columns=["id"], **kw)
    return Preprocessor.fit(specs, partial_stats(table, specs), PreprocessConfig(min_category_count=1))


def test_kinds_inferred_from_arrow_types_in_model_order():
    specs = resolve_columns(_table().schema, exclude_columns=["id"])
    assert [(s.name, s.kind) for s in specs] == [
        ("x", "numeric"), ("k", "numeric"), ("const", "numeric"), ("flag", "binary"), ("color", "categorical")]


def test_type_overrides_and_their_validation():
    specs = resolve_columns(_table().schema, exclude_columns=["id"], kind_overrides={"k": "categorical"})
    assert {s.name: s.kind for s in specs}["k"] == "categorical"
    with pytest.raises(SchemaError, match="cannot be modelled as numeric"):
        resolve_columns(_table().schema, kind_overrides={"color": "numeric"})
    with pytest.raises(SchemaError, match="unknown column type"):
        resolve_columns(_table().schema, kind_overrides={"x": "ordinal"})
    with pytest.raises(SchemaError, match=r"feature column\(s\) \['nope'\] not in the data"):
        resolve_columns(_table().schema, feature_columns=["x", "nope"])
    with pytest.raises(SchemaError, match="unsupported type"):
        resolve_columns(_table().schema, feature_columns=["ts"])


def test_check_schema_names_file_and_column():
    specs = resolve_columns(_table().schema, exclude_columns=["id"])
    with pytest.raises(SchemaError, match=r"f\.parquet: missing feature column\(s\) \['x'\]"):
        check_schema(_table().drop_columns(["x"]).schema, specs, "f.parquet")
    changed = _table().set_column(1, "x", pa.array(["a"] * 200))
    with pytest.raises(SchemaError, match="column 'x' has type string"):
        check_schema(changed.schema, specs, "f.parquet")


def test_merged_partial_stats_equal_whole_table_stats():
    t = _table(300)
    specs = resolve_columns(t.schema, exclude_columns=["id"])
    whole = partial_stats(t, specs, log_moments=True)
    merged = merge_stats(merge_stats(partial_stats(t.slice(0, 100), specs, True), partial_stats(t.slice(100, 50), specs, True)),
                         partial_stats(t.slice(150), specs, True))
    assert merged["x"]["n"] == whole["x"]["n"] == 300
    assert merged["x"]["mean"] == pytest.approx(whole["x"]["mean"])
    assert merged["x"]["m2"] == pytest.approx(whole["x"]["m2"])
    assert merged["x"]["m3"] == pytest.approx(whole["x"]["m3"], rel=1e-6, abs=1e-6)
    assert merged["x"]["log"] == pytest.approx(whole["x"]["log"])
    assert merged["color"]["counts"] == whole["color"]["counts"]
    assert merged["flag"]["pos"] == whole["flag"]["pos"]


def test_constant_column_gets_a_scale_floor_and_cannot_blow_up():
    pp = _fit(_table())
    assert pp.numeric["const"]["std"] == 0.0
    assert pp.numeric["const"]["scale"] == pytest.approx(1e-3 * 3.0)
    odd = _table(5).set_column(3, "const", pa.array([3.0, 3.0, 1e9, -1e9, 3.0]))
    x = pp.transform(odd)["x_num"][:, 2]
    assert np.all(np.isfinite(x)) and np.abs(x).max() == pp.config.clip_sigma


def test_missing_and_nonfinite_cells_are_imputed_counted_and_masked():
    pp = _fit(_table())
    t = pa.table({
        "id": pa.array([0, 1, 2]),
        "x": pa.array([np.nan, np.inf, 10.0]),
        "k": pa.array([None, 1, 2], type=pa.int32()),
        "const": pa.array([3.0, 3.0, 3.0]),
        "flag": pa.array([None, True, False]),
        "color": pa.array([None, "red", "green"]),
        "ts": _table(3)["ts"],
    })
    enc = pp.transform(t)
    assert enc["missing_cells"].tolist() == [4, 1, 0]
    assert enc["observed"][0].tolist() == [0, 0, 1, 0, 0]
    assert enc["x_num"][0, 0] == 0.0  # imputed with the training mean (standardised: 0)
    assert enc["x_bin"][0, 0] == pp.binary["flag"]["fill"]
    assert enc["x_cat"][0, 0] == 0  # most frequent category


def test_unseen_and_rare_categories_map_to_other_and_are_counted():
    pp = _fit(_table())
    vocab = pp.categorical["color"]["vocab"]
    assert vocab[-1] == "<other>" and set(vocab[:-1]) == {"red", "green", "blue"}
    t = _table(3).set_column(5, "color", pa.array(["purple", "red", None]))
    enc = pp.transform(t)
    assert enc["x_cat"][:, 0].tolist()[:2] == [len(vocab) - 1, vocab.index("red")]
    assert enc["unseen_cells"].tolist() == [1, 0, 0]


def test_dictionary_and_integer_categoricals_encode():
    t = _table()
    specs = resolve_columns(t.schema, exclude_columns=["id"], kind_overrides={"k": "categorical"})
    pp = Preprocessor.fit(specs, partial_stats(t, specs), PreprocessConfig(min_category_count=1))
    dict_t = t.set_column(5, "color", t["color"].dictionary_encode())
    enc_plain, enc_dict = pp.transform(t), pp.transform(dict_t)
    assert np.array_equal(enc_plain["x_cat"], enc_dict["x_cat"])
    assert len(pp.categorical["k"]["vocab"]) == 6


def test_baselines_normalise_binary_and_categorical_by_entropy():
    pp = _fit(_table(5000))
    rate = pp.binary["flag"]["rate"]
    h = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert pp.baselines[3] == pytest.approx(h)
    assert pp.baselines[4] == pytest.approx(math.log(3), rel=0.01)  # three equally likely colours


def test_column_with_no_observed_value_is_rejected():
    t = _table().set_column(1, "x", pa.array([None] * 200, type=pa.float64()))
    with pytest.raises(SchemaError, match="'x' has no non-missing value"):
        _fit(t)


def test_binary_from_integers_must_be_zero_or_one():
    t = _table().set_column(2, "k", pa.array(np.arange(200) % 3, type=pa.int32()))
    with pytest.raises(SchemaError, match="values other than 0/1"):
        _fit(t, kind_overrides={"k": "binary"})


def test_preprocessor_round_trips_through_dict():
    pp = _fit(_table())
    again = Preprocessor.from_dict(pp.to_dict())
    t = _table(50, seed=3)
    for key, value in pp.transform(t).items():
        assert np.array_equal(value, again.transform(t)[key])


def test_skewed_numeric_columns_are_modelled_on_a_signed_log_scale():
    rng = np.random.default_rng(1)
    n = 2000
    t = pa.table({"amount": pa.array(rng.lognormal(3.0, 1.5, n)), "debt": pa.array(-rng.exponential(1e4, n)),
                  "normal": pa.array(rng.normal(50.0, 5.0, n))})
    specs = resolve_columns(t.schema)
    stats = merge_stats(partial_stats(t.slice(0, 700), specs, True), partial_stats(t.slice(700), specs, True))
    pp = Preprocessor.fit(specs, stats, PreprocessConfig(log_skewness=1.0))
    amount = t["amount"].to_numpy()
    skew = ((amount - amount.mean()) ** 3).mean() / amount.std() ** 3
    assert pp.numeric["amount"]["skewness"] == pytest.approx(skew, rel=1e-6)
    kinds = {name: p["transform"] for name, p in pp.numeric.items()}
    assert kinds == {"amount": "signed_log1p", "debt": "signed_log1p", "normal": "identity"}
    z = pp.transform(t)["x_num"]
    logged = np.log1p(amount)
    np.testing.assert_allclose(z[:, 0], (logged - logged.mean()) / logged.std(), rtol=1e-4, atol=1e-4)
    assert abs(z[:, 1].mean()) < 1e-6 and z[:, 1].std() == pytest.approx(1.0, rel=1e-4)  # -log1p(|x|), standardised
    off = Preprocessor.fit(specs, stats)  # the default: off
    assert {p["transform"] for p in off.numeric.values()} == {"identity"}
    np.testing.assert_allclose(off.transform(t)["x_num"][:, 2], z[:, 2])


def test_artefacts_without_a_transform_key_keep_raw_values():
    t = _table()
    pp = _fit(t)
    old = pp.to_dict()
    for p in old["numeric"].values():
        p.pop("transform")
    old["config"].pop("log_skewness")
    again = Preprocessor.from_dict(old)
    raw = t["x"].to_numpy()
    np.testing.assert_allclose(again.transform(t)["x_num"][:, 0],
                               np.clip((raw - pp.numeric["x"]["mean"]) / pp.numeric["x"]["scale"], -10, 10), rtol=1e-5)
