"""Column schema: which input columns are features and how each one is modelled.

A feature column is one of three kinds, and the kind decides the loss:

* ``numeric``: standardised value, squared error (MSE).
* ``binary``: 0/1 value, binary cross-entropy on a sigmoid output (BCE).
* ``categorical``: one of a learned vocabulary, cross-entropy on a softmax (CE).

Kinds are inferred from the Arrow type (floats and ints are numeric, bools binary,
strings and dictionaries categorical) and may be overridden per column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.types as pat

ColumnKind = Literal["numeric", "binary", "categorical"]
COLUMN_KINDS: tuple[str, ...] = get_args(ColumnKind)


class SchemaError(ValueError):
    """Input data does not fit the expected columns or types."""


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column.

    Attributes:
        name: Column name in the input data.
        kind: How the column is modelled (decides its loss).
        arrow_type: The Arrow type seen at training time, for error messages.
    """

    name: str
    kind: ColumnKind
    arrow_type: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ColumnSpec:
        return cls(name=d["name"], kind=d["kind"], arrow_type=d["arrow_type"])


def _is_numeric(t: pa.DataType) -> bool:
    return pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t)


def _is_stringish(t: pa.DataType) -> bool:
    return pat.is_string(t) or pat.is_large_string(t) or pat.is_dictionary(t)


def infer_kind(arrow_type: pa.DataType) -> ColumnKind | None:
    """The default kind for an Arrow type, or None if the type is not a feature type."""
    if pat.is_boolean(arrow_type):
        return "binary"
    if _is_numeric(arrow_type):
        return "numeric"
    if _is_stringish(arrow_type):
        return "categorical"
    return None


def kind_accepts(kind: ColumnKind, arrow_type: pa.DataType) -> bool:
    """Whether data of ``arrow_type`` can be fed to a column modelled as ``kind``."""
    if pat.is_null(arrow_type):
        # An all-null shard carries no type; its cells are counted as missing.
        return True
    if kind == "numeric":
        return _is_numeric(arrow_type) or pat.is_boolean(arrow_type)
    if kind == "binary":
        return pat.is_boolean(arrow_type) or pat.is_integer(arrow_type)
    return _is_stringish(arrow_type) or pat.is_integer(arrow_type) or pat.is_boolean(arrow_type)


def resolve_columns(
    schema: pa.Schema,
    feature_columns: list[str] | None = None,
    exclude_columns: list[str] | None = None,
    kind_overrides: dict[str, str] | None = None,
) -> list[ColumnSpec]:
    """Choose the feature columns of a training schema and their kinds.

    Args:
        schema: Arrow schema of the training data.
        feature_columns: Use exactly these columns; None means every supported column.
        exclude_columns: Columns never used as features (ids, labels, timestamps).
        kind_overrides: Column name to kind, replacing the inferred kind.

    Returns:
        The specs in a canonical order: numeric, then binary, then categorical,
        each kind in schema order. Model tensors follow this order.

    Raises:
        SchemaError: A named column is absent, has an unsupported type, or an
            override does not fit the column's type.
    """
    names = schema.names
    exclude = set(exclude_columns or [])
    overrides = dict(kind_overrides or {})
    for label, cols in (("feature", feature_columns or []), ("excluded", exclude),
                        ("type-override", overrides)):
        missing = [c for c in cols if c not in names]
        if missing:
            raise SchemaError(f"{label} column(s) {missing} not in the data; columns are {names}")
    for col, kind in overrides.items():
        if kind not in COLUMN_KINDS:
            raise SchemaError(f"column {col!r}: unknown column type {kind!r}; use one of {COLUMN_KINDS}")

    chosen = list(feature_columns) if feature_columns else [n for n in names if n not in exclude]
    specs: list[ColumnSpec] = []
    for name in chosen:
        if name in exclude:
            continue
        arrow_type = schema.field(name).type
        kind = overrides.get(name) or infer_kind(arrow_type)
        if kind is None:
            if feature_columns or name in overrides:
                raise SchemaError(f"column {name!r} has unsupported type {arrow_type}")
            continue  # e.g. timestamps, lists: not features unless asked for
        if not kind_accepts(kind, arrow_type):
            raise SchemaError(f"column {name!r} of type {arrow_type} cannot be modelled as {kind}")
        specs.append(ColumnSpec(name=name, kind=kind, arrow_type=str(arrow_type)))
    if not specs:
        raise SchemaError(f"no usable feature columns among {names}")
    order = {k: i for i, k in enumerate(COLUMN_KINDS)}
    return sorted(specs, key=lambda s: order[s.kind])  # stable: schema order within a kind


def _family(arrow_type: pa.DataType | str) -> str:
    """``bool``, ``string`` or ``number``: the types a column may change between without changing meaning."""
    name = str(arrow_type)
    if name == "bool":
        return "bool"
    return "string" if name in ("string", "large_string") or name.startswith("dictionary") else "number"


def _changed_meaning(spec: ColumnSpec, arrow_type: pa.DataType) -> bool:
    """True if data of ``arrow_type`` would be read, without error, as something else than what was trained on.

    A numeric column trained on numbers and given booleans scores them as 0/1; a categorical
    column trained on strings and given integers sees only unseen values. Integers and
    floats stay interchangeable, as do the string encodings; an all-null shard is missing cells.
    """
    if pat.is_null(arrow_type):
        return False
    trained, given = _family(spec.arrow_type), _family(arrow_type)
    if spec.kind == "numeric":
        return given == "bool" and trained != "bool"
    if spec.kind == "categorical":
        return trained == "string" and given != "string"
    return False


def check_schema(schema: pa.Schema, specs: list[ColumnSpec], source: str) -> None:
    """Raise a SchemaError naming ``source`` if it lacks a feature or has an incompatible type.

    Incompatible: a type the column's kind cannot take, or one it would take with another
    meaning than at training (``_changed_meaning``).
    """
    missing = [s.name for s in specs if s.name not in schema.names]
    if missing:
        raise SchemaError(f"{source}: missing feature column(s) {missing} (the model's feature columns are "
                          f"{[s.name for s in specs]})")
    for s in specs:
        t = schema.field(s.name).type
        if not kind_accepts(s.kind, t) or _changed_meaning(s, t):
            raise SchemaError(f"{source}: column {s.name!r} has type {t}, but the model treats it as "
                              f"{s.kind} (trained on {s.arrow_type})")


READ_TYPES = {"numeric": pa.float64(), "binary": pa.float64(), "categorical": pa.string()}
"""The Arrow type every feature column is read as, by kind: inputs that store one logical type
differently (string vs dictionary, bool vs 0/1 integers, int32 vs float) all become one."""


def feature_table(table: pa.Table, specs: list[ColumnSpec]) -> pa.Table:
    """``table``'s feature columns, in ``specs`` order, cast to ``READ_TYPES`` (as every reader reads them).

    Raises:
        SchemaError: A feature column is missing or holds a value that does not convert.
    """
    missing = [s.name for s in specs if s.name not in table.column_names]
    if missing:
        raise SchemaError(f"missing feature column(s) {missing}")
    columns = []
    for s in specs:
        col = table.column(s.name)
        try:
            columns.append(col if col.type == READ_TYPES[s.kind] else col.cast(READ_TYPES[s.kind]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaError(f"column {s.name!r} ({col.type}) cannot be read as {READ_TYPES[s.kind]}: {e}") from e
    return pa.Table.from_arrays(columns, names=[s.name for s in specs])
