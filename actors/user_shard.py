"""UserShard: the owner of one hash range of users — their devices, profiles, preferences
and wishlists.

Columns, not objects: each table is a `KeyedTable` of polars columns, looked up a batch of
users at a time. Writes go to Redis first (one pipeline per batch) and then to memory, so a
restarted shard (`max_restarts`) rebuilds exactly what it had acknowledged.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa
import redis

from actors.columnar import GroupedTable, KeyedTable
from cluster.settings import HeraldSettings
from cluster.tables.devices import DEVICES
from cluster.tables.preferences import DEFAULTS, PREFERENCES
from cluster.tables.profiles import PROFILES
from cluster.tables.wishlists import WISHLISTS

_HSCAN_COUNT = 10_000


class UserShard:
    """Plain class; `cluster.bootstrap` wraps it with `ray.remote` and its options."""

    def __init__(self, settings: HeraldSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.tables = {
            "devices": KeyedTable(DEVICES, "device_id"),
            "profiles": KeyedTable(PROFILES, "user_id"),
            "preferences": KeyedTable(PREFERENCES, "user_id"),
        }
        # (user_id, product_id) rows; a user's rows are replaced as a group.
        self.wishlists = GroupedTable(WISHLISTS, "user_id")
        self.started_at = time.time()
        self._rebuild()
        self._rebuild_wishlists()

    # --- persistence ---------------------------------------------------------------------
    def _redis_key(self, table: str) -> str:
        return self.settings.key("shard", self.index, table)

    def _rebuild(self) -> None:
        """Reload every table from its Redis hash; JSON is decoded column-wise by polars."""
        for name, table in self.tables.items():
            values: list[bytes] = []
            for _, value in self.redis.hscan_iter(self._redis_key(name), count=_HSCAN_COUNT):
                values.append(value)
            if not values:
                continue
            dtype = pl.Struct(table._polars_schema)
            decoded = pl.Series("row", values, dtype=pl.Binary).cast(pl.String)
            table.replace_all(decoded.str.json_decode(dtype).struct.unnest())

    def _rebuild_wishlists(self) -> None:
        values = [
            v for _, v in self.redis.hscan_iter(self._redis_key("wishlists"), count=_HSCAN_COUNT)
        ]
        if not values:
            return
        dtype = pl.Struct({"user_id": pl.String, "product_ids": pl.List(pl.String)})
        decoded = pl.Series("row", values, dtype=pl.Binary).cast(pl.String)
        rows = decoded.str.json_decode(dtype).struct.unnest().explode("product_ids")
        self.wishlists.replace_all(
            rows.rename({"product_ids": "product_id"}).drop_nulls("product_id")
        )

    def _write_through(self, name: str, frame: pl.DataFrame) -> None:
        encoded = frame.select(
            pl.col(self.tables[name].key).alias("k"), pl.struct(pl.all()).struct.json_encode()
        )
        key = self._redis_key(name)
        pipe = self.redis.pipeline(transaction=False)
        for chunk in encoded.iter_slices(5_000):
            pipe.hset(key, mapping=dict(zip(chunk["k"], chunk[chunk.columns[1]], strict=True)))
        pipe.execute()

    def _upsert(self, name: str, rows: pa.Table | pl.DataFrame) -> int:
        frame = self.tables[name].conform(rows)
        self._write_through(name, frame)
        self.tables[name].upsert(frame)
        return frame.height

    # --- writes --------------------------------------------------------------------------
    def upsert_devices(self, rows: pa.Table) -> int:
        return self._upsert("devices", rows)

    def upsert_profiles(self, rows: pa.Table) -> int:
        return self._upsert("profiles", rows)

    def upsert_preferences(self, rows: pa.Table) -> int:
        return self._upsert("preferences", rows)

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
        encoded = lists.select(
            "user_id", pl.struct("user_id", "product_ids").struct.json_encode().alias("json")
        )
        emptied = users.filter(~users.is_in(lists["user_id"]))
        key = self._redis_key("wishlists")
        pipe = self.redis.pipeline(transaction=False)
        for chunk in encoded.iter_slices(5_000):
            pipe.hset(key, mapping=dict(zip(chunk["user_id"], chunk["json"], strict=True)))
        for start in range(0, emptied.len(), 5_000):
            pipe.hdel(key, *emptied.slice(start, 5_000).to_list())
        pipe.execute()
        self.wishlists.replace(frame, users)
        return frame.height

    def deactivate_devices(self, device_ids: list[str]) -> int:
        """Mark devices inactive (unregistered, moved to another user, or a dead token)."""
        current = self.tables["devices"].where_in("device_id", device_ids)
        current = current.filter(pl.col("active"))
        if current.height == 0:
            return 0
        changed = current.with_columns(active=pl.lit(False), updated_at=pl.lit(time.time()))
        return self._upsert("devices", changed)

    # --- reads ---------------------------------------------------------------------------
    def device(self, device_id: str) -> dict | None:
        rows = self.tables["devices"].where_in("device_id", [device_id])
        return rows.row(0, named=True) if rows.height else None

    def lookup(self, user_ids: list[str]) -> pa.Table:
        """One row per (user, active device) — or one row with null device columns for a
        user without devices — with the user's preferences, defaults filled in."""
        users = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=pl.String)}).unique()
        return self._with_prefs_and_devices(users).to_arrow()

    def wishers(self, product_ids: list[str]) -> pa.Table:
        """Everyone in this shard whose wishlist holds one of `product_ids`: one row per
        (product, user, active device) — or with null device columns for a user without an
        active device — with the user's preferences, defaults filled in. Columns all the
        way: a filter on the wishlist rows, then two joins."""
        wished = self.wishlists.where_in("product_id", product_ids).select("product_id", "user_id")
        return self._with_prefs_and_devices(wished).to_arrow()

    def wishlist(self, user_id: str) -> list[str]:
        return self.wishlists.where_in("user_id", [user_id])["product_id"].to_list()

    def _with_prefs_and_devices(self, rows: pl.DataFrame) -> pl.DataFrame:
        """`rows` (with a user_id column) joined with preferences and active devices."""
        users = rows["user_id"].unique()
        devices = (
            self.tables["devices"]
            .where_in("user_id", users)
            .filter(pl.col("active"))
            .select("user_id", "device_id", "platform", "token")
        )
        prefs = self.tables["preferences"].where_in("user_id", users).drop("updated_at")
        joined = rows.join(prefs, on="user_id", how="left").with_columns(
            [pl.col(name).fill_null(value) for name, value in DEFAULTS.items() if value is not None]
        )
        return joined.join(devices, on="user_id", how="left")

    def stats(self) -> dict[str, int]:
        devices = self.tables["devices"].frame()
        return {
            "shard": self.index,
            "devices": devices.height,
            "active_devices": int(devices["active"].sum()),
            "profiles": len(self.tables["profiles"]),
            "preferences": len(self.tables["preferences"]),
            "wishlist_rows": len(self.wishlists),
            "device_bytes": devices.estimated_size(),
        }

    def ping(self) -> bool:
        return True
