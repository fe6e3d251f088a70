"""Segments: who a campaign is for, as a JSON spec validated by pydantic and compiled to one
polars expression that a fan-out worker evaluates on a shard's snapshot — one vectorized
`frame.filter(expr)`, no Python loop over users.

The JSON shape
--------------

Every condition is an object with exactly one key, which names the condition:

```json
{"all": [
  {"country": ["DE", "AT"]},
  {"locale": {"prefix": "de"}},
  {"active_within_days": 7},
  {"affinity": {"category": "fashion", "min": 0.6}},
  {"platform": "ios"},
  {"not": {"attr": {"name": "tier", "op": "eq", "value": "vip"}}},
  {"any": [{"wishlist_contains": "sku-42"},
           {"attr": {"name": "orders", "op": "ge", "value": 3}}]}
]}
```

Conditions (`c` is any condition):

- `{"all": [c, ...]}`, `{"any": [c, ...]}` — every / at least one of 1–1,000 conditions.
- `{"not": c}` — the user does not match `c` (see *Missing values*).
- `{"attr": {"name": "tier", "op": "eq", "value": "vip"}}` — profile attribute `name` is of
  the same kind as `value` (string, number or boolean) and `attribute <op> value` holds.
  `op` is one of `eq ne lt le gt ge in`; `in` takes a list of 1–1,000 values of one kind;
  `lt le gt ge` compare strings (code-point order) or numbers, never booleans.
- `{"country": ["DE", "AT"]}` — one of these ISO 3166-1 alpha-2 codes.
- `{"locale": {"eq": "de-DE"}}` — this locale, ignoring case and reading `_` as `-`.
- `{"locale": {"prefix": "de"}}` — this language tag or one that starts with it and `-`,
  same normalization: `de` matches `de`, `de-DE`, `DE_at`, not `dev`.
- `{"platform": "ios"}` — an active device on `ios`, `android` or `web`.
- `{"active_within_days": 7}` — `last_active_at ≥ now − 7 days` (> 0, ≤ 3,650, fractions
  allowed), `now` being what the segment is compiled for; the bound is inclusive.
- `{"affinity": {"category": "fashion", "min": 0.6}}` — a score for the category ≥ `min`
  (0–1).
- `{"wishlist_contains": "sku-42"}` — the product is on the user's wishlist.

Limits, checked when the spec is validated: nesting at most `MAX_DEPTH` (8) conditions deep,
at most `MAX_LEAVES` (200) non-`all`/`any`/`not` conditions, lists of at most `MAX_ITEMS`
(1,000) items, strings of at most `MAX_STRING` (128) characters. A bad spec raises a pydantic
`ValidationError` whose `loc` is the path to the offending part, e.g.
`('all', 2, 'affinity', 'min')`; `error_fields` renders it the way the HTTP API answers a 422
(`{"field": "segment.all[2].affinity.min", "reason": ...}`), and a request model with a
`segment: Segment` field gets the same paths from the API's own error handler. The limits
are checked while parsing (JSON or dicts); a tree built from node objects in Python is
trusted as it is.

Missing values: two-valued, on purpose
--------------------------------------

A user without a value for what a condition looks at — no such attribute, an attribute of
another kind than the condition's value (`"3"` is not `3`), no country, no locale, no
`last_active_at`, no score for the category (or NaN), no devices, no wishlist — does *not*
match that condition, and therefore *does* match its `not`. `ne` is a comparison like the
others: `{"attr": {"name": "tier", "op": "ne", "value": "vip"}}` needs a `tier`, while
`{"not": {"attr": {... "op": "eq", "value": "vip"}}}` also takes users without one. SQL's
three-valued logic (where `NOT (NULL = 'vip')` is NULL, so the user falls out of both a
condition and its negation) would make `not` surprising; every leaf is therefore compiled to a
null-free boolean and `all`/`any`/`not` are plain boolean algebra.

The snapshot frame the compiler evaluates on
--------------------------------------------

One polars frame per shard snapshot, one row per user (`users_frame` builds it from the
shard's tables):

- `user_id`: String — every user the shard knows (profiles, active devices, wishlists).
- `country`, `locale`: String, nullable — profiles.
- `attributes`: Struct with one field per attribute name, each String, Boolean or numeric —
  the profiles' `attributes` JSON objects, decoded once per snapshot.
- `platforms`: List[String] — platforms of the user's *active* devices, empty for none.
- `wishlist`: List[String] — product ids on the user's wishlist, empty for none.
- `last_active_at`: Float64 epoch seconds, nullable — activity (not tracked by shards yet).
- `affinity_<category>`: Float32 or Float64 in 0–1, nullable — the model's category scores.

Only the columns a segment uses must be present. `attributes` and `affinity_<category>` are
open-ended: an absent `attributes` column, struct field or affinity column means nobody has
that value, so the condition matches nobody. An absent core column (`country`, `locale`,
`platforms`, `wishlist`, `last_active_at`) is a broken snapshot and raises `SnapshotError`
when compiling, rather than quietly selecting nobody. Because the kind of an attribute
decides whether a comparison can match, `compile_segment` takes the frame's schema.

Throughput, measured once by hand (not a test) on the 2-core box, polars 2.1, load ≈ 1:
`select_users` of the example segment above (9 leaves) over 1,000,000 synthetic users
(30 countries, 12 locales, 3 affinity columns, 4 attributes, 0–5 wishlist items): 97 ms,
≈ 10 M rows/s, compiling 0.7 ms. Per leaf: numeric and attribute comparisons 2–5 ms,
`country` 10 ms, `locale` 29 ms (a case-insensitive regex; lower-casing the column took
150 ms), `platform`/`wishlist_contains` 27–32 ms (list scans). Two leaves (`country` +
`affinity`): 13 ms, ≈ 75 M rows/s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, Literal, Union

import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    RootModel,
    Tag,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_DEPTH = 8
MAX_LEAVES = 200
MAX_ITEMS = 1000
MAX_STRING = 128
MAX_DAYS = 3650
DAY_S = 86_400.0
# JSON numbers beyond ±2**53 are not exact in most producers' JSON libraries.
MAX_INT = 2**53

# Snapshot columns.
USER_ID = "user_id"
COUNTRY = "country"
LOCALE = "locale"
ATTRIBUTES = "attributes"
PLATFORMS = "platforms"
WISHLIST = "wishlist"
LAST_ACTIVE_AT = "last_active_at"
AFFINITY_PREFIX = "affinity_"


class SnapshotError(ValueError):
    """The snapshot frame lacks a column a segment needs, or has it with the wrong dtype."""


# --- validation ----------------------------------------------------------------------------

Text = Annotated[str, Field(min_length=1, max_length=MAX_STRING)]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
LocaleTag = Annotated[
    str,
    Field(
        max_length=35,
        pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$",
        description="A BCP 47 language tag such as de or de-DE ('_' is read as '-')",
    ),
]
Category = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$",
        description="Lower-case category; its scores are the snapshot column affinity_<category>",
    ),
]
ScalarValue = str | int | float | bool


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string"


def _scalar(value: Any, where: str = "") -> ScalarValue:
    """A JSON string, number or boolean within the limits; anything else is refused (`where`
    names a list item in the message: "value[3]: ...")."""
    problem = None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) <= MAX_INT:
            return value
        problem = "an integer beyond ±2**53 is not exact in JSON"
    elif isinstance(value, float):
        if math.isfinite(value):
            return value
        problem = "a number must be finite"
    elif isinstance(value, str):
        if len(value) <= MAX_STRING:
            return value
        problem = f"a string of at most {MAX_STRING} characters"
    else:
        problem = "expected a string, number or boolean"
    raise PydanticCustomError(
        "segment_value", "{where}{problem}", {"where": where, "problem": problem}
    )


class Node:
    """What every condition has: its JSON key, parsing from `{KEY: payload}`, the
    `{KEY: payload}` JSON schema, and compiling to a polars expression."""

    KEY: ClassVar[str]
    LEAF: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, data: Any) -> Any:
        # {"affinity": {...}} is validated as its payload, so error paths read
        # all[2].affinity.min rather than repeating the key.
        if isinstance(data, dict) and len(data) == 1 and cls.KEY in data:
            return data[cls.KEY]
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        payload = {k: v for k, v in target.items() if k != "title"}
        target.clear()
        target.update(
            title=cls.__name__,
            type="object",
            properties={cls.KEY: payload},
            required=[cls.KEY],
            additionalProperties=False,
        )
        return schema

    def to_spec(self) -> dict[str, Any]:
        """The node as its JSON spec, `{KEY: payload}`."""
        return {self.KEY: self.model_dump(mode="json")}  # type: ignore[attr-defined]

    def expr(self, ctx: _Compiler) -> pl.Expr:
        """Abstract: every concrete node (leaf or combination) compiles itself."""
        raise NotImplementedError(f"{type(self).__name__} must define expr()")


class _Combination(Node, RootModel[list["Segment"]]):
    """all / any: one horizontal reduction over the children's expressions."""

    LEAF: ClassVar[bool] = False
    COMBINE: ClassVar[Any]
    root: list[Segment] = Field(min_length=1, max_length=MAX_ITEMS)

    def to_spec(self) -> dict[str, Any]:
        return {self.KEY: [child.to_spec() for child in self.root]}

    def expr(self, ctx: _Compiler) -> pl.Expr:
        parts = [child.expr(ctx) for child in self.root]
        return parts[0] if len(parts) == 1 else type(self).COMBINE(parts)


class AllOf(_Combination):
    KEY: ClassVar[str] = "all"
    COMBINE: ClassVar[Any] = staticmethod(pl.all_horizontal)


class AnyOf(_Combination):
    KEY: ClassVar[str] = "any"
    COMBINE: ClassVar[Any] = staticmethod(pl.any_horizontal)


class Not(Node, RootModel["Segment"]):
    KEY: ClassVar[str] = "not"
    LEAF: ClassVar[bool] = False
    root: Segment

    def to_spec(self) -> dict[str, Any]:
        return {self.KEY: self.root.to_spec()}

    def expr(self, ctx: _Compiler) -> pl.Expr:
        return ~self.root.expr(ctx)  # children are null-free: "does not match"


class Attr(Node, BaseModel):
    """`{"attr": {"name": "tier", "op": "eq", "value": "vip"}}`"""

    model_config = ConfigDict(extra="forbid")
    KEY: ClassVar[str] = "attr"
    name: Text = Field(description="Profile attribute name")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in"]
    value: ScalarValue | list[ScalarValue] = Field(
        description="A string, number or boolean; for `in`, a list of 1–1,000 of one kind"
    )

    @field_validator("value", mode="plain", json_schema_input_type=ScalarValue | list[ScalarValue])
    @classmethod
    def _value(cls, value: Any, info: Any) -> ScalarValue | list[ScalarValue]:
        op = info.data.get("op")
        if op is None:  # op itself is wrong; that error is enough
            return value
        if op == "in":
            if not isinstance(value, list):
                raise PydanticCustomError("segment_value", "'in' takes a list of values")
            if not 1 <= len(value) <= MAX_ITEMS:
                raise PydanticCustomError(
                    "segment_value", "'in' takes 1 to {max} values", {"max": MAX_ITEMS}
                )
            values = [_scalar(item, f"value[{i}]: ") for i, item in enumerate(value)]
            if len({_kind(item) for item in values}) > 1:
                raise PydanticCustomError(
                    "segment_value",
                    "the values of 'in' must all be strings, all numbers or all booleans",
                )
            return values
        if isinstance(value, list):
            raise PydanticCustomError(
                "segment_value", "'{op}' takes one value; use 'in' for a list", {"op": op}
            )
        scalar = _scalar(value)
        if op in ("lt", "le", "gt", "ge") and isinstance(scalar, bool):
            raise PydanticCustomError(
                "segment_value", "'{op}' compares strings or numbers, not booleans", {"op": op}
            )
        return scalar

    def expr(self, ctx: _Compiler) -> pl.Expr:
        kind = _kind(self.value[0] if isinstance(self.value, list) else self.value)
        dtype = ctx.attribute_dtype(self.name)
        if dtype is None or _dtype_kind(dtype) != kind:
            return _NOBODY  # nobody has it, or nobody has it as this kind
        field = pl.col(ATTRIBUTES).struct.field(self.name)
        if kind == "string" and dtype != pl.String:
            field = field.cast(pl.String)
        if dtype.is_float():
            field = field.fill_nan(None)
        if self.op == "in":
            values = list(self.value)  # type: ignore[arg-type]
            if kind == "string":
                test = field.is_in(pl.Series(values, dtype=pl.String).implode())
            elif kind == "boolean":
                test = field.is_in(pl.Series(values, dtype=pl.Boolean).implode())
            elif dtype.is_integer() and all(isinstance(v, int) for v in values):
                test = field.cast(pl.Int64, strict=False).is_in(
                    pl.Series(values, dtype=pl.Int64).implode()
                )
            else:
                test = field.cast(pl.Float64).is_in(
                    pl.Series([float(v) for v in values], dtype=pl.Float64).implode()
                )
        else:
            test = getattr(field, self.op)(pl.lit(self.value))
        return test.fill_null(False)


class Country(Node, RootModel[list[CountryCode]]):
    KEY: ClassVar[str] = "country"
    root: list[CountryCode] = Field(min_length=1, max_length=MAX_ITEMS)

    def expr(self, ctx: _Compiler) -> pl.Expr:
        column = ctx.string_column(COUNTRY, self.KEY)
        return column.is_in(pl.Series(self.root, dtype=pl.String).implode()).fill_null(False)


def _locale_pattern(tag: str, whole: bool) -> str:
    """A case-insensitive regex for a validated tag (letters, digits, `-`, `_`) that reads
    `_` as `-`: about 5 times faster on a million rows than lower-casing the column."""
    body = "[-_]".join(re.escape(part) for part in re.split(r"[-_]", tag))
    return f"(?i)^{body}$" if whole else f"(?i)^{body}(?:[-_]|$)"


class Locale(Node, BaseModel):
    """`{"locale": {"eq": "de-DE"}}` or `{"locale": {"prefix": "de"}}`"""

    model_config = ConfigDict(extra="forbid")
    KEY: ClassVar[str] = "locale"
    eq: LocaleTag | None = None
    prefix: LocaleTag | None = None

    @model_validator(mode="after")
    def _one(self) -> Locale:
        if (self.eq is None) == (self.prefix is None):
            raise PydanticCustomError("segment_locale", "give exactly one of 'eq' and 'prefix'")
        return self

    def expr(self, ctx: _Compiler) -> pl.Expr:
        locale = ctx.string_column(LOCALE, self.KEY)
        if self.eq is not None:
            test = locale.str.contains(_locale_pattern(self.eq, whole=True))
        else:
            test = locale.str.contains(_locale_pattern(self.prefix or "", whole=False))
        return test.fill_null(False)

    def to_spec(self) -> dict[str, Any]:
        return {self.KEY: self.model_dump(mode="json", exclude_none=True)}


class Platform(Node, RootModel[Literal["ios", "android", "web"]]):
    KEY: ClassVar[str] = "platform"
    root: Literal["ios", "android", "web"]

    def expr(self, ctx: _Compiler) -> pl.Expr:
        return ctx.list_contains(PLATFORMS, self.KEY, self.root)


class ActiveWithinDays(Node, RootModel[float]):
    KEY: ClassVar[str] = "active_within_days"
    root: float = Field(gt=0, le=MAX_DAYS, strict=True, allow_inf_nan=False)

    def expr(self, ctx: _Compiler) -> pl.Expr:
        column = ctx.number_column(LAST_ACTIVE_AT, self.KEY)
        return (column >= ctx.now - self.root * DAY_S).fill_null(False)


class Affinity(Node, BaseModel):
    """`{"affinity": {"category": "fashion", "min": 0.6}}`"""

    model_config = ConfigDict(extra="forbid")
    KEY: ClassVar[str] = "affinity"
    category: Category
    min: float = Field(ge=0, le=1, strict=True, allow_inf_nan=False)

    def expr(self, ctx: _Compiler) -> pl.Expr:
        name = AFFINITY_PREFIX + self.category
        if name not in ctx.schema:
            return _NOBODY  # no scores for this category in the snapshot
        column = ctx.number_column(name, self.KEY)
        return (column >= self.min).fill_null(False)


class WishlistContains(Node, RootModel[Text]):
    KEY: ClassVar[str] = "wishlist_contains"
    root: Text = Field(description="A catalogue product id")

    def expr(self, ctx: _Compiler) -> pl.Expr:
        return ctx.list_contains(WISHLIST, self.KEY, self.root)


NODES: dict[str, type[Node]] = {
    cls.KEY: cls
    for cls in (
        AllOf,
        AnyOf,
        Not,
        Attr,
        Country,
        Locale,
        Platform,
        ActiveWithinDays,
        Affinity,
        WishlistContains,
    )
}
_EXPECTED = ", ".join(NODES)

# Depth and leaf count of the spec being parsed (contextvars: per thread and per task).
_depth: ContextVar[int] = ContextVar("segment_depth", default=0)
_leaves: ContextVar[int] = ContextVar("segment_leaves", default=0)


def _check_condition(value: Any, handler: Any) -> Node:
    """Around each condition: its shape (one known key), its depth, the running leaf count.
    Errors are raised at the condition itself, so their `loc` is its path."""
    if isinstance(value, dict):
        keys = list(value)
        if len(keys) != 1:
            raise PydanticCustomError(
                "segment_condition",
                "a condition is an object with exactly one key, one of: {expected}; got {got}",
                {"expected": _EXPECTED, "got": ", ".join(map(str, keys)) or "none"},
            )
        if keys[0] not in NODES:
            raise PydanticCustomError(
                "segment_condition",
                "unknown condition '{key}'; expected one of: {expected}",
                {"key": str(keys[0])[:MAX_STRING], "expected": _EXPECTED},
            )
    elif not isinstance(value, Node):
        raise PydanticCustomError(
            "segment_condition",
            "a condition is an object with exactly one key, one of: {expected}",
            {"expected": _EXPECTED},
        )
    depth = _depth.get()
    if depth >= MAX_DEPTH:
        raise PydanticCustomError(
            "segment_too_deep", "conditions nested deeper than {max}", {"max": MAX_DEPTH}
        )
    depth_token = _depth.set(depth + 1)
    leaves_token = _leaves.set(0) if depth == 0 else None
    try:
        node = handler(value)
        if node.LEAF:
            count = _leaves.get() + 1
            _leaves.set(count)
            if count == MAX_LEAVES + 1:  # one error at the first condition over the limit
                raise PydanticCustomError(
                    "segment_too_many_conditions",
                    "more than {max} conditions in one segment",
                    {"max": MAX_LEAVES},
                )
        return node
    finally:
        _depth.reset(depth_token)
        if leaves_token is not None:
            _leaves.reset(leaves_token)


def _condition_key(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value), None)
    return getattr(value, "KEY", None)


Segment = Annotated[
    Union[tuple(Annotated[cls, Tag(key)] for key, cls in NODES.items())],  # noqa: UP007
    Discriminator(_condition_key),
    WrapValidator(_check_condition),
    PlainSerializer(lambda node: node.to_spec(), return_type=dict),
]
"""A segment condition; use it as a field type (`segment: Segment`) or through `SEGMENT`."""

for _cls in (AllOf, AnyOf, Not):
    _cls.model_rebuild()
SEGMENT: TypeAdapter[Node] = TypeAdapter(Segment)


def parse_segment(spec: Node | Mapping[str, Any] | str | bytes) -> Node:
    """A segment from its JSON text or decoded JSON; raises `ValidationError`."""
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, str | bytes):
        return SEGMENT.validate_json(spec)
    return SEGMENT.validate_python(spec)


def error_fields(exc: ValidationError, prefix: str = "segment") -> list[dict[str, str]]:
    """The API's 422 `fields` for a bad segment: `[{"field": "segment.all[2].affinity.min",
    "reason": ...}]`, paths rendered by the API's own `field_path`."""
    from api.errors import field_path  # the API layer, only when answering it

    fields = []
    for error in exc.errors():
        loc = (prefix, *error["loc"]) if prefix else tuple(error["loc"])
        reason = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        fields.append({"field": field_path(loc), "reason": reason})
    return fields


# --- compilation ---------------------------------------------------------------------------

_NOBODY = pl.lit(False)


def _dtype_kind(dtype: pl.DataType) -> str | None:
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "number"
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return "string"
    return None


class _Compiler:
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
        if _dtype_kind(dtype) != "string" and dtype != pl.Null:
            raise SnapshotError(f"the snapshot's {column!r} column is {dtype}, not strings")
        return pl.col(column) if dtype == pl.String else pl.col(column).cast(pl.String)

    def number_column(self, column: str, condition: str) -> pl.Expr:
        dtype = self._dtype(column, condition)
        if _dtype_kind(dtype) != "number" and dtype != pl.Null:
            raise SnapshotError(f"the snapshot's {column!r} column is {dtype}, not numbers")
        # Compare the stored value exactly (a Float32 score against a float64 bound); NaN is
        # a missing value, not "greater than everything" as polars orders it.
        return pl.col(column).cast(pl.Float64).fill_nan(None)

    def list_contains(self, column: str, condition: str, item: str) -> pl.Expr:
        dtype = self._dtype(column, condition)
        if dtype == pl.Null:
            return _NOBODY  # all null: nobody has a list
        if not isinstance(dtype, pl.List):
            raise SnapshotError(f"the snapshot's {column!r} column is {dtype}, not a list")
        return pl.col(column).list.contains(item).fill_null(False)


def compile_segment(
    segment: Node | Mapping[str, Any] | str | bytes,
    now: float,
    schema: Mapping[str, pl.DataType],
) -> pl.Expr:
    """The segment as one null-free boolean polars expression over snapshot frames of this
    `schema` (`frame.schema`, `lazy.collect_schema()`); `now` is epoch seconds for
    `active_within_days`. Raises `ValidationError` for a bad spec and `SnapshotError` when
    the schema lacks a core column the segment uses."""
    return parse_segment(segment).expr(_Compiler(now, schema))


def select_users(
    frame: pl.DataFrame | pl.LazyFrame,
    segment: Node | Mapping[str, Any] | str | bytes,
    now: float,
) -> pl.Series:
    """The `user_id`s of the snapshot rows in the segment, in frame order."""
    if isinstance(frame, pl.LazyFrame):
        expr = compile_segment(segment, now, frame.collect_schema())
        return frame.select(pl.col(USER_ID).filter(expr)).collect().to_series()
    expr = compile_segment(segment, now, frame.schema)
    return frame.select(pl.col(USER_ID).filter(expr)).to_series()


# --- the snapshot ----------------------------------------------------------------------------


def users_frame(
    profiles: pl.DataFrame,
    devices: pl.DataFrame | None = None,
    wishlists: pl.DataFrame | None = None,
    *,
    activity: pl.DataFrame | None = None,
    affinities: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The snapshot frame from a shard's tables: `profiles` (PROFILES: user_id, country,
    locale, attributes as a JSON object string), `devices` (DEVICES: user_id, platform,
    active), `wishlists` (WISHLISTS: user_id, product_id), and when known `activity`
    (user_id, last_active_at) and `affinities` (user_id, affinity_<category>...).

    One row per user found in any of them. Attributes are decoded in one pass with polars'
    schema inference over all rows: an attribute whose values are of one JSON kind keeps it;
    one stored with different kinds for different users decodes to their common supertype
    (strings mixed with numbers become strings). `last_active_at` is left out without
    `activity`, so a segment using it fails loudly instead of selecting nobody."""
    parts = [profiles.select(USER_ID)]
    active = None
    if devices is not None:
        active = devices.filter(pl.col("active")) if "active" in devices.columns else devices
        parts.append(active.select(USER_ID))
    for extra in (wishlists, activity, affinities):
        if extra is not None:
            parts.append(extra.select(USER_ID))
    ids = pl.concat([p.with_columns(pl.col(USER_ID).cast(pl.String)) for p in parts])
    users = ids.unique(maintain_order=True)

    profile = profiles.select(USER_ID, COUNTRY, LOCALE)
    if ATTRIBUTES in profiles.columns:
        decoded = profiles[ATTRIBUTES].cast(pl.String).str.json_decode(infer_schema_length=None)
        if isinstance(decoded.dtype, pl.Struct) and decoded.dtype.fields:
            profile = profile.with_columns(decoded.alias(ATTRIBUTES))
    users = users.join(
        profile.unique(USER_ID, keep="last"), on=USER_ID, how="left", maintain_order="left"
    )

    empty = pl.lit([], dtype=pl.List(pl.String))
    if active is not None:
        platforms = active.group_by(USER_ID).agg(
            pl.col("platform").unique().sort().alias(PLATFORMS)
        )
        users = users.join(platforms, on=USER_ID, how="left", maintain_order="left")
    else:
        users = users.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias(PLATFORMS))
    if wishlists is not None:
        wished = wishlists.group_by(USER_ID).agg(
            pl.col("product_id").unique(maintain_order=True).alias(WISHLIST)
        )
        users = users.join(wished, on=USER_ID, how="left", maintain_order="left")
    else:
        users = users.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias(WISHLIST))
    users = users.with_columns(pl.col(PLATFORMS, WISHLIST).fill_null(empty))

    if activity is not None:
        last = activity.group_by(USER_ID).agg(pl.col(LAST_ACTIVE_AT).cast(pl.Float64).max())
        users = users.join(last, on=USER_ID, how="left", maintain_order="left")
    if affinities is not None:
        scores = affinities.select(USER_ID, pl.col(f"^{AFFINITY_PREFIX}.*$"))
        users = users.join(
            scores.unique(USER_ID, keep="last"), on=USER_ID, how="left", maintain_order="left"
        )
    return users
