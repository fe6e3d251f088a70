"""The ranker's feature contract: one function, `features`, for training and serving.

`features(users, variants, category=..., now=...)` gives a float32 matrix with one row per
(user, variant) pair, user-major (row `u * V + v`), and the columns `FEATURE_COLUMNS`.
User-level columns are computed once per user (vectorized, polars / numpy), variant-level
ones once per variant, and the pairs are filled by numpy broadcasting — no Python loop over
users (only over the distinct time zones, to look up each zone's UTC offset).

Columns
-------
User level (the same for every variant of a user):

- `affinity` — `affinity_<category>` of the notification's category, clipped to 0–1.
  Missing column, null / NaN value, or `category=None`: 0.
- `log1p_idle_days` — `log1p(days since last_active_at at now)`, idle clipped at 0.
  Missing column or null: `MISSING_IDLE_DAYS` (365) days.
- `hour_evening_cos`, `hour_evening_sin` — `cos` / `sin` of `2π (local_hour − 20) / 24`,
  where `local_hour` is the hour of `now` in the user's time zone with that zone's real
  UTC offset at `now` (DST included). A null time zone falls back to the most populous zone
  of the user's country (`cluster.vocabulary.COUNTRY_TIMEZONE`), then to UTC; an unknown
  zone name: UTC.
- `hour_night` — 1 when `0 ≤ local_hour < 7`.
- `has_ios`, `has_android`, `has_web` — 1 per platform the user has an active device on.
- `no_device` — 1 when `platforms` is an empty list or null (inbox only). Without a
  `platforms` column all four device columns are 0 (nothing known).
- `tier_basic` — 1 when `attributes.tier == "basic"`. Missing `attributes`, missing
  `tier` field or null tier: 1 ("basic" is the default tier of a new account).
  `attributes` may be a Struct or a JSON object string.

Variant level (`variants.style`; unknown, null or a missing column → "plain", the
baseline, all-zero one-hot):

- `style_urgent`, `style_personalized`, `style_discount`, `style_emoji` — one-hot.

Interactions:

- `affinity_x_<style>` for the four non-plain styles — affinity · one-hot.
- `basic_x_discount` — tier_basic · style_discount.

Bump `FEATURE_VERSION` whenever the columns, their order or their meaning change: a saved
model records the version it was trained on and `models.ranker.load_ranker` refuses a
mismatch.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl

from cluster.vocabulary import COUNTRY_TIMEZONE, VARIANT_STYLES

FEATURE_VERSION = "f1"

DAY_S = 86_400.0
MISSING_IDLE_DAYS = 365.0
DEFAULT_TIER = "basic"
DEFAULT_STYLE = "plain"
PLATFORM_NAMES = ("ios", "android", "web")
# Non-baseline styles, in one-hot order ("plain" is the all-zero baseline).
STYLE_ONE_HOT = tuple(s for s in VARIANT_STYLES if s != DEFAULT_STYLE)

USER_COLUMNS: tuple[str, ...] = (
    "affinity",
    "log1p_idle_days",
    "hour_evening_cos",
    "hour_evening_sin",
    "hour_night",
    "has_ios",
    "has_android",
    "has_web",
    "no_device",
    "tier_basic",
)
VARIANT_COLUMNS: tuple[str, ...] = tuple(f"style_{s}" for s in STYLE_ONE_HOT)
INTERACTION_COLUMNS: tuple[str, ...] = (
    *(f"affinity_x_{s}" for s in STYLE_ONE_HOT),
    "basic_x_discount",
)
FEATURE_COLUMNS: tuple[str, ...] = USER_COLUMNS + VARIANT_COLUMNS + INTERACTION_COLUMNS

_U = {name: i for i, name in enumerate(USER_COLUMNS)}
_N_USER = len(USER_COLUMNS)
_N_STYLE = len(VARIANT_COLUMNS)
_AFFINITY_X = _N_USER + _N_STYLE  # first affinity_x_<style> column
_BASIC_X_DISCOUNT = len(FEATURE_COLUMNS) - 1
_DISCOUNT = STYLE_ONE_HOT.index("discount")
_PREFIX = "__herald_feature_"

# The most populous zone of each country: the fallback for a user without a time zone.
COUNTRY_DEFAULT_TIMEZONE: dict[str, str] = COUNTRY_TIMEZONE


@lru_cache(maxsize=4096)
def _utc_offset_hours(zone: str, at: float) -> float:
    """The UTC offset of IANA `zone` at epoch second `at`, in hours (0 for an unknown zone)."""
    try:
        info = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return 0.0
    offset = info.utcoffset(datetime.fromtimestamp(at, UTC))
    return offset.total_seconds() / 3600.0 if offset is not None else 0.0


def _zones(users: pl.DataFrame) -> pl.Series:
    """Each user's IANA zone: `timezone`, else the country's most populous zone, else null."""
    if "timezone" in users.columns:
        zone = users["timezone"].cast(pl.String, strict=False)
    else:
        zone = pl.repeat(None, users.height, dtype=pl.String, eager=True)
    if zone.null_count() and "country" in users.columns:
        fallback = (
            users["country"]
            .cast(pl.String, strict=False)
            .replace_strict(COUNTRY_DEFAULT_TIMEZONE, default=None, return_dtype=pl.String)
        )
        zone = zone.fill_null(fallback)
    return zone


def _offset_hours(zone: pl.Series, now: float) -> np.ndarray:
    """UTC offset (hours) at `now` per row of a zone-name series; null / unknown → 0."""
    names = [z for z in zone.unique().to_list() if z is not None]
    if not names:
        return np.zeros(len(zone))
    table = np.array([_utc_offset_hours(z, float(now)) for z in names] + [0.0])  # per zone
    codes = zone.cast(pl.Enum(names)).to_physical().fill_null(len(names)).to_numpy()
    return table[codes]


def local_hour(users: pl.DataFrame, now: float) -> np.ndarray:
    """Hour of `now` (0–24, fractional) in each user's time zone, with the zone's UTC offset
    at `now`; fallbacks as in the module docstring."""
    return ((float(now) % DAY_S) / 3600.0 + _offset_hours(_zones(users), now)) % 24.0


def _tier_expr(users: pl.DataFrame) -> pl.Expr:
    """`attributes.tier == "basic"` (Struct or JSON string attributes), missing → basic."""
    tier = None
    if "attributes" in users.columns:
        dtype = users.schema["attributes"]
        if dtype == pl.String:
            tier = pl.col("attributes").str.json_path_match("$.tier")
        elif isinstance(dtype, pl.Struct) and "tier" in {f.name for f in dtype.fields}:
            tier = pl.col("attributes").struct.field("tier").cast(pl.String, strict=False)
    if tier is None:
        return pl.lit(True).alias("tier_basic")
    return (tier.fill_null(DEFAULT_TIER) == "basic").fill_null(True).alias("tier_basic")


def user_features(users: pl.DataFrame, *, category: str | None, now: float) -> np.ndarray:
    """The user-level columns (`USER_COLUMNS`), float32 of shape (users.height, 10)."""
    n = users.height
    out = np.zeros((n, _N_USER), dtype=np.float32)
    if n == 0:
        return out
    columns = users.columns
    nan = float("nan")
    exprs = [_tier_expr(users)]  # one polars pass over the frame
    affinity_column = f"affinity_{category}" if category is not None else None
    if affinity_column in columns:
        exprs.append(
            pl.col(affinity_column)
            .cast(pl.Float64, strict=False)
            .fill_nan(None)
            .fill_null(0.0)
            .clip(0.0, 1.0)
            .alias("affinity")
        )
    if "last_active_at" in columns:
        exprs.append(
            pl.col("last_active_at").cast(pl.Float64, strict=False).fill_null(nan).alias("last")
        )
    if "platforms" in columns:
        lists = pl.col("platforms").cast(pl.List(pl.String), strict=False)
        exprs += [
            lists.list.contains(name).fill_null(False).alias(f"has_{name}")
            for name in PLATFORM_NAMES
        ]
        exprs.append((lists.list.len().fill_null(0) == 0).alias("no_device"))
    # with_columns broadcasts literals to the frame's height; internal names cannot clash
    cols = users.with_columns(e.name.prefix(_PREFIX) for e in exprs).select(
        pl.col(f"^{_PREFIX}.*$").name.map(lambda c: c.removeprefix(_PREFIX))
    )

    if "affinity" in cols.columns:
        out[:, _U["affinity"]] = cols["affinity"].to_numpy()
    if "last" in cols.columns:
        idle = np.clip((float(now) - cols["last"].to_numpy()) / DAY_S, 0.0, None)
        idle = np.where(np.isnan(idle), MISSING_IDLE_DAYS, idle)
        out[:, _U["log1p_idle_days"]] = np.log1p(idle)
    else:
        out[:, _U["log1p_idle_days"]] = math.log1p(MISSING_IDLE_DAYS)

    hour = local_hour(users, now)
    angle = 2.0 * math.pi * (hour - 20.0) / 24.0
    out[:, _U["hour_evening_cos"]] = np.cos(angle)
    out[:, _U["hour_evening_sin"]] = np.sin(angle)
    out[:, _U["hour_night"]] = hour < 7.0

    for name in (*(f"has_{p}" for p in PLATFORM_NAMES), "no_device"):
        if name in cols.columns:
            out[:, _U[name]] = cols[name].to_numpy()
    out[:, _U["tier_basic"]] = cols["tier_basic"].to_numpy()
    return out


def variant_styles(variants: pl.DataFrame) -> np.ndarray:
    """Index into `VARIANT_STYLES` per variant (unknown / null / missing → "plain")."""
    if "style" not in variants.columns:
        return np.full(variants.height, VARIANT_STYLES.index(DEFAULT_STYLE), dtype=np.int64)
    index = {s: i for i, s in enumerate(VARIANT_STYLES)}
    return (
        variants["style"]
        .cast(pl.String, strict=False)
        .replace_strict(index, default=VARIANT_STYLES.index(DEFAULT_STYLE), return_dtype=pl.Int64)
        .fill_null(VARIANT_STYLES.index(DEFAULT_STYLE))
        .to_numpy()
    )


def variant_features(variants: pl.DataFrame) -> np.ndarray:
    """The style one-hot columns (`VARIANT_COLUMNS`), float32 (variants.height, 4)."""
    style = variant_styles(variants)
    one_hot = np.zeros((variants.height, _N_STYLE), dtype=np.float32)
    for j, name in enumerate(STYLE_ONE_HOT):
        one_hot[:, j] = style == VARIANT_STYLES.index(name)
    return one_hot


def features(
    users: pl.DataFrame, variants: pl.DataFrame, *, category: str | None, now: float
) -> np.ndarray:
    """float32 matrix of shape (users.height * variants.height, len(FEATURE_COLUMNS)),
    user-major (row u*V + v). Vectorized: user-level columns once, then broadcast per
    variant with numpy. The one function for training and serving."""
    n, v = users.height, variants.height
    out = np.empty((n, v, len(FEATURE_COLUMNS)), dtype=np.float32)
    if n == 0 or v == 0:
        return out.reshape(n * v, len(FEATURE_COLUMNS))
    user = user_features(users, category=category, now=now)  # (n, U)
    style = variant_features(variants)  # (v, S)
    out[:, :, :_N_USER] = user[:, None, :]
    out[:, :, _N_USER:_AFFINITY_X] = style[None, :, :]
    affinity = user[:, _U["affinity"]]
    np.multiply(
        affinity[:, None, None],
        style[None, :, :],
        out=out[:, :, _AFFINITY_X:_BASIC_X_DISCOUNT],
    )
    np.multiply(
        user[:, None, _U["tier_basic"]],
        style[None, :, _DISCOUNT],
        out=out[:, :, _BASIC_X_DISCOUNT],
    )
    return out.reshape(n * v, len(FEATURE_COLUMNS))


def linear_logits(
    users: pl.DataFrame,
    variants: pl.DataFrame,
    *,
    category: str | None,
    now: float,
    coef: np.ndarray,
    intercept: float,
) -> np.ndarray:
    """(users.height, variants.height) float64 `features(...) @ coef + intercept`, without
    building the (n·v, F) matrix: the user part once, then per variant a constant plus its
    slopes on affinity and on tier_basic — exactly how `features` lays out the style and
    interaction columns, so a linear model scores the same either way (tested)."""
    coef = np.asarray(coef, dtype=np.float64).ravel()
    if coef.shape[0] != len(FEATURE_COLUMNS):
        raise ValueError(f"{coef.shape[0]} coefficients for {len(FEATURE_COLUMNS)} features")
    user = user_features(users, category=category, now=now)  # float32, like the matrix
    style = variant_features(variants).astype(np.float64)
    base = (user @ coef[:_N_USER].astype(np.float32)).astype(np.float64) + float(intercept)
    constant = style @ coef[_N_USER:_AFFINITY_X]
    affinity_slope = style @ coef[_AFFINITY_X:_BASIC_X_DISCOUNT]
    basic_slope = style[:, _DISCOUNT] * coef[_BASIC_X_DISCOUNT]
    return (
        base[:, None]
        + constant[None, :]
        + user[:, _U["affinity"], None] * affinity_slope[None, :]
        + user[:, _U["tier_basic"], None] * basic_slope[None, :]
    )
