"""The users frame: one polars row per user, the table every consumer of user data reads.

A shard builds it from its tables for each snapshot (`users_frame`); the segment compiler
(`pipelines.segments`) filters it, the feature contract (`models.features`) scores it, and
the simulator (`models.synth.load_population`) builds the same frame from a synthetic
population. It lives here, below both the pipelines and the simulator, so that the
simulator and the training code can build it without importing a higher layer.

Columns
-------

- `user_id`: String — every user the shard knows (profiles, active devices, wishlists).
- `country`, `locale`: String, nullable — profiles.
- `attributes`: Struct with one field per attribute name, each String, Boolean or numeric —
  the profiles' `attributes` JSON objects, decoded once per snapshot.
- `platforms`: List[String] — platforms of the user's *active* devices, empty for none.
- `wishlist`: List[String] — product ids on the user's wishlist, empty for none.
- `last_active_at`: Float64 epoch seconds, nullable — activity (not tracked by shards yet).
- `affinity_<category>`: Float32 or Float64 in 0–1, nullable — the model's category scores.
"""

from __future__ import annotations

import polars as pl

USER_ID = "user_id"
COUNTRY = "country"
LOCALE = "locale"
ATTRIBUTES = "attributes"
PLATFORMS = "platforms"
WISHLIST = "wishlist"
LAST_ACTIVE_AT = "last_active_at"
AFFINITY_PREFIX = "affinity_"

_NO_LIST = pl.lit(None, dtype=pl.List(pl.String))
_EMPTY_LIST = pl.lit([], dtype=pl.List(pl.String))


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
    active = None
    if devices is not None:
        active = devices.filter(pl.col("active")) if "active" in devices.columns else devices
    users = _user_ids(profiles, active, wishlists, activity, affinities)
    users = users.join(_profile(profiles), on=USER_ID, how="left", maintain_order="left")
    users = _with_list(users, active, pl.col("platform").unique().sort(), PLATFORMS)
    wished = pl.col("product_id").unique(maintain_order=True)
    users = _with_list(users, wishlists, wished, WISHLIST)
    users = users.with_columns(pl.col(PLATFORMS, WISHLIST).fill_null(_EMPTY_LIST))
    if activity is not None:
        last = activity.group_by(USER_ID).agg(pl.col(LAST_ACTIVE_AT).cast(pl.Float64).max())
        users = users.join(last, on=USER_ID, how="left", maintain_order="left")
    if affinities is not None:
        scores = affinities.select(USER_ID, pl.col(f"^{AFFINITY_PREFIX}.*$"))
        users = users.join(
            scores.unique(USER_ID, keep="last"), on=USER_ID, how="left", maintain_order="left"
        )
    return users


def _user_ids(profiles: pl.DataFrame, *tables: pl.DataFrame | None) -> pl.DataFrame:
    """Every distinct user id of `profiles` and the other tables given, first seen first: a
    user with devices or a wishlist but no profile row is still in the snapshot."""
    parts = [profiles.select(USER_ID)]
    parts += [table.select(USER_ID) for table in tables if table is not None]
    ids = pl.concat([p.with_columns(pl.col(USER_ID).cast(pl.String)) for p in parts])
    return ids.unique(maintain_order=True)


def _profile(profiles: pl.DataFrame) -> pl.DataFrame:
    """One row per user (the last profile row wins) of country, locale and the decoded
    `attributes` struct. No `attributes` column when the decoded values have no fields
    (every object empty, or none at all): an absent column is how the snapshot says that
    nobody has an attribute."""
    profile = profiles.select(USER_ID, COUNTRY, LOCALE)
    if ATTRIBUTES in profiles.columns:
        decoded = profiles[ATTRIBUTES].cast(pl.String).str.json_decode(infer_schema_length=None)
        if isinstance(decoded.dtype, pl.Struct) and decoded.dtype.fields:
            profile = profile.with_columns(decoded.alias(ATTRIBUTES))
    return profile.unique(USER_ID, keep="last")


def _with_list(
    users: pl.DataFrame, rows: pl.DataFrame | None, values: pl.Expr, name: str
) -> pl.DataFrame:
    """`users` with a List[String] column `name`: `values` aggregated per user of `rows`
    (null where the user has none, or for everyone without `rows`; the caller fills nulls
    with empty lists once for all list columns)."""
    if rows is None:
        return users.with_columns(_NO_LIST.alias(name))
    grouped = rows.group_by(USER_ID).agg(values.alias(name))
    return users.join(grouped, on=USER_ID, how="left", maintain_order="left")
