"""What a segment compiles against: one snapshot's schema and clock.

Each condition node (`pipelines.segment_nodes`) compiles itself to a polars expression by
asking a `Compiler` for the columns it reads; the compiler checks them against the snapshot
frame's schema (`models.snapshot`), so a broken snapshot fails when the segment is compiled
(`SnapshotError`) rather than quietly selecting nobody, and an attribute's dtype decides
whether a comparison can match at all (see `pipelines.segments`, *Missing values*).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from models.snapshot import ATTRIBUTES

# What a condition compiles to when nobody can match it (no such column, field or kind).
NOBODY = pl.lit(False)


class SnapshotError(ValueError):
    """The snapshot frame lacks a column a segment needs, or has it with the wrong dtype."""


def dtype_kind(dtype: pl.DataType) -> str | None:
    """The JSON kind ("boolean", "number", "string") a column of `dtype` holds, or None for
    anything a segment value cannot be compared with."""
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "number"
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return "string"
    return None


class Compiler:
    """The compile-time context of one segment: `now` (epoch s, for `active_within_days`)
    and the snapshot's schema, with typed accessors that refuse a missing or mistyped core
    column."""

    def __init__(self, now: float, schema: Mapping[str, pl.DataType]) -> None:
        self.now = float(now)
        self.schema = schema
        attributes = schema.get(ATTRIBUTES)
        if attributes is not None and not isinstance(attributes, pl.Struct | pl.Null):
            raise SnapshotError(f"the snapshot's {ATTRIBUTES!r} column is not a struct")
        self._attributes = (
            {field.name: field.dtype for field in attributes.fields}
            if isinstance(attributes, pl.Struct)
            else {}
        )

    def attribute_dtype(self, name: str) -> pl.DataType | None:
        return self._attributes.get(name)

    def _dtype(self, column: str, condition: str) -> pl.DataType:
        dtype = self.schema.get(column)
        if dtype is None:
            raise SnapshotError(f"the snapshot has no {column!r} column, which {condition!r} needs")
        return dtype

    def string_column(self, column: str, condition: str) -> pl.Expr:
        dtype = self._dtype(column, condition)
        if dtype_kind(dtype) != "string" and dtype != pl.Null:
            raise SnapshotError(f"the snapshot's {column!r} column is {dtype}, not strings")
        return pl.col(column) if dtype == pl.String else pl.col(column).cast(pl.String)

    def number_column(self, column: str, condition: str) -> pl.Expr:
        dtype = self._dtype(column, condition)
        if dtype_kind(dtype) != "number" and dtype != pl.Null:
            raise SnapshotError(f"the snapshot's {column!r} column is {dtype}, not numbers")
        # Compare the stored value exactly (a Float32 score against a float64 bound); NaN is
        # a missing value, not "greater than everything" as polars orders it.
        return pl.col(column).cast(pl.Float64).fill_nan(None)

    def list_contains(self, column: str, condition: str, item: str) -> pl.Expr:
        dtype = self._dtype(column, condition)
        if dtype == pl.Null:
            return NOBODY  # all null: nobody has a list
        if not isinstance(dtype, pl.List):
            raise SnapshotError(f"the snapshot's {column!r} column is {dtype}, not a list")
        return pl.col(column).list.contains(item).fill_null(False)
