"""A UserShard's device lifecycle: removal, heartbeats, dead tokens and stale devices.

- `remove_devices`: a device unregistered (`DELETE /v1/devices/{id}`, `/v1/me/devices/…`)
  or moved to another user loses its row — token included — in memory and in the shard's
  Redis hash (one pipeline). Nothing of it is kept.
- `deactivate_devices`: a token the provider called dead stays as an inactive row for
  `settings.protection.dead_token_keep_days` (so a late re-registration of the same token
  is recognized as that device), then `sweep_dead_devices` deletes it (router 0 calls it
  periodically, `actors.flows.housekeeping`). With 0 days it is deleted at once.
- `heartbeat`: the app says it is alive; `last_seen_at` moves on for a column of device
  ids, written through in one pipeline.
- Stale devices (`pipelines.device_hygiene`): active rows not seen for
  `settings.protection.device_stale_days` are left out of lookups, wishers and snapshots
  (what pushes are chosen from), and counted per user as `stale_devices`.

A mixin, not an actor: `UserShard` inherits these methods, which use its tables, store and
version (a method runs alone in the actor, so no locking).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from cluster.settings import HeraldSettings
from cluster.state.devices import forget_owned
from cluster.state.shards import ShardTables
from pipelines.device_hygiene import (
    DAY_S,
    dead_expired,
    is_stale,
    seen_at,
    split_stale,
    stale_cutoff,
    with_stale_counts,
)


class DeviceLifecycle:
    """Mixed into `actors.user_shard.UserShard` (see the module docstring)."""

    settings: HeraldSettings
    store: ShardTables
    tables: dict[str, Any]
    version: int

    # UserShard's own methods, which these call (declared, not defined, here).
    _upsert: Callable[[str, Any], int]
    _publish_sizes: Callable[[], None]

    # --- writes ----------------------------------------------------------------------------
    def upsert_devices(self, rows: Any) -> int:
        """Register devices (rows of DEVICES); a row without `last_seen_at` was seen at its
        registration (`updated_at`), else now."""
        frame = seen_at(self.tables["devices"].conform(rows), time.time())
        return self._upsert("devices", frame)

    def remove_devices(
        self, device_ids: Sequence[str] | pl.Series, user_id: str | None = None
    ) -> int:
        """Delete these devices' rows (with `user_id`: only rows of that user) from Redis,
        then from memory. Returns the number of rows deleted."""
        table = self.tables["devices"]
        present = table.where_in("device_id", device_ids)
        if user_id is not None:
            present = present.filter(pl.col("user_id") == user_id)
        if present.height == 0:
            return 0
        gone = present["device_id"]
        self.store.write({}, removed={"devices": gone})
        table.replace_all(table.frame().filter(~pl.col("device_id").is_in(gone.implode())))
        self.version += 1
        self._publish_sizes()
        return present.height

    def deactivate_devices(self, device_ids: list[str]) -> int:
        """Dead tokens: mark the devices inactive (kept `dead_token_keep_days`, see
        `sweep_dead_devices`); with 0 keep days, delete them at once."""
        current = self.tables["devices"].where_in("device_id", device_ids)
        current = current.filter(pl.col("active"))
        if current.height == 0:
            return 0
        if self.settings.protection.dead_token_keep_days == 0:
            return self._delete_with_owners(current)
        changed = current.with_columns(active=pl.lit(False), updated_at=pl.lit(time.time()))
        return self._upsert("devices", changed)

    def sweep_dead_devices(self, now: float | None = None) -> int:
        """Delete the inactive rows switched off `dead_token_keep_days` or more before `now`
        (default: the clock), with their owner-index entries. Returns the rows deleted."""
        now = time.time() if now is None else now
        keep = self.settings.protection.dead_token_keep_days
        expired = self.tables["devices"].frame().filter(dead_expired(now, keep))
        return self._delete_with_owners(expired) if expired.height else 0

    def _delete_with_owners(self, rows: pl.DataFrame) -> int:
        forget_owned(
            self.settings, self.store.redis, rows["device_id"].to_list(), rows["user_id"].to_list()
        )
        return self.remove_devices(rows["device_id"])

    def heartbeat(
        self, device_ids: Sequence[str] | pl.Series, now: float | None = None
    ) -> list[str]:
        """The apps of these devices are alive at `now` (default: the clock): their
        `last_seen_at` moves on (never back), one pipeline for the whole column. Returns
        the ids known here. Only a stale device coming back changes what pushes go to, so
        only that makes a new snapshot."""
        now = time.time() if now is None else now
        rows = self.tables["devices"].where_in("device_id", device_ids)
        if rows.height == 0:
            return []
        revived = rows.filter(pl.col("active") & is_stale(self._stale_cutoff(now))).height
        seen = rows.with_columns(
            last_seen_at=pl.max_horizontal(pl.col("last_seen_at"), pl.lit(now, pl.Float64))
        )
        self.store.write({"devices": ("device_id", seen)})
        self.tables["devices"].upsert(seen)
        if revived:
            self.version += 1
        return seen["device_id"].to_list()

    # --- the stale rule ----------------------------------------------------------------------
    def _stale_cutoff(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return stale_cutoff(now, self.settings.protection.device_stale_days)

    def _push_devices(self, devices: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(fresh, stale) of the active rows of `devices`: pushes go to the fresh ones."""
        return split_stale(devices.filter(pl.col("active")), self._stale_cutoff())

    def _fresh_until(self, fresh: pl.DataFrame) -> float:
        """When the first of these fresh devices turns stale (a cached snapshot is good
        until then); never when there are none."""
        oldest = fresh["last_seen_at"].min()
        days = self.settings.protection.device_stale_days
        return float("inf") if oldest is None else float(oldest) + days * DAY_S

    @staticmethod
    def _with_fresh_platforms(
        users: pl.DataFrame, fresh: pl.DataFrame, stale: pl.DataFrame
    ) -> pl.DataFrame:
        """Snapshot users whose `platforms` (what `has_push_device` follows) are those of
        their fresh devices, with how many stale ones they have (`stale_devices`)."""
        users = with_stale_counts(users, stale)
        if stale.height == 0:
            return users
        platforms = fresh.group_by("user_id").agg(_fresh=pl.col("platform").unique().sort())
        users = users.join(platforms, on="user_id", how="left", maintain_order="left")
        empty = pl.lit([], dtype=pl.List(pl.String))
        return users.with_columns(platforms=pl.coalesce("_fresh", empty)).drop("_fresh")
