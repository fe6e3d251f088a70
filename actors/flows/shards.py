"""The router's calls to the UserShard actors: one call per shard that owns any of the
users asked about, all shards in parallel, answers as Arrow tables — never a call per user.
Handles are looked up once (named-actor lookups go to the GCS) and stay valid across the
shard actors' restarts."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import polars as pl
import pyarrow as pa
import ray

from cluster import metrics
from cluster.names import shard_name
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from pipelines.device_hygiene import skipped

log = logging.getLogger("herald.router")

# The snapshot's user columns a price drop's ranking reads (`models.features`); the wisher
# rows from the shards carry preferences and devices but no profile.
_RANKING_COLUMNS = ["timezone", "country", "attributes", "last_active_at", "platforms"]


class Shards:
    def __init__(self, settings: HeraldSettings) -> None:
        self.settings = settings
        self._handles: dict[str, ray.actor.ActorHandle] = {}

    def handle(self, name: str) -> ray.actor.ActorHandle:
        """A named actor's handle, cached: named-actor lookups go to the GCS."""
        if name not in self._handles:
            self._handles[name] = ray.get_actor(name, namespace=self.settings.topology.namespace)
        return self._handles[name]

    def shard(self, index: int) -> ray.actor.ActorHandle:
        return self.handle(shard_name(index))

    def _by_owner(self, user_ids: list[str], values: list[str]) -> dict[int, list[str]]:
        """`values` (one per user id) grouped by the shard that owns their user."""
        owners = shard_of(user_ids, self.settings.topology.shards)
        array = np.asarray(values, dtype=object)
        return {int(s): array[owners == s].tolist() for s in np.unique(owners)}

    async def audience(self, user_ids: list[str]) -> pl.DataFrame:
        """One row per (user, active device) with the user's preferences (`UserShard.lookup`):
        one lookup call per shard that owns any of these users, all in parallel. Stale
        devices are not among them; how many were left out is counted
        (`herald_devices_skipped_total{reason="stale"}`) and kept per user
        (`stale_devices`), so a notification that reaches no device can say why."""
        if not user_ids:
            return pl.DataFrame()
        calls = [
            self.shard(s).lookup.remote(ids)
            for s, ids in self._by_owner(user_ids, user_ids).items()
        ]
        tables: list[pa.Table] = await asyncio.gather(*calls)
        audience = pl.concat([pl.from_arrow(t) for t in tables], how="vertical_relaxed")
        metrics.count_devices_skipped("stale", skipped(audience))
        return audience

    async def wishers(self, product_ids: list[str]) -> pl.DataFrame:
        """Who wishes for these products, with devices and preferences: one call per shard
        (every shard may hold wishers), all in parallel, each answering with columns. The
        ranker's user columns (zone, country, attributes, activity, platforms, affinities)
        come from the snapshots of the shards that hold wishers (cached per shard version,
        read zero-copy), joined onto the wisher rows."""
        shards = range(self.settings.topology.shards)
        calls = [self.shard(shard).wishers.remote(product_ids) for shard in shards]
        tables: list[pa.Table] = await asyncio.gather(*calls)
        metrics.count_devices_skipped("stale", sum(skipped(pl.from_arrow(t)) for t in tables))
        holding = [s for s in shards if tables[s].num_rows]
        if not holding:
            return pl.from_arrow(tables[0])
        snapshots = await asyncio.gather(*[self.shard(s).snapshot.remote() for s in holding])
        profiles = await asyncio.gather(*[snapshot["users"] for snapshot in snapshots])
        parts = [
            _with_ranking_columns(pl.from_arrow(tables[shard]), pl.from_arrow(users))
            for shard, users in zip(holding, profiles, strict=True)
        ]
        return pl.concat(parts, how="diagonal_relaxed")

    async def deactivate(self, dead: pl.DataFrame) -> None:
        """Tokens the provider says are gone are switched off in their shards at once, so
        no later fan-out sends to them again."""
        if dead.height == 0:
            return
        log.info(
            "dead tokens deactivated",
            extra={
                "device_ids": dead["device_id"].to_list(),
                "notification_ids": dead["notification_id"].to_list(),
            },
        )
        grouped = self._by_owner(dead["user_id"].to_list(), dead["device_id"].to_list())
        await asyncio.gather(
            *[self.shard(s).deactivate_devices.remote(ids) for s, ids in grouped.items()]
        )


def _with_ranking_columns(wished: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """One shard's wisher rows with its snapshot's ranking columns of those users."""
    columns = [c for c in _RANKING_COLUMNS if c in users.columns]
    columns += [c for c in users.columns if c.startswith("affinity_")]
    ranking = users.select("user_id", *columns).join(
        wished.select("user_id").unique(), on="user_id", how="semi"
    )
    if isinstance(ranking.schema.get("attributes"), pl.Struct):
        # each shard infers its own struct; the features read JSON text just as well
        ranking = ranking.with_columns(pl.col("attributes").struct.json_encode())
    return wished.join(ranking, on="user_id", how="left")
