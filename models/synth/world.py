"""The hidden engagement model: what the synthetic users "do" with a notification.

For a notification of `category` in variant style `s` sent at `hour_utc` to a user:

    logit P(opened) = intercept
                    + affinity        · a                    a = affinity_<category> (0–1)
                    + recency         · log1p(days)          days since last_active_at
                    + evening         · cos(2π (h − 20) / 24) h = local hour of the send
                    + night           · [0 ≤ h < 7]
                    + platform[p]     · [user has an active p device], p ∈ ios, android, web
                    + no_device       · [no active device: inbox only]
                    + style[s]
                    + personalized_affinity · a · [s = personalized]
                    + discount_basic  · [s = discount] · [tier = basic]
    logit P(clicked | opened) = click.intercept + click.affinity · a + click.style[s]

`P(clicked) = P(opened) · P(clicked | opened)`. The local hour uses each time zone's UTC
offset at the model's `reference_time` (DST changes after it are ignored). A user without a
score for the category counts as `a = 0`; without `last_active_at` as 365 days idle; a frame
without `timezone` uses the country's most populous zone; without `platforms` the platform
terms are 0. Everything is deterministic for a seed; the model has no per-user noise beyond
the Bernoulli draws of `simulate_feedback`.

The model reads the users frame (`models.snapshot`, plus `timezone`) that
`models.synth.load_population` gives; it is written next to a population as
`ground_truth.json`. Rankers must not read it; evaluators and the simulated feedback do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cluster.vocabulary import CATEGORIES, VARIANT_STYLES
from models.synth.geography import COUNTRIES, DAY_S, REFERENCE_TIME, tz_offsets_hours

Styles = str | Sequence[str] | np.ndarray | pl.Series
Model = Mapping[str, Any] | Path | str | None

# The hidden engagement model; see the module docstring for the formula.
COEFFICIENTS: dict[str, Any] = {
    "intercept": -3.0,
    "affinity": 4.0,
    "recency": -0.45,
    "evening": 0.5,
    "night": -1.2,
    "platform": {"ios": 0.25, "android": 0.10, "web": -0.30},
    "no_device": -0.60,
    "style": {"plain": 0.0, "urgent": 0.15, "personalized": -0.25, "discount": 0.05, "emoji": 0.1},
    "personalized_affinity": 2.0,
    "discount_basic": 0.5,
    "click": {
        "intercept": -1.2,
        "affinity": 1.5,
        "style": {
            "plain": 0.0,
            "urgent": -0.1,
            "personalized": 0.3,
            "discount": 0.4,
            "emoji": -0.2,
        },
    },
}
MISSING_IDLE_DAYS = 365.0

FEATURES = {
    "affinity": "affinity_<category> of the notification's category, 0–1 (missing: 0)",
    "recency": "log1p(days since last_active_at at reference_time), missing: 365 days",
    "evening": "cos(2π (local_hour − 20) / 24), local_hour = (hour_utc + UTC offset) mod 24",
    "night": "1 when 0 ≤ local_hour < 7",
    "platform": "1 per platform (ios, android, web) the user has an active device on",
    "no_device": "1 when the user has no active device (inbox only)",
    "style": "one-hot variant style",
    "personalized_affinity": "affinity · [style = personalized]",
    "discount_basic": "[style = discount] · [attributes.tier = basic]",
}


def ground_truth(seed: int, now: float = REFERENCE_TIME) -> dict[str, Any]:
    """The hidden model as written to `ground_truth.json`."""
    return {
        "model": "logistic",
        "version": 1,
        "seed": seed,
        "reference_time": now,
        "categories": list(CATEGORIES),
        "variant_styles": list(VARIANT_STYLES),
        "formula": (
            "logit P(opened) = intercept + affinity*a + recency*log1p(days) "
            "+ evening*cos(2*pi*(h-20)/24) + night*[0<=h<7] + sum_p platform[p]*has_p "
            "+ no_device*[no device] + style[s] + personalized_affinity*a*[s=personalized] "
            "+ discount_basic*[s=discount]*[tier=basic]; "
            "logit P(clicked|opened) = click.intercept + click.affinity*a + click.style[s]"
        ),
        "features": FEATURES,
        "missing": {"affinity": 0.0, "idle_days": MISSING_IDLE_DAYS, "tier": "basic"},
        "coefficients": COEFFICIENTS,
        "tz_utc_offset_hours": tz_offsets_hours(now),
        "country_default_timezone": {
            c: max(tzs, key=tzs.get) for c, (_, _, tzs, _) in COUNTRIES.items()
        },
    }


def _model(model: Model) -> Mapping[str, Any]:
    """The model as a dict: the given one, read from its `ground_truth.json`, or (None) the
    module's coefficients at `REFERENCE_TIME`."""
    if model is None:
        return ground_truth(seed=0)
    if isinstance(model, Path | str):
        return json.loads(Path(model).read_text())
    return model


def _styles(variant_style: Styles, n: int) -> np.ndarray:
    """Variant style index per row (one style for all rows, or one per row)."""
    if isinstance(variant_style, str):
        variant_style = [variant_style]
    series = pl.Series("s", variant_style, dtype=pl.String)
    unknown = set(series.unique().to_list()) - set(VARIANT_STYLES)
    if unknown:
        raise ValueError(f"unknown variant style(s) {sorted(unknown)}; known: {VARIANT_STYLES}")
    index = series.cast(pl.Enum(list(VARIANT_STYLES))).to_physical().to_numpy().astype(np.int64)
    if len(index) not in (1, n):
        raise ValueError(f"{len(index)} variant styles for {n} users")
    return np.broadcast_to(index, (n,))


def _logits(
    users_frame: pl.DataFrame,
    category: str,
    variant_style: Styles,
    hour_utc: float | np.ndarray,
    model: Model,
) -> tuple[np.ndarray, np.ndarray]:
    """(logit of opening, logit of clicking once opened) per row of `users_frame`: the
    module docstring's formula, each user-level term from its own helper."""
    m = _model(model)
    c = m["coefficients"]
    style = _styles(variant_style, users_frame.height)
    a = _affinity(users_frame, category)
    idle = _idle_days(users_frame, m)
    hour = _local_hour(users_frame, m, hour_utc)
    platform, no_device = _device_terms(users_frame, c["platform"])
    basic = _is_basic(users_frame, m["missing"]["tier"])

    names = list(VARIANT_STYLES)
    style_beta = np.array([c["style"][s] for s in names])[style]
    personalized = style == names.index("personalized")
    discount = style == names.index("discount")
    z_open = (
        c["intercept"]
        + c["affinity"] * a
        + c["recency"] * np.log1p(idle)
        + c["evening"] * np.cos(2 * np.pi * (hour - 20.0) / 24.0)
        + c["night"] * (hour < 7.0)
        + platform
        + c["no_device"] * no_device
        + style_beta
        + c["personalized_affinity"] * a * personalized
        + c["discount_basic"] * (discount & basic)
    )
    k = c["click"]
    click_style = np.array([k["style"][s] for s in names])[style]
    z_click = k["intercept"] + k["affinity"] * a + click_style
    return z_open, z_click


def _affinity(users_frame: pl.DataFrame, category: str) -> np.ndarray:
    """`affinity_<category>` as float64; a user (or a frame) without a score counts as 0,
    so a category nobody was scored for is simply unappealing, not an error."""
    column = f"affinity_{category}"
    if column not in users_frame.schema:
        return np.zeros(users_frame.height)
    return users_frame[column].cast(pl.Float64).fill_nan(None).fill_null(0.0).to_numpy()


def _idle_days(users_frame: pl.DataFrame, m: Mapping[str, Any]) -> np.ndarray:
    """Days since `last_active_at` at the model's clock (never negative); unknown activity
    counts as the model's `missing.idle_days`, a long-dormant user."""
    missing = m["missing"]["idle_days"]
    if "last_active_at" not in users_frame.schema:
        return np.full(users_frame.height, missing)
    last = users_frame["last_active_at"].cast(pl.Float64).to_numpy()
    idle = np.clip((m["reference_time"] - last) / DAY_S, 0.0, None)
    return np.where(np.isnan(idle), missing, idle)


def _local_hour(
    users_frame: pl.DataFrame, m: Mapping[str, Any], hour_utc: float | np.ndarray
) -> np.ndarray:
    """The hour of the send on each user's wall clock, by the zone offsets the model was
    written with; a frame without `timezone` (a plain snapshot) uses the country's main
    zone, an unknown zone UTC."""
    if "timezone" in users_frame.schema:
        zone = users_frame["timezone"]
    else:
        zone = users_frame["country"].replace_strict(
            m["country_default_timezone"], default=None, return_dtype=pl.String
        )
    offsets = m["tz_utc_offset_hours"]
    offset = zone.replace_strict(offsets, default=0.0, return_dtype=pl.Float64).to_numpy()
    return (np.asarray(hour_utc, dtype=np.float64) + offset) % 24.0


def _device_terms(
    users_frame: pl.DataFrame, betas: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the platform coefficients of the user's active devices, 1 for no device).
    Without a `platforms` column nothing is known about devices, so both terms are 0
    rather than every user counting as unreachable."""
    n = users_frame.height
    platform = np.zeros(n)
    if "platforms" not in users_frame.schema:
        return platform, np.zeros(n)
    lists = users_frame["platforms"].fill_null([])
    for name, beta in betas.items():
        platform += beta * lists.list.contains(name).fill_null(False).to_numpy()
    return platform, (lists.list.len() == 0).to_numpy().astype(np.float64)


def _is_basic(users_frame: pl.DataFrame, missing_tier: str) -> np.ndarray:
    """Whether each user's `attributes.tier` is "basic"; `attributes` may be the profiles'
    JSON string or the snapshot's struct, and an unknown tier is `missing_tier`."""
    tier = None
    if "attributes" in users_frame.schema:
        attributes = users_frame["attributes"]
        if attributes.dtype == pl.String:
            tier = attributes.str.json_path_match("$.tier")
        elif isinstance(attributes.dtype, pl.Struct) and "tier" in {
            f.name for f in attributes.dtype.fields
        }:
            tier = attributes.struct.field("tier").cast(pl.String)
    if tier is None:
        return np.full(users_frame.height, missing_tier == "basic")
    return (tier.fill_null(missing_tier) == "basic").to_numpy()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def engagement_probability(
    users_frame: pl.DataFrame,
    category: str,
    variant_style: Styles,
    hour_utc: float | np.ndarray,
    *,
    model: Model = None,
) -> np.ndarray:
    """P(opened) per row of `users_frame` for a notification of `category` in
    `variant_style` (one for all, or one per row) sent at `hour_utc` (0–24, scalar or per
    row). `model` is the ground truth (a dict, or the path of `ground_truth.json`); the
    module's coefficients at `REFERENCE_TIME` by default."""
    z_open, _ = _logits(users_frame, category, variant_style, hour_utc, model)
    return _sigmoid(z_open)


def click_probability(
    users_frame: pl.DataFrame,
    category: str,
    variant_style: Styles,
    hour_utc: float | np.ndarray,
    *,
    model: Model = None,
) -> np.ndarray:
    """P(clicked) = P(opened) · P(clicked | opened) per row; arguments as
    `engagement_probability`."""
    z_open, z_click = _logits(users_frame, category, variant_style, hour_utc, model)
    return _sigmoid(z_open) * _sigmoid(z_click)


def simulate_feedback(
    users_frame: pl.DataFrame,
    category: str,
    variant_style: Styles,
    hour_utc: float | np.ndarray,
    *,
    seed: int,
    model: Model = None,
) -> pl.DataFrame:
    """Draw what each user did with the notification: one row per row of `users_frame` with
    `user_id`, `variant_style`, `p_open`, `p_click` (unconditional), `opened`, `clicked`
    (only ever when opened). Bernoulli draws from a generator seeded with `seed`."""
    n = users_frame.height
    z_open, z_click = _logits(users_frame, category, variant_style, hour_utc, model)
    p_open = _sigmoid(z_open)
    p_click_given_open = _sigmoid(z_click)
    rng = np.random.default_rng(seed)
    opened = rng.random(n) < p_open
    clicked = opened & (rng.random(n) < p_click_given_open)
    styles = pl.Series(VARIANT_STYLES).gather(_styles(variant_style, n))
    return pl.DataFrame(
        {
            "user_id": users_frame["user_id"],
            "variant_style": styles,
            "p_open": p_open,
            "p_click": p_open * p_click_given_open,
            "opened": opened,
            "clicked": clicked,
        }
    )
