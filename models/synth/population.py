"""A synthetic population for Herald: users, their devices and wishlists, and a catalogue.

`synthesize(users, seed, out_dir)` writes, all vectorized (numpy / polars / pyarrow, no Python
loop per user; 1,000,000 users take a few seconds):

- `users.parquet` — one row per user, the shape of the shard profiles (PROFILES) plus what
  the users frame (`models.snapshot.users_frame`) reads:
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
  country), later ones are web with probability 0.35. Tokens: `models.synth.tokens`.
- `wishlists.parquet` — `user_id`, `product_id` rows (no duplicates; ≈ 35 % of users have
  none, at most 50 items): what `import_wishlists` takes. Each item's category is drawn from
  the user's affinities, the product within the category by Zipf-like popularity.
- `products.parquet` — `product_id` (`p<n>`, n = popularity rank, 0 the most popular),
  `category`, `price` (Float64, log-normal per category), `popularity` (its Zipf weight).
- `ground_truth.json` — the hidden engagement model (`models.synth.world`), with its
  coefficients, the reference time and the UTC offsets it uses. Rankers must not read it;
  evaluators do.

`load_population(out_dir)` gives the users frame (`models.snapshot`, plus `timezone`) that
the engagement model, the features and the segment compiler all read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from cluster.vocabulary import CATEGORIES, PLATFORMS
from models.snapshot import users_frame
from models.synth.geography import COUNTRIES, DAY_S, REFERENCE_TIME
from models.synth.tokens import apns_tokens, fcm_tokens
from models.synth.world import ground_truth

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


def _ids(prefix: str, n: int) -> pl.Series:
    """`prefix0`, `prefix1`, ...: ids that are stable for a seed and say their row."""
    return pl.select(pl.lit(prefix) + pl.int_range(n, dtype=pl.Int64).cast(pl.String)).to_series()


# --- the population ------------------------------------------------------------------------


def _users(rng: np.random.Generator, n: int, now: float) -> pl.DataFrame:
    """The users table: geography, tier, order count, idleness and category affinities,
    with `attributes` JSON-encoded the way shard profiles store it."""
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
    """The devices table: 0–5 per user, the first a phone (iOS by the country's share),
    later ones sometimes web, each with a token of its provider's shape."""
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
    """The catalogue: one product per 20 users (at least 1,000), ids in popularity order,
    log-normal prices per category."""
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
    """The wishlists table: each item's category drawn from the user's affinities, so a
    wishlist says something about its owner, and the product by popularity within it."""
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
    """The users frame (`models.snapshot.users_frame`: user_id, country, locale, attributes
    struct, platforms, wishlist, last_active_at, affinity_<category>) of a synthetic
    population, plus its `timezone` column — built by the very function a shard's snapshot
    uses, so what the simulator scores is what a campaign would see."""
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
