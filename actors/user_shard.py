"""UserShard: the owner of one hash range of users — their devices, profiles, preferences,
wishlists, activity (last_active_at) and category affinities.

Columns, not objects: each table is a `KeyedTable` of polars columns, looked up a batch of
users at a time. Writes go to Redis first (`cluster.state.shards`, one pipeline per batch)
and then to memory, so a restarted shard (`max_restarts`) rebuilds exactly what it had
acknowledged.

`snapshot()` hands fan-out workers the whole shard as two Arrow tables in the object store
(one row per user; one row per active device), rebuilt only when a write happened since.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa
import ray

from actors.columnar import GroupedTable, KeyedTable
from actors.shard_devices import DeviceLifecycle
from cluster import metrics
from cluster.logs import configure_logging
from cluster.settings import HeraldSettings
from cluster.state.clients import sync_client
from cluster.state.shards import ShardTables
from cluster.tables.activity import ACTIVITY
from cluster.tables.affinities import AFFINITIES, AFFINITY_COLUMNS
from cluster.tables.devices import DEVICES
from cluster.tables.preferences import DEFAULTS, PREFERENCES
from cluster.tables.profiles import PROFILES
from cluster.tables.wishlists import WISHLISTS
from pipelines.device_hygiene import seen_at, with_stale_counts
from pipelines.segments import users_frame

SIZES_EVERY_S = 5.0  # shard-size gauges: at most this often on writes

# The preference columns a snapshot carries (defaults filled in for users without a row).
SNAPSHOT_PREFERENCES = (
    "push",
    "inbox",
    "email",
    "cat_marketing",
    "quiet_start_min",
    "quiet_end_min",
    "max_marketing_per_day",
)
# Columns of a user row that go to the profiles table (the rest: activity, affinities).
_PROFILE_COLUMNS = ("user_id", "country", "locale", "timezone", "attributes", "updated_at")
# A wishlist is stored as one JSON list per user.
_STORED_WISHLIST = {"user_id": pl.String, "product_ids": pl.List(pl.String)}


class UserShard(DeviceLifecycle):
    """Plain class; `actors.bootstrap` wraps it with `ray.remote` and its options. The
    device lifecycle (removal, heartbeats, dead tokens, stale devices) is
    `actors.shard_devices`'."""

    def __init__(self, settings: HeraldSettings, index: int) -> None:
        configure_logging(settings)
        self.settings = settings
        self.index = index
        self.store = ShardTables(settings, index, sync_client(settings))
        self.tables = {
            "devices": KeyedTable(DEVICES, "device_id"),
            "profiles": KeyedTable(PROFILES, "user_id"),
            "preferences": KeyedTable(PREFERENCES, "user_id"),
            "activity": KeyedTable(ACTIVITY, "user_id"),
            "affinities": KeyedTable(AFFINITIES, "user_id"),
        }
        # (user_id, product_id) rows; a user's rows are replaced as a group.
        self.wishlists = GroupedTable(WISHLISTS, "user_id")
        self.started_at = time.time()
        # Bumped by every write; starts from the clock (µs) so a restarted shard never
        # reuses a version its previous life handed out.
        self.version = time.time_ns() // 1_000
        self._snapshot: dict | None = None
        self._snapshot_fresh_until = float("inf")  # a device of it turns stale then
        self._sizes_at = float("-inf")
        self._rebuild()
        self._rebuild_wishlists()
        self.stats()

    # --- persistence ---------------------------------------------------------------------
    def _rebuild(self) -> None:
        """Reload every table from its Redis hash."""
        for name, table in self.tables.items():
            rows = self.store.load(name, table.polars_schema)
            if rows is not None and name == "devices":
                rows = seen_at(rows, time.time())  # rows from before last_seen_at existed
            if rows is not None:
                table.replace_all(rows)

    def _rebuild_wishlists(self) -> None:
        rows = self.store.load("wishlists", _STORED_WISHLIST)
        if rows is None:
            return
        rows = rows.explode("product_ids").rename({"product_ids": "product_id"})
        self.wishlists.replace_all(rows.drop_nulls("product_id"))

    def _write_through(self, parts: dict[str, pl.DataFrame]) -> None:
        self.store.write({name: (self.tables[name].key, part) for name, part in parts.items()})

    def _upsert(self, name: str, rows: pa.Table | pl.DataFrame) -> int:
        frame = self.tables[name].conform(rows)
        if frame.height == 0:
            return 0
        self._write_through({name: frame})
        self.tables[name].upsert(frame)
        self.version += 1
        self._publish_sizes()
        return frame.height

    # --- writes (devices: `actors.shard_devices`) -------------------------------------------
    def upsert_profiles(self, rows: pa.Table) -> int:
        return self._upsert("profiles", rows)

    def upsert_preferences(self, rows: pa.Table) -> int:
        return self._upsert("preferences", rows)

    def upsert_activity(self, rows: pa.Table) -> int:
        """(user_id, last_active_at Float64 epoch s) rows."""
        return self._upsert("activity", rows)

    def upsert_affinities(self, rows: pa.Table) -> int:
        """(user_id, affinity_<category> Float32...) rows; a missing category is null."""
        return self._upsert("affinities", rows)

    def upsert_users(self, rows: pa.Table) -> int:
        """Bulk import of user rows in the synth `users.parquet` shape (user_id, country,
        locale, timezone, attributes, last_active_at, affinity_<category>...; any subset
        beyond user_id): profiles, activity and affinities written through to Redis in one
        pipeline, then to memory. A table is written only if `rows` has one of its columns
        (affinities: any `affinity_` column). Returns the number of users."""
        frame = rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows)
        if frame.height == 0:
            return 0
        columns = set(frame.columns)
        parts: dict[str, pl.DataFrame] = {}
        if columns & (set(_PROFILE_COLUMNS) - {"user_id", "updated_at"}):
            if "updated_at" not in columns:
                frame = frame.with_columns(updated_at=pl.lit(time.time()))
            parts["profiles"] = self.tables["profiles"].conform(frame)
        if "last_active_at" in columns:
            parts["activity"] = self.tables["activity"].conform(frame)
        if columns & set(AFFINITY_COLUMNS):
            parts["affinities"] = self.tables["affinities"].conform(frame)
        self._write_through(parts)
        for name, part in parts.items():
            self.tables[name].upsert(part)
        if parts:
            self.version += 1
        return frame.height

    def replace_wishlists(self, rows: pa.Table, user_ids: list[str] | None = None) -> int:
        """Replace the wishlists of `user_ids` (default: the users in `rows`) with the
        (user_id, product_id) `rows`; a user in `user_ids` without rows gets an empty list.
        Written through to Redis first, one hash field per user."""
        frame = self.wishlists.conform(rows).unique(maintain_order=True)
        users = pl.concat([frame["user_id"], pl.Series("user_id", user_ids or [], pl.String)])
        users = users.unique()
        lists = frame.group_by("user_id", maintain_order=True).agg(
            pl.col("product_id").alias("product_ids")
        )
        emptied = users.filter(~users.is_in(lists["user_id"]))
        self.store.write({"wishlists": ("user_id", lists)}, removed={"wishlists": emptied})
        self.wishlists.replace(frame, users)
        self.version += 1
        self._publish_sizes()
        return frame.height

    # --- reads ---------------------------------------------------------------------------
    def device(self, device_id: str) -> dict | None:
        rows = self.tables["devices"].where_in("device_id", [device_id])
        return rows.row(0, named=True) if rows.height else None

    def tokens_for(self, device_ids: list[str]) -> pa.Table:
        """(device_id, user_id, token) of those of `device_ids` still active here: the
        retry set keeps no token, so a due retry is sent to its device's token as of now,
        and not at all once the device was unregistered or given to another user."""
        rows = self.tables["devices"].where_in("device_id", device_ids)
        return rows.filter(pl.col("active")).select("device_id", "user_id", "token").to_arrow()

    def lookup(self, user_ids: list[str]) -> pa.Table:
        """One row per (user, active device) — or one row with null device columns for a
        user without devices — with the user's preferences, defaults filled in, and the
        locales a notification renders in: `device_locale` (the device's) and
        `profile_locale` (the user's profile's), each null when unknown."""
        users = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=pl.String)}).unique()
        return self._with_prefs_and_devices(self._with_profile_locale(users), True).to_arrow()

    def wishers(self, product_ids: list[str]) -> pa.Table:
        """Everyone in this shard whose wishlist holds one of `product_ids`: one row per
        (product, user, active device) — or with null device columns for a user without an
        active device — with the user's preferences, defaults filled in, and the locales a
        price drop renders in (`device_locale`, `profile_locale`, as `lookup`'s). Columns
        all the way: a filter on the wishlist rows, then three joins."""
        wished = self.wishlists.where_in("product_id", product_ids).select("product_id", "user_id")
        return self._with_prefs_and_devices(self._with_profile_locale(wished), True).to_arrow()

    def _with_profile_locale(self, rows: pl.DataFrame) -> pl.DataFrame:
        """`rows` (with a user_id column) with each user's profile locale (null: none)."""
        profiles = self.tables["profiles"].where_in("user_id", rows["user_id"].unique())
        return rows.join(
            profiles.select("user_id", profile_locale="locale"), on="user_id", how="left"
        )

    def wishlist(self, user_id: str) -> list[str]:
        return self.wishlists.where_in("user_id", [user_id])["product_id"].to_list()

    def _with_prefs_and_devices(self, rows: pl.DataFrame, locales: bool = False) -> pl.DataFrame:
        """`rows` (with a user_id column) joined with preferences and active devices (with
        `locales`, each device's as `device_locale`) that are not stale, and each user's
        count of stale ones left out (`stale_devices`, `actors.shard_devices`)."""
        users = rows["user_id"].unique()
        extra = {"device_locale": pl.col("locale")} if locales else {}
        devices, stale = self._push_devices(self.tables["devices"].where_in("user_id", users))
        devices = devices.select("user_id", "device_id", "platform", "token", **extra)
        prefs = self.tables["preferences"].where_in("user_id", users).drop("updated_at")
        joined = rows.join(prefs, on="user_id", how="left").with_columns(
            [pl.col(name).fill_null(value) for name, value in DEFAULTS.items() if value is not None]
        )
        return with_stale_counts(joined.join(devices, on="user_id", how="left"), stale)

    # --- snapshots -----------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The shard as of now, for fan-out workers: `{"version", "users", "devices",
        "users_count", "devices_count"}`, `users` and `devices` being `ray.ObjectRef`s of
        Arrow tables (inside a dict, so Ray hands the refs over instead of resolving them;
        `ray.get` gives a zero-copy table).

        - users: one row per user the shard knows — `pipelines.segments.users_frame` (with
          activity and affinities) plus `timezone`, the `SNAPSHOT_PREFERENCES` columns with
          `DEFAULTS` filled in, `has_push_device` (an active device on any platform) and
          `stale_devices` (active ones skipped as stale; `platforms` are the fresh ones').
        - devices: active devices only, stale ones left out — user_id, device_id,
          platform, token.

        Cached: rebuilt only when a write happened since (`version` changed) or one of its
        devices turned stale (then with a new version). The refs of
        the cached snapshot stay alive while it is cached; an older one lives on as long as
        a worker still holds its refs. The objects are owned by this actor, so they are
        lost with it (a restarted shard builds new ones)."""
        if self._snapshot is not None and self._snapshot["version"] == self.version:
            if time.time() < self._snapshot_fresh_until:
                return self._snapshot
            self.version += 1
        version = self.version
        users, devices = self._snapshot_frames()
        self._snapshot = {
            "version": version,
            "users": ray.put(users.to_arrow()),
            "devices": ray.put(devices.to_arrow()),
            "users_count": users.height,
            "devices_count": devices.height,
        }
        return self._snapshot

    def _snapshot_frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        profiles = self.tables["profiles"].frame()
        all_devices = self.tables["devices"].frame()
        fresh, stale = self._push_devices(all_devices)
        self._snapshot_fresh_until = self._fresh_until(fresh)
        users = users_frame(
            profiles,
            all_devices.select("user_id", "platform", "active"),
            self.wishlists.frame(),
            activity=self.tables["activity"].frame(),
            affinities=self.tables["affinities"].frame(),
        )
        users = self._with_fresh_platforms(users, fresh, stale)
        prefs = self.tables["preferences"].frame().select("user_id", *SNAPSHOT_PREFERENCES)
        users = (
            users.join(
                profiles.select("user_id", "timezone"),
                on="user_id",
                how="left",
                maintain_order="left",
            )
            .join(prefs, on="user_id", how="left", maintain_order="left")
            .with_columns(
                [
                    pl.col(name).fill_null(DEFAULTS[name])
                    for name in SNAPSHOT_PREFERENCES
                    if DEFAULTS[name] is not None
                ]
                + [(pl.col("platforms").list.len() > 0).alias("has_push_device")]
            )
        )
        devices = fresh.select("user_id", "device_id", "platform", "token")
        return users, devices

    def _publish_sizes(self) -> None:
        """Shard sizes as gauges, at most every SIZES_EVERY_S on writes (counting rows
        reads every table) and on every `stats()` call."""
        if time.monotonic() - self._sizes_at >= SIZES_EVERY_S:
            self.stats()

    def stats(self) -> dict[str, int]:
        devices = self.tables["devices"].frame()
        stats = {
            "shard": self.index,
            "devices": devices.height,
            "active_devices": int(devices["active"].sum()),
            "stale_devices": self._push_devices(devices)[1].height,
            "profiles": len(self.tables["profiles"]),
            "preferences": len(self.tables["preferences"]),
            "wishlist_rows": len(self.wishlists),
            "activity": len(self.tables["activity"]),
            "affinities": len(self.tables["affinities"]),
            "device_bytes": devices.estimated_size(),
        }
        self._sizes_at = time.monotonic()
        metrics.set_shard_rows(stats)
        return stats

    def ping(self) -> bool:
        return True

    # --- data protection (`api.erasure`) ---------------------------------------------------
    def user_rows(self, user_ids: list[str]) -> dict[str, list[dict]]:
        """Every row `user_ids` have in every table (inactive devices too), for an export."""
        rows = {name: t.where_in("user_id", user_ids).to_dicts() for name, t in self.tables.items()}
        rows["wishlists"] = self.wishlists.where_in("user_id", user_ids).to_dicts()
        return rows

    def erase_users(self, user_ids: list[str]) -> dict:
        """Remove every row of `user_ids` from every table: from the Redis hashes first, in
        one pipeline, then from memory (a compacted frame without them), so a restart
        cannot bring them back. The snapshot is dropped, so fan-out stops seeing them.
        Answers {"rows": removed per table, "device_ids", "tokens"} — the devices' ids and
        tokens are what the caller then looks for in the other stores."""
        users = pl.Series("user_id", user_ids, dtype=pl.String)
        devices = self.tables["devices"].where_in("user_id", users)
        removed = {n: t.where_in("user_id", users)[t.key] for n, t in self.tables.items()}
        wished = self.wishlists.where_in("user_id", users)
        removed["wishlists"] = wished["user_id"].unique()
        self.store.write({}, removed=removed)
        gone = ~pl.col("user_id").is_in(users.implode())
        for name, table in self.tables.items():
            if removed[name].len():
                table.replace_all(table.frame().filter(gone))
        if wished.height:
            self.wishlists.replace_all(self.wishlists.frame().filter(gone))
        self.version += 1
        self._snapshot = None
        self.stats()
        counts = {name: ids.len() for name, ids in removed.items()}
        return {
            "rows": {**counts, "wishlists": wished.height},
            "device_ids": devices["device_id"].to_list(),
            "tokens": devices["token"].to_list(),
        }
