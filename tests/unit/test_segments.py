"""Segments: JSON spec → pydantic validation → one polars expression over a shard snapshot.

Pure unit tests (no Ray, no Redis, none of the session fixtures): the compiled filter is
checked against a plain-Python evaluator of the raw JSON spec on small random frames, bad
specs against the paths their errors name, and one readable campaign audience by hand."""

from __future__ import annotations

import json
import math
import operator

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from api.errors import field_path
from pipelines.segments import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_LEAVES,
    SEGMENT,
    Segment,
    SnapshotError,
    compile_segment,
    error_fields,
    parse_segment,
    select_users,
    users_frame,
)

NOW = 1_750_000_000.0
DAY = 86_400.0

# --- a plain-Python reference: one user at a time, straight from the JSON spec --------------

_COMPARE = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


def _kind(value: object) -> str | None:
    """string / number / boolean, or None for a missing value (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return None if math.isnan(value) else "number"
    return "string"


def _norm(tag: str) -> str:
    return tag.lower().replace("_", "-")


def reference(spec: dict, user: dict, now: float) -> bool:
    ((key, arg),) = spec.items()
    if key == "all":
        return all(reference(child, user, now) for child in arg)
    if key == "any":
        return any(reference(child, user, now) for child in arg)
    if key == "not":
        return not reference(arg, user, now)
    if key == "attr":
        value = (user.get("attributes") or {}).get(arg["name"])
        targets = arg["value"] if arg["op"] == "in" else [arg["value"]]
        if _kind(value) is None or _kind(value) != _kind(targets[0]):
            return False  # missing, or of another kind than the spec's value
        if arg["op"] == "in":
            return any(value == target for target in targets)
        return _COMPARE[arg["op"]](value, arg["value"])
    if key == "country":
        return user["country"] is not None and user["country"] in arg
    if key == "locale":
        if user["locale"] is None:
            return False
        locale = _norm(user["locale"])
        if "eq" in arg:
            return locale == _norm(arg["eq"])
        prefix = _norm(arg["prefix"])
        return locale == prefix or locale.startswith(prefix + "-")
    if key == "platform":
        return arg in (user["platforms"] or [])
    if key == "active_within_days":
        seen = user.get("last_active_at")
        return _kind(seen) is not None and seen >= now - arg * DAY
    if key == "affinity":
        score = user.get(f"affinity_{arg['category']}")
        return _kind(score) is not None and score >= arg["min"]
    if key == "wishlist_contains":
        return arg in (user["wishlist"] or [])
    raise AssertionError(f"unknown condition {key}")


# --- random snapshots ----------------------------------------------------------------------

COUNTRIES = ["DE", "AT", "FR", "US"]
LOCALES = ["de-DE", "de_AT", "DE-ch", "de", "dev", "en-US", "EN_us", "en", "fr-FR"]
PLATFORMS = ["ios", "android", "web"]
PRODUCTS = ["p1", "p2", "p3", "p4"]
TIERS = ["gold", "vip", "basic", "", "Vip"]
ATTRIBUTE_TYPES = {
    "tier": pl.String,
    "orders": pl.Int64,
    "ltv": pl.Float64,
    "newsletter": pl.Boolean,
}
NAN = float("nan")
SCORES = st.sampled_from([0.0, 0.25, 0.5, 0.6, 1.0, NAN]) | st.floats(0, 1, width=32)
SEEN = st.sampled_from([0, 0.5, 1, 6.999, 7, 7.001, 30, 400, -0.05]).map(
    lambda days: NOW - days * DAY
) | st.just(NAN)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


@st.composite
def snapshots(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 30))

    def column(strategy: st.SearchStrategy) -> list:
        return [draw(strategy) for _ in range(n)]

    fields = {
        name: dtype
        for name, dtype in ATTRIBUTE_TYPES.items()
        if draw(st.booleans()) or name == "tier"  # sometimes no user has an attribute at all
    }
    values = {
        "tier": maybe(st.sampled_from(TIERS)),
        "orders": maybe(st.integers(-3, 12)),
        "ltv": maybe(st.sampled_from([0.5, 2.0, 10.0, -1.5, NAN]) | st.floats(-5, 20)),
        "newsletter": maybe(st.booleans()),
    }
    attributes = column(maybe(st.fixed_dictionaries({name: values[name] for name in fields})))
    frame = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "country": column(maybe(st.sampled_from(COUNTRIES))),
            "locale": column(maybe(st.sampled_from(LOCALES))),
            "last_active_at": column(maybe(SEEN)),
            "platforms": column(maybe(st.lists(st.sampled_from(PLATFORMS), unique=True))),
            "wishlist": column(maybe(st.lists(st.sampled_from(PRODUCTS), max_size=3))),
            "affinity_fashion": column(maybe(SCORES)),
            "affinity_home": column(maybe(SCORES)),
            "attributes": pl.Series(attributes, dtype=pl.Struct(fields)),
        },
        schema_overrides={
            "user_id": pl.String,
            "country": pl.String,
            "locale": pl.String,
            "last_active_at": pl.Float64,
            "platforms": pl.List(pl.String),
            "wishlist": pl.List(pl.String),
            "affinity_fashion": pl.Float32,
            "affinity_home": pl.Float32,
        },
    )
    # Open-ended columns may be absent altogether: then nobody has those values.
    return frame.drop(draw(st.sets(st.sampled_from(["attributes", "affinity_home"]))))


# --- random segments -----------------------------------------------------------------------

STRINGS = st.sampled_from(["gold", "vip", "basic", "", "Vip", "z"])
NUMBERS = st.integers(-3, 12) | st.sampled_from([0.5, 2.0, 10.0, -1.5, 2.5])
BOOLEANS = st.booleans()
NAMES = st.sampled_from([*ATTRIBUTE_TYPES, "nope"])


@st.composite
def attr_leaf(draw: st.DrawFn) -> dict:
    op = draw(st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "in"]))
    if op == "in":
        kind = draw(st.sampled_from([STRINGS, NUMBERS, BOOLEANS]))
        value = draw(st.lists(kind, min_size=1, max_size=4))
    elif op in ("eq", "ne"):
        value = draw(STRINGS | NUMBERS | BOOLEANS)
    else:
        value = draw(STRINGS | NUMBERS)
    return {"attr": {"name": draw(NAMES), "op": op, "value": value}}


LOCALE_TAGS = st.sampled_from(["de", "de-DE", "de_at", "DE-CH", "en", "en-us", "dev", "fr"])
LEAVES = st.one_of(
    attr_leaf(),
    st.lists(st.sampled_from(COUNTRIES + ["GB"]), min_size=1, max_size=3).map(
        lambda codes: {"country": codes}
    ),
    LOCALE_TAGS.map(lambda tag: {"locale": {"eq": tag}}),
    LOCALE_TAGS.map(lambda tag: {"locale": {"prefix": tag}}),
    st.sampled_from(PLATFORMS).map(lambda name: {"platform": name}),
    st.sampled_from([0.5, 1, 7, 30, 365]).map(lambda days: {"active_within_days": days}),
    st.builds(
        lambda category, low: {"affinity": {"category": category, "min": low}},
        st.sampled_from(["fashion", "home", "toys"]),
        st.sampled_from([0, 0.25, 0.5, 0.6, 1]) | st.floats(0, 1),
    ),
    st.sampled_from(PRODUCTS + ["p9"]).map(lambda product: {"wishlist_contains": product}),
)


def segments(depth: int) -> st.SearchStrategy:
    if depth <= 1:
        return LEAVES
    sub = segments(depth - 1)
    children = st.lists(sub, min_size=1, max_size=3)
    return st.one_of(
        LEAVES,
        children.map(lambda items: {"all": items}),
        children.map(lambda items: {"any": items}),
        sub.map(lambda item: {"not": item}),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=snapshots(), spec=segments(depth=4))
def test_compiled_segment_selects_what_the_reference_selects(frame: pl.DataFrame, spec: dict):
    expected = [user["user_id"] for user in frame.rows(named=True) if reference(spec, user, NOW)]
    assert select_users(frame, spec, NOW).to_list() == expected
    assert select_users(frame.lazy(), json.dumps(spec), NOW).to_list() == expected
    # `not` of anything splits the users exactly in two: no one falls out of both sides.
    negated = select_users(frame, {"not": spec}, NOW).to_list()
    assert sorted(negated + expected) == sorted(frame["user_id"].to_list())
    # The parsed tree serializes back to the spec it came from.
    assert SEGMENT.dump_python(parse_segment(spec)) == spec


# --- missing values: two-valued on purpose ---------------------------------------------------

THREE = pl.DataFrame(
    {
        "user_id": ["vip", "gold", "no-tier", "no-attributes"],
        "attributes": pl.Series(
            [{"tier": "vip"}, {"tier": "gold"}, {"tier": None}, None],
            dtype=pl.Struct({"tier": pl.String}),
        ),
        "country": ["DE", None, "DE", "FR"],
    }
)


def users_in(frame: pl.DataFrame, spec: dict) -> set[str]:
    return set(select_users(frame, spec, NOW).to_list())


def test_a_missing_value_matches_no_comparison_but_matches_its_not():
    is_vip = {"attr": {"name": "tier", "op": "eq", "value": "vip"}}
    assert users_in(THREE, is_vip) == {"vip"}
    assert users_in(THREE, {"not": is_vip}) == {"gold", "no-tier", "no-attributes"}
    # `ne` is a comparison: it needs a tier.
    assert users_in(THREE, {"attr": {"name": "tier", "op": "ne", "value": "vip"}}) == {"gold"}
    assert users_in(THREE, {"not": {"country": ["DE"]}}) == {"gold", "no-attributes"}
    # Another kind than the data's is no match, never an error: "3" is not 3.
    assert users_in(THREE, {"attr": {"name": "tier", "op": "eq", "value": 3}}) == set()
    assert users_in(THREE, {"not": {"attr": {"name": "tier", "op": "eq", "value": 3}}}) == {
        "vip",
        "gold",
        "no-tier",
        "no-attributes",
    }
    # An attribute or a category nobody has: the condition matches nobody.
    assert users_in(THREE, {"attr": {"name": "age", "op": "gt", "value": 1}}) == set()
    assert users_in(THREE.drop("attributes"), is_vip) == set()
    assert len(users_in(THREE, {"not": {"affinity": {"category": "toys", "min": 0}}})) == 4


def test_a_core_column_the_segment_needs_must_be_in_the_snapshot():
    with pytest.raises(SnapshotError, match="'platforms'"):
        select_users(THREE, {"any": [{"country": ["DE"]}, {"platform": "ios"}]}, NOW)
    with pytest.raises(SnapshotError, match="'last_active_at'"):
        compile_segment({"active_within_days": 7}, NOW, THREE.schema)


# --- a readable audience -------------------------------------------------------------------

GERMAN_FASHION_IPHONE_NOT_VIP = {
    "all": [
        {"country": ["DE"]},
        {"active_within_days": 7},
        {"affinity": {"category": "fashion", "min": 0.6}},
        {"platform": "ios"},
        {"not": {"attr": {"name": "tier", "op": "eq", "value": "vip"}}},
    ]
}


def test_german_fashion_lovers_on_an_iphone_active_this_week_who_are_not_vip():
    def user(uid, country="DE", days_ago=1.0, fashion=0.8, platforms=("ios",), tier="gold"):
        return {
            "user_id": uid,
            "country": country,
            "last_active_at": None if days_ago is None else NOW - days_ago * DAY,
            "affinity_fashion": fashion,
            "platforms": list(platforms),
            "wishlist": [],
            "attributes": {"tier": tier, "orders": 2},
        }

    frame = pl.DataFrame(
        [
            user("anna"),  # everything fits
            user("ben", tier=None),  # no tier at all: not a vip, so in
            user("cleo", fashion=0.6, days_ago=7.0),  # both bounds are inclusive
            user("dora", platforms=("android", "ios")),  # an iPhone among others
            user("emil", country="AT"),
            user("fritz", days_ago=8),
            user("greta", days_ago=None),  # never seen active
            user("hans", fashion=0.59),
            user("ines", fashion=None),
            user("jonas", platforms=("android",)),
            user("karl", platforms=()),
            user("lena", tier="vip"),
        ],
        schema_overrides={"affinity_fashion": pl.Float32, "last_active_at": pl.Float64},
    )
    assert users_in(frame, GERMAN_FASHION_IPHONE_NOT_VIP) == {"anna", "ben", "cleo", "dora"}


# --- bad specs name the offending part -----------------------------------------------------


def nested_nots(levels: int) -> dict:
    spec: dict = {"platform": "ios"}
    for _ in range(levels - 1):
        spec = {"not": spec}
    return spec


BAD = [
    pytest.param(
        {"all": [{"country": ["DE"]}, {"platform": "ios"}, {"bogus": 1}]},
        "segment.all[2]",
        "unknown condition 'bogus'",
        id="unknown condition",
    ),
    pytest.param(
        {"any": [{"country": ["DE"], "platform": "ios"}]},
        "segment.any[0]",
        "exactly one key",
        id="two keys in one condition",
    ),
    pytest.param(
        {"all": [{"country": ["DE"]}, {"platform": "ios"}, {"affinity": {"min": 0.5}}]},
        "segment.all[2].affinity.category",
        "Field required",
        id="missing field",
    ),
    pytest.param(
        {
            "all": [
                {"country": ["DE"]},
                {"platform": "ios"},
                {"affinity": {"category": "fashion", "min": 1.5}},
            ]
        },
        "segment.all[2].affinity.min",
        "less than or equal to 1",
        id="affinity min over 1",
    ),
    pytest.param(
        {"not": {"active_within_days": "7"}},
        "segment.not.active_within_days",
        "valid number",
        id="wrong type",
    ),
    pytest.param(
        {"platform": "windows"},
        "segment.platform",
        "'ios', 'android' or 'web'",
        id="unknown platform",
    ),
    pytest.param(
        {"attr": {"name": "tier", "op": "lt", "value": True}},
        "segment.attr.value",
        "not booleans",
        id="ordering a boolean",
    ),
    pytest.param(
        {"attr": {"name": "tier", "op": "in", "value": ["gold", 3]}},
        "segment.attr.value",
        "must all be strings, all numbers or all booleans",
        id="mixed kinds in 'in'",
    ),
    pytest.param(
        {"attr": {"name": "tier", "op": "in", "value": ["gold", {"x": 1}]}},
        "segment.attr.value",
        "value[1]: expected a string, number or boolean",
        id="object among the values",
    ),
    pytest.param(
        {"locale": {"eq": "de", "prefix": "de"}},
        "segment.locale",
        "exactly one of 'eq' and 'prefix'",
        id="locale both ways",
    ),
    pytest.param(
        {"country": ["de"]},
        "segment.country[0]",
        "pattern",
        id="lower-case country",
    ),
    pytest.param(
        nested_nots(MAX_DEPTH + 1),
        "segment" + ".not" * MAX_DEPTH,
        f"deeper than {MAX_DEPTH}",
        id="too deep",
    ),
    pytest.param(
        {"any": [{"wishlist_contains": f"p{i}"} for i in range(MAX_LEAVES + 5)]},
        f"segment.any[{MAX_LEAVES}]",
        f"more than {MAX_LEAVES} conditions",
        id="too many leaves",
    ),
    pytest.param(
        {"all": [{"platform": "ios"}, {"country": ["DE"] * (MAX_ITEMS + 1)}]},
        "segment.all[1].country",
        f"at most {MAX_ITEMS} items",
        id="too long list",
    ),
    pytest.param(
        {"wishlist_contains": "x" * 129},
        "segment.wishlist_contains",
        "at most 128 characters",
        id="too long string",
    ),
    pytest.param({"all": []}, "segment.all", "at least 1 item", id="empty all"),
]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD)
def test_a_bad_spec_is_refused_naming_the_offending_part(spec: dict, field: str, reason: str):
    with pytest.raises(ValidationError) as raised:
        parse_segment(spec)
    fields = error_fields(raised.value)
    assert len(fields) == 1, fields
    assert fields[0]["field"] == field
    assert reason in fields[0]["reason"]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD)
def test_error_fields_render_paths_as_the_api_handler_does(spec: dict, field: str, reason: str):
    with pytest.raises(ValidationError) as raised:
        parse_segment(spec)
    rendered = [f["field"] for f in error_fields(raised.value)]
    assert rendered == [field_path(("segment", *e["loc"])) for e in raised.value.errors()]


def test_error_paths_are_the_same_through_a_request_model_and_the_api_handler():
    class CampaignLike(BaseModel):
        segment: Segment

    spec = {"all": [{"country": ["DE"]}, {"platform": "ios"}, {"affinity": {"category": "x"}}]}
    with pytest.raises(ValidationError) as raised:
        CampaignLike.model_validate({"segment": spec})
    (error,) = raised.value.errors()
    assert error["loc"] == ("segment", "all", 2, "affinity", "min")
    assert field_path(("body", *error["loc"])) == "segment.all[2].affinity.min"
    with pytest.raises(ValidationError) as raised:
        SEGMENT.validate_json(json.dumps(spec))
    assert raised.value.errors()[0]["loc"] == ("all", 2, "affinity", "min")


def test_the_json_schema_shows_one_key_objects():
    schema = SEGMENT.json_schema()
    affinity = schema["$defs"]["Affinity"]
    assert affinity["required"] == ["affinity"]
    assert affinity["additionalProperties"] is False
    assert set(affinity["properties"]["affinity"]["properties"]) == {"category", "min"}
    assert len(schema["oneOf"]) == 10


# --- from shard tables to the snapshot -----------------------------------------------------


def test_users_frame_from_shard_tables():
    profiles = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "country": ["DE", "DE", "FR"],
            "locale": ["de_DE", "en-GB", None],
            "timezone": [None, None, None],
            "attributes": ['{"tier": "vip", "orders": 3}', '{"orders": 1}', None],
            "updated_at": [1.0, 1.0, 1.0],
        }
    )
    devices = pl.DataFrame(
        {
            "device_id": ["d1", "d2", "d3", "d4"],
            "user_id": ["u1", "u2", "u2", "u4"],  # u4: a device but no profile
            "platform": ["ios", "android", "ios", "web"],
            "active": [True, True, False, True],  # u2's iPhone is unregistered
        }
    )
    wishlists = pl.DataFrame({"user_id": ["u3", "u3"], "product_id": ["sku-1", "sku-2"]})
    activity = pl.DataFrame({"user_id": ["u1", "u2"], "last_active_at": [NOW - DAY, NOW - 9 * DAY]})
    frame = users_frame(profiles, devices, wishlists, activity=activity)

    assert frame["user_id"].to_list() == ["u1", "u2", "u3", "u4"]
    assert frame.schema["attributes"] == pl.Struct({"tier": pl.String, "orders": pl.Int64})
    assert frame["platforms"].to_list() == [["ios"], ["android"], [], ["web"]]
    assert frame["wishlist"].to_list() == [[], [], ["sku-1", "sku-2"], []]
    assert users_in(frame, {"platform": "ios"}) == {"u1"}
    assert users_in(frame, {"locale": {"prefix": "de"}}) == {"u1"}
    assert users_in(frame, {"attr": {"name": "orders", "op": "ge", "value": 1}}) == {"u1", "u2"}
    assert users_in(frame, {"not": {"attr": {"name": "tier", "op": "eq", "value": "vip"}}}) == {
        "u2",
        "u3",
        "u4",
    }
    assert users_in(frame, {"active_within_days": 7}) == {"u1"}
    assert users_in(frame, {"wishlist_contains": "sku-2"}) == {"u3"}
    # Without activity there is no last_active_at: a segment using it fails loudly.
    with pytest.raises(SnapshotError):
        select_users(users_frame(profiles, devices), {"active_within_days": 7}, NOW)


def test_locale_matches_language_tags_ignoring_case_and_separator():
    frame = pl.DataFrame(
        {
            "user_id": ["de", "de-DE", "DE_at", "dev", "en-DE", "none"],
            "locale": ["de", "de-DE", "DE_at", "dev", "en-DE", None],
        }
    )
    assert users_in(frame, {"locale": {"prefix": "de"}}) == {"de", "de-DE", "DE_at"}
    assert users_in(frame, {"locale": {"prefix": "DE-at"}}) == {"DE_at"}
    assert users_in(frame, {"locale": {"eq": "de_de"}}) == {"de-DE"}
    assert users_in(frame, {"not": {"locale": {"eq": "de"}}}) == {
        "de-DE",
        "DE_at",
        "dev",
        "en-DE",
        "none",
    }
