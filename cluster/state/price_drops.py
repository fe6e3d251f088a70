"""The users each price drop already reached, so a redelivered event reaches nobody twice.

`<prefix>{pd:<event_id>}:users` is a set of user ids: a wisher joins it once their
notification is recorded and sent (or held for quiet hours), in the same pipeline as their
frequency count. A redelivered event (a crash before its log ack) asks this set first and
suppresses those wishers as `already_sent`, neither notifying nor counting them again. The
set lives as long as the notifications it guards (`notification_ttl_s`).
"""

from __future__ import annotations

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

CHUNK = 10_000  # users per SMISMEMBER


class PriceDropReach:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client

    def key(self, event_id: str) -> str:
        return keys.price_drop_users(self.settings, event_id)

    def record(self, reached: pl.DataFrame, pipe: aioredis.client.Pipeline) -> None:
        """Queue (event_id, user_id) rows into their events' sets on `pipe`."""
        ttl = self.settings.state.notification_ttl_s
        for (event_id,), group in reached.group_by("event_id"):
            pipe.sadd(self.key(event_id), *group["user_id"].to_list())
            pipe.expire(self.key(event_id), ttl)

    async def reached(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """The (event_id, user_id) rows of `pairs` their event already reached: one
        SMISMEMBER per event and `CHUNK` users, in one pipeline."""
        groups = pairs.partition_by("event_id", as_dict=True, maintain_order=True)
        if not groups:
            return pairs
        pipe = self.redis.pipeline(transaction=False)
        for (event_id,), group in groups.items():
            for start in range(0, group.height, CHUNK):
                pipe.smismember(self.key(event_id), group["user_id"].slice(start, CHUNK).to_list())
        flags = [bool(f) for chunk in await pipe.execute() for f in chunk]
        ordered = pl.concat(list(groups.values()))
        return ordered.filter(pl.Series(flags, dtype=pl.Boolean))
