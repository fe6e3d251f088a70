"""A synthetic population for Herald, and the hidden engagement model that "is" its users.

`synthesize(users, seed, out_dir)` writes, all vectorized (numpy / polars / pyarrow, no Python
loop per user; 1,000,000 users take a few seconds):

- `users.parquet` — one row per user, the shape of the shard profiles (PROFILES) plus what
  the segment snapshot (`pipelines.segments.users_frame`) reads:
  `user_id` String `s<n>` · `country` ISO 3166-1 alpha-2 (skewed: US ≈ 26 %, then DE, GB,
  IN, …) · `locale` BCP 47 `ll-CC`, its region always the country · `timezone` IANA zone of
  that country (several for US, CA, BR, AU, MX, ES, PT, ID) · `attributes` JSON object
  string `{"tier": "basic"|"silver"|"gold"|"vip", "orders": int}` (the profiles' encoding;
  `users_frame` decodes it to a struct) · `last_active_at` Float64 epoch seconds ·
  `affinity_<category>` Float32 for `CATEGORIES`, a Dirichlet draw per user (each row sums
  to 1).
- `devices.parquet` — `user_id`, `platform` (ios | android | web), `token`, `app_id`
  ("default"): what `ops.importer.import_devices` takes. ≈ 1.5 devices per user (4 %
  have none; the others 1 + Poisson, at most 5); the first device is a phone (iOS share by
  country), later ones are web with probability 0.35. Tokens have the shapes of
  `ops.demo`: APNs 64 lower-case hex characters; FCM (android and web)
  `<token_urlsafe(16)>:APA91b<token_urlsafe(100)>`, 163 characters, both matching
  `api.schemas`.
- `wishlists.parquet` — `user_id`, `product_id` rows (no duplicates; ≈ 35 % of users have
  none, at most 50 items): what `import_wishlists` takes. Each item's category is drawn from
  the user's affinities, the product within the category by Zipf-like popularity.
- `products.parquet` — `product_id` (`p<n>`, n = popularity rank, 0 the most popular),
  `category`, `price` (Float64, log-normal per category), `popularity` (its Zipf weight).
- `ground_truth.json` — the hidden engagement model below, with its coefficients, the
  reference time and the UTC offsets it uses. Rankers must not read it; evaluators do.

The hidden engagement model (`engagement_probability`, `simulate_feedback`)
---------------------------------------------------------------------------

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

`load_population(out_dir)` gives the snapshot frame (`users_frame` contract, plus
`timezone`) the model and the segment compiler both read.
"""

from __future__ import annotations

import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pyarrow as pa

from cluster.vocabulary import CATEGORIES, PLATFORMS, VARIANT_STYLES

# 2026-11-01T00:00:00Z: "now" of a synthetic population unless told otherwise; a fixed
# value, so that a seed gives the same files on every run.
REFERENCE_TIME = 1_793_491_200.0
DAY_S = 86_400.0

CATEGORY_SHARE = (0.30, 0.25, 0.20, 0.15, 0.10)
DIRICHLET_CONCENTRATION = 2.0  # alpha = share · concentration: most users lean one way

TIERS = ("basic", "silver", "gold", "vip")
TIER_SHARE = (0.70, 0.20, 0.08, 0.02)
TIER_ORDERS_MEAN = (1.5, 6.0, 15.0, 40.0)
TIER_IDLE_DAYS = (30.0, 14.0, 7.0, 3.0)  # mean days since last active, by tier
DORMANT_SHARE = 0.10
DORMANT_IDLE_DAYS = 200.0
MAX_IDLE_DAYS = 730.0

NO_DEVICE_SHARE = 0.04
EXTRA_DEVICES_MEAN = (1.5 / (1 - NO_DEVICE_SHARE)) - 1.0  # so the mean is ≈ 1.5 per user
MAX_DEVICES = 5
WEB_SHARE_EXTRA = 0.35

WISHLIST_EMPTY_SHARE = 0.35
WISHLIST_MEAN_ITEMS = 5.0  # of a non-empty wishlist, before duplicates are dropped
WISHLIST_MAX_ITEMS = 50
ZIPF_EXPONENT = 1.1
CATEGORY_PRICE = {  # (median, log-sd) of the log-normal price
    "fashion": (45.0, 0.6),
    "electronics": (180.0, 0.9),
    "home": (70.0, 0.8),
    "beauty": (25.0, 0.5),
    "sports": (60.0, 0.7),
}

# country: (share %, {locale: p}, {timezone: p}, iOS share of phones). Locale regions and
# zones are the country's own (zones as listed for it in tzdata's zone.tab).
COUNTRIES: dict[str, tuple[float, dict[str, float], dict[str, float], float]] = {
    "US": (
        26.0,
        {"en-US": 0.87, "es-US": 0.13},
        {
            "America/New_York": 0.47,
            "America/Chicago": 0.29,
            "America/Denver": 0.06,
            "America/Phoenix": 0.02,
            "America/Los_Angeles": 0.15,
            "America/Anchorage": 0.005,
            "Pacific/Honolulu": 0.005,
        },
        0.57,
    ),
    "DE": (9.0, {"de-DE": 1.0}, {"Europe/Berlin": 1.0}, 0.35),
    "GB": (8.0, {"en-GB": 1.0}, {"Europe/London": 1.0}, 0.50),
    "IN": (7.0, {"en-IN": 0.55, "hi-IN": 0.45}, {"Asia/Kolkata": 1.0}, 0.05),
    "FR": (6.0, {"fr-FR": 1.0}, {"Europe/Paris": 1.0}, 0.30),
    "BR": (
        6.0,
        {"pt-BR": 1.0},
        {
            "America/Sao_Paulo": 0.85,
            "America/Fortaleza": 0.05,
            "America/Recife": 0.05,
            "America/Manaus": 0.05,
        },
        0.15,
    ),
    "JP": (5.0, {"ja-JP": 1.0}, {"Asia/Tokyo": 1.0}, 0.65),
    "ES": (
        4.0,
        {"es-ES": 0.9, "ca-ES": 0.1},
        {"Europe/Madrid": 0.95, "Atlantic/Canary": 0.05},
        0.25,
    ),
    "IT": (4.0, {"it-IT": 1.0}, {"Europe/Rome": 1.0}, 0.30),
    "CA": (
        4.0,
        {"en-CA": 0.78, "fr-CA": 0.22},
        {
            "America/Toronto": 0.60,
            "America/Vancouver": 0.15,
            "America/Edmonton": 0.12,
            "America/Winnipeg": 0.05,
            "America/Halifax": 0.05,
            "America/St_Johns": 0.03,
        },
        0.55,
    ),
    "MX": (
        4.0,
        {"es-MX": 1.0},
        {"America/Mexico_City": 0.80, "America/Monterrey": 0.12, "America/Tijuana": 0.08},
        0.20,
    ),
    "NL": (2.0, {"nl-NL": 1.0}, {"Europe/Amsterdam": 1.0}, 0.45),
    "PL": (2.0, {"pl-PL": 1.0}, {"Europe/Warsaw": 1.0}, 0.25),
    "AU": (
        2.0,
        {"en-AU": 1.0},
        {
            "Australia/Sydney": 0.38,
            "Australia/Melbourne": 0.32,
            "Australia/Brisbane": 0.15,
            "Australia/Perth": 0.10,
            "Australia/Adelaide": 0.05,
        },
        0.55,
    ),
    "KR": (2.0, {"ko-KR": 1.0}, {"Asia/Seoul": 1.0}, 0.30),
    "TR": (2.0, {"tr-TR": 1.0}, {"Europe/Istanbul": 1.0}, 0.20),
    "ID": (
        1.5,
        {"id-ID": 1.0},
        {"Asia/Jakarta": 0.70, "Asia/Makassar": 0.20, "Asia/Jayapura": 0.10},
        0.10,
    ),
    "SE": (1.0, {"sv-SE": 1.0}, {"Europe/Stockholm": 1.0}, 0.50),
    "CH": (1.0, {"de-CH": 0.63, "fr-CH": 0.27, "it-CH": 0.10}, {"Europe/Zurich": 1.0}, 0.55),
    "AT": (1.0, {"de-AT": 1.0}, {"Europe/Vienna": 1.0}, 0.40),
    "BE": (1.0, {"nl-BE": 0.58, "fr-BE": 0.42}, {"Europe/Brussels": 1.0}, 0.40),
    "AR": (1.0, {"es-AR": 1.0}, {"America/Argentina/Buenos_Aires": 1.0}, 0.10),
    "IE": (0.5, {"en-IE": 1.0}, {"Europe/Dublin": 1.0}, 0.50),
    "PT": (0.5, {"pt-PT": 1.0}, {"Europe/Lisbon": 0.95, "Atlantic/Azores": 0.05}, 0.25),
}

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


@dataclass(frozen=True)
class SynthPaths:
    """Where `synthesize` wrote each file, and how many rows each table has."""

    out_dir: Path
    users: Path
    devices: Path
    wishlists: Path
    products: Path
    ground_truth: Path
    rows: dict[str, int] = field(default_factory=dict)


# --- building blocks ---------------------------------------------------------------------


def _pick(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """`n` draws of category indices with probabilities `probs` (normalized here)."""
    cum = np.cumsum(probs / probs.sum())
    return np.minimum(np.searchsorted(cum, rng.random(n), side="right"), len(probs) - 1)


def _pick_rows(rng: np.random.Generator, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One draw per element of `rows` from the categorical distribution `table[row]`
    (a padded matrix of probabilities, each row summing to 1)."""
    cum = np.cumsum(table, axis=1)[rows]
    u = rng.random(len(rows))[:, None]
    return np.minimum((u >= cum).sum(axis=1), table.shape[1] - 1)


def _conditional(options: list[dict[str, float]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-country {name: p} → (all names, padded probability matrix, names index matrix)."""
    names: list[str] = []
    width = max(len(o) for o in options)
    probs = np.zeros((len(options), width))
    index = np.zeros((len(options), width), dtype=np.int64)
    for i, option in enumerate(options):
        total = sum(option.values())
        for j, (name, p) in enumerate(option.items()):
            if name not in names:
                names.append(name)
            probs[i, j] = p / total
            index[i, j] = names.index(name)
    return names, probs, index


def _strings(data: bytes, width: int) -> pa.Array:
    """Fixed-width ASCII records in one buffer → an Arrow string array, without a copy per
    row."""
    n = len(data) // width
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def apns_tokens(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` APNs tokens like `ops.demo.apns_token()`: 32 random bytes as 64 hex chars."""
    return _strings(rng.bytes(32 * n).hex().encode("ascii"), 64)


def _urlsafe(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    """`n` × `secrets.token_urlsafe(nbytes)` as a (n, chars) uint8 matrix: base64url of each
    row's bytes without padding. Rows are padded with zero bytes to a multiple of 3 so one
    base64 pass over the whole buffer keeps rows aligned; the padding only adds characters
    past the unpadded length, which are cut off."""
    padded = -(-nbytes // 3) * 3
    raw = np.zeros((n, padded), dtype=np.uint8)
    raw[:, :nbytes] = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes)
    encoded = np.frombuffer(binascii.b2a_base64(raw.tobytes(), newline=False), dtype=np.uint8)
    chars = math.ceil(nbytes * 4 / 3)
    rows = encoded.reshape(n, padded // 3 * 4)[:, :chars].copy()
    rows[rows == ord("+")] = ord("-")
    rows[rows == ord("/")] = ord("_")
    return rows


def fcm_tokens(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` FCM registration tokens like `ops.demo.fcm_token()`:
    `<token_urlsafe(16)>:APA91b<token_urlsafe(100)>` (22 + 7 + 134 = 163 characters)."""
    head, tail = _urlsafe(rng, n, 16), _urlsafe(rng, n, 100)
    sep = np.broadcast_to(np.frombuffer(b":APA91b", dtype=np.uint8), (n, 7))
    rows = np.ascontiguousarray(np.hstack([head, sep, tail]))
    return _strings(rows.tobytes(), rows.shape[1])


def _ids(prefix: str, n: int) -> pl.Series:
    return pl.select(pl.lit(prefix) + pl.int_range(n, dtype=pl.Int64).cast(pl.String)).to_series()


def tz_offsets_hours(at: float = REFERENCE_TIME) -> dict[str, float]:
    """UTC offset in hours of every synthetic time zone at `at` (epoch seconds)."""
    when = datetime.fromtimestamp(at, UTC)
    zones = sorted({tz for *_, tzs, _ in COUNTRIES.values() for tz in tzs})
    return {tz: ZoneInfo(tz).utcoffset(when).total_seconds() / 3600 for tz in zones}


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


# --- the population ------------------------------------------------------------------------


def _users(rng: np.random.Generator, n: int, now: float) -> pl.DataFrame:
    codes = list(COUNTRIES)
    share = np.array([COUNTRIES[c][0] for c in codes])
    country = _pick(rng, share, n)
    locales, locale_p, locale_ix = _conditional([COUNTRIES[c][1] for c in codes])
    zones, zone_p, zone_ix = _conditional([COUNTRIES[c][2] for c in codes])
    locale = locale_ix[country, _pick_rows(rng, locale_p, country)]
    zone = zone_ix[country, _pick_rows(rng, zone_p, country)]

    tier = _pick(rng, np.array(TIER_SHARE), n)
    orders_mean = np.array(TIER_ORDERS_MEAN)[tier]
    orders = rng.poisson(orders_mean * rng.gamma(2.0, 0.5, n))  # negative binomial
    idle_mean = np.where(
        rng.random(n) < DORMANT_SHARE, DORMANT_IDLE_DAYS, np.array(TIER_IDLE_DAYS)[tier]
    )
    idle_days = np.minimum(rng.exponential(idle_mean), MAX_IDLE_DAYS)

    alpha = np.array(CATEGORY_SHARE) * DIRICHLET_CONCENTRATION
    gammas = rng.standard_gamma(alpha, size=(n, len(alpha)))
    totals = gammas.sum(axis=1, keepdims=True)
    affinity = np.where(totals > 0, gammas / np.where(totals > 0, totals, 1.0), 1 / len(alpha))
    # Float32 rows re-normalized in float32 so they sum to 1 within float32 rounding.
    affinity = affinity.astype(np.float32)
    affinity /= affinity.sum(axis=1, keepdims=True)

    frame = pl.DataFrame(
        {
            "user_id": _ids("s", n),
            "country": pl.Series(codes).gather(country),
            "locale": pl.Series(locales).gather(locale),
            "timezone": pl.Series(zones).gather(zone),
            "tier": pl.Series(TIERS).gather(tier),
            "orders": orders.astype(np.int64),
            "last_active_at": now - idle_days * DAY_S,
        }
    )
    frame = frame.with_columns(
        pl.struct("tier", "orders").struct.json_encode().alias("attributes")
    ).select("user_id", "country", "locale", "timezone", "attributes", "last_active_at")
    return frame.with_columns(
        [pl.Series(f"affinity_{c}", affinity[:, i]) for i, c in enumerate(CATEGORIES)]
    )


def _devices(rng: np.random.Generator, users: pl.DataFrame) -> pl.DataFrame:
    n = users.height
    counts = np.where(
        rng.random(n) < NO_DEVICE_SHARE,
        0,
        np.minimum(1 + rng.poisson(EXTRA_DEVICES_MEAN, n), MAX_DEVICES),
    )
    owner = np.repeat(np.arange(n), counts)
    first = np.ones(len(owner), dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    codes = list(COUNTRIES)
    ios_share = np.array([COUNTRIES[c][3] for c in codes])
    country = users["country"].cast(pl.Enum(codes)).to_physical().to_numpy()[owner]
    phone = np.where(rng.random(len(owner)) < ios_share[country], 0, 1)  # 0 ios, 1 android
    web = ~first & (rng.random(len(owner)) < WEB_SHARE_EXTRA)
    platform = np.where(web, 2, phone)

    # APNs tokens for iOS devices, FCM tokens for the others, each in device order.
    is_ios = platform == 0
    n_ios = int(is_ios.sum())
    position = np.where(is_ios, np.cumsum(is_ios) - 1, n_ios + np.cumsum(~is_ios) - 1)
    token = pa.concat_arrays([apns_tokens(rng, n_ios), fcm_tokens(rng, len(owner) - n_ios)])
    return pl.DataFrame(
        {
            "user_id": users["user_id"].gather(owner),
            "platform": pl.Series(PLATFORMS).gather(platform),
            "token": pl.Series("token", token).gather(position),
            "app_id": pl.repeat("default", len(owner), eager=True, dtype=pl.String),
        }
    )


def _products(rng: np.random.Generator, n_users: int) -> pl.DataFrame:
    n = max(1_000, n_users // 20)
    category = _pick(rng, np.array(CATEGORY_SHARE), n)
    median = np.array([CATEGORY_PRICE[c][0] for c in CATEGORIES])[category]
    sigma = np.array([CATEGORY_PRICE[c][1] for c in CATEGORIES])[category]
    price = np.round(median * np.exp(sigma * rng.standard_normal(n)), 2).clip(0.99)
    weight = 1.0 / np.arange(1, n + 1) ** ZIPF_EXPONENT
    return pl.DataFrame(
        {
            "product_id": _ids("p", n),
            "category": pl.Series(CATEGORIES).gather(category),
            "price": price,
            "popularity": weight / weight.sum(),
        }
    )


def _wishlists(
    rng: np.random.Generator, users: pl.DataFrame, products: pl.DataFrame
) -> pl.DataFrame:
    n = users.height
    extra = rng.geometric(1.0 / WISHLIST_MEAN_ITEMS, n)
    counts = np.where(
        rng.random(n) < WISHLIST_EMPTY_SHARE, 0, np.minimum(extra, WISHLIST_MAX_ITEMS)
    )
    owner = np.repeat(np.arange(n), counts)
    affinity = users.select([f"affinity_{c}" for c in CATEGORIES]).to_numpy().astype(np.float64)
    category = _pick_rows(rng, affinity / affinity.sum(axis=1, keepdims=True), owner)
    product_category = products["category"].cast(pl.Enum(list(CATEGORIES))).to_physical()
    product_category = product_category.to_numpy()
    popularity = products["popularity"].to_numpy()
    product = np.empty(len(owner), dtype=np.int64)
    u = rng.random(len(owner))
    for k in range(len(CATEGORIES)):  # a loop over categories, not users
        members = np.flatnonzero(product_category == k)
        rows = category == k
        if len(members) == 0:  # a tiny catalogue without this category: any product
            members = np.arange(len(popularity))
        cum = np.cumsum(popularity[members])
        pick = np.searchsorted(cum / cum[-1], u[rows], side="right")
        product[rows] = members[np.minimum(pick, len(members) - 1)]
    frame = pl.DataFrame({"u": owner, "p": product}).unique(maintain_order=True)
    return pl.DataFrame(
        {
            "user_id": users["user_id"].gather(frame["u"]),
            "product_id": products["product_id"].gather(frame["p"]),
        }
    )


def synthesize(users: int, seed: int, out_dir: Path, *, now: float = REFERENCE_TIME) -> SynthPaths:
    """Write users, devices, wishlists, products (Parquet) and ground_truth.json for `users`
    synthetic users into `out_dir`; the same `seed` (and `now`) gives the same files."""
    if users < 1:
        raise ValueError("users must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One independent stream per table: changing how one is drawn leaves the others alone.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    people = _users(streams[0], users, now)
    devices = _devices(streams[1], people)
    products = _products(streams[2], users)
    wishlists = _wishlists(streams[3], people, products)

    paths = SynthPaths(
        out_dir=out_dir,
        users=out_dir / "users.parquet",
        devices=out_dir / "devices.parquet",
        wishlists=out_dir / "wishlists.parquet",
        products=out_dir / "products.parquet",
        ground_truth=out_dir / "ground_truth.json",
        rows={
            "users": people.height,
            "devices": devices.height,
            "wishlists": wishlists.height,
            "products": products.height,
        },
    )
    people.write_parquet(paths.users)
    devices.write_parquet(paths.devices)
    wishlists.write_parquet(paths.wishlists)
    products.write_parquet(paths.products)
    paths.ground_truth.write_text(json.dumps(ground_truth(seed, now), indent=2) + "\n")
    return paths


def load_population(out_dir: Path) -> pl.DataFrame:
    """The segment snapshot frame (`pipelines.segments.users_frame`: user_id, country,
    locale, attributes struct, platforms, wishlist, last_active_at, affinity_<category>)
    of a synthetic population, plus its `timezone` column."""
    from pipelines.segments import users_frame

    out_dir = Path(out_dir)
    users = pl.read_parquet(out_dir / "users.parquet")
    devices = pl.read_parquet(out_dir / "devices.parquet")
    wishlists = pl.read_parquet(out_dir / "wishlists.parquet")
    frame = users_frame(
        users.select("user_id", "country", "locale", "attributes"),
        devices.select("user_id", "platform"),
        wishlists,
        activity=users.select("user_id", "last_active_at"),
        affinities=users.select("user_id", pl.col("^affinity_.*$")),
    )
    return frame.join(
        users.select("user_id", "timezone"), on="user_id", how="left", maintain_order="left"
    )


# --- the hidden engagement model -------------------------------------------------------------


def _model(model: Mapping[str, Any] | Path | str | None) -> Mapping[str, Any]:
    if model is None:
        return ground_truth(seed=0)
    if isinstance(model, Path | str):
        return json.loads(Path(model).read_text())
    return model


def _styles(variant_style: str | Sequence[str] | np.ndarray | pl.Series, n: int) -> np.ndarray:
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
    variant_style: str | Sequence[str] | np.ndarray | pl.Series,
    hour_utc: float | np.ndarray,
    model: Mapping[str, Any] | Path | str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(logit of opening, logit of clicking once opened) per row of `users_frame`."""
    m = _model(model)
    c = m["coefficients"]
    n = users_frame.height
    schema = users_frame.schema
    style = _styles(variant_style, n)

    column = f"affinity_{category}"
    if column in schema:
        a = users_frame[column].cast(pl.Float64).fill_nan(None).fill_null(0.0).to_numpy()
    else:
        a = np.zeros(n)

    if "last_active_at" in schema:
        last = users_frame["last_active_at"].cast(pl.Float64).to_numpy()
        idle = np.clip((m["reference_time"] - last) / DAY_S, 0.0, None)
        idle = np.where(np.isnan(idle), m["missing"]["idle_days"], idle)
    else:
        idle = np.full(n, m["missing"]["idle_days"])

    offsets = m["tz_utc_offset_hours"]
    if "timezone" in schema:
        zone = users_frame["timezone"]
    else:
        zone = users_frame["country"].replace_strict(
            m["country_default_timezone"], default=None, return_dtype=pl.String
        )
    offset = zone.replace_strict(offsets, default=0.0, return_dtype=pl.Float64).to_numpy()
    hour = (np.asarray(hour_utc, dtype=np.float64) + offset) % 24.0

    platform = np.zeros(n)
    no_device = np.zeros(n)
    if "platforms" in schema:
        lists = users_frame["platforms"].fill_null([])
        for name, beta in c["platform"].items():
            platform += beta * lists.list.contains(name).fill_null(False).to_numpy()
        no_device = (lists.list.len() == 0).to_numpy().astype(np.float64)

    tier = None
    if "attributes" in schema:
        attributes = users_frame["attributes"]
        if attributes.dtype == pl.String:
            tier = attributes.str.json_path_match("$.tier")
        elif isinstance(attributes.dtype, pl.Struct) and "tier" in {
            f.name for f in attributes.dtype.fields
        }:
            tier = attributes.struct.field("tier").cast(pl.String)
    basic = (
        (tier.fill_null(m["missing"]["tier"]) == "basic").to_numpy()
        if tier is not None
        else np.full(n, m["missing"]["tier"] == "basic")
    )

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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def engagement_probability(
    users_frame: pl.DataFrame,
    category: str,
    variant_style: str | Sequence[str] | np.ndarray | pl.Series,
    hour_utc: float | np.ndarray,
    *,
    model: Mapping[str, Any] | Path | str | None = None,
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
    variant_style: str | Sequence[str] | np.ndarray | pl.Series,
    hour_utc: float | np.ndarray,
    *,
    model: Mapping[str, Any] | Path | str | None = None,
) -> np.ndarray:
    """P(clicked) = P(opened) · P(clicked | opened) per row; arguments as
    `engagement_probability`."""
    z_open, z_click = _logits(users_frame, category, variant_style, hour_utc, model)
    return _sigmoid(z_open) * _sigmoid(z_click)


def simulate_feedback(
    users_frame: pl.DataFrame,
    category: str,
    variant_style: str | Sequence[str] | np.ndarray | pl.Series,
    hour_utc: float | np.ndarray,
    *,
    seed: int,
    model: Mapping[str, Any] | Path | str | None = None,
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
