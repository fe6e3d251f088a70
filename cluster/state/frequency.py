"""Frequency counters: how much marketing each user got on their own local day.

`<prefix>{freq:<YYYY-MM-DD>}` is one hash per day, user id → marketing notifications sent (or
held for quiet hours) that day. Campaigns and price drops share it, so the frequency cap
(`max_marketing_per_day`) counts both. Fan-out workers and the price-drop flow read it
before eligibility; the delivery step adds one per user after each batch is recorded. A
day's hash expires three days after its last increment: no user's local day lasts longer.

The day is the caller's to compute (`pipelines.eligibility.local_day`): this store only
knows keys, not time zones.
"""

from __future__ import annotations

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

CHUNK = 10_000  # users per Redis command when reading counts
TTL_S = 3 * 86_400

# One command per batch and day, not one HINCRBY round trip per user: +1 for each user
# (ARGV[2..]), then the TTL (ARGV[1]).
_COUNT = (
    "for i = 2, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end "
    "redis.call('EXPIRE', KEYS[1], ARGV[1])"
)


class FrequencyCounters:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._count = client.register_script(_COUNT)

    def key(self, day: str) -> str:
        return keys.frequency(self.settings, day)

    async def sent_today(self, days: pl.DataFrame) -> pl.DataFrame | None:
        """(user_id, count) for `days` rows (user_id, day): the marketing each user already
        got on that day — one HMGET per day and `CHUNK` users, in one pipeline. None for
        no users (eligibility then skips the cap's join)."""
        if days.height == 0:
            return None
        pipe = self.redis.pipeline(transaction=False)
        groups = days.partition_by("day", as_dict=True, maintain_order=True)
        for (day,), group in groups.items():
            ids = group["user_id"]
            for start in range(0, ids.len(), CHUNK):
                pipe.hmget(self.key(day), ids.slice(start, CHUNK).to_list())
        values = [v for chunk in await pipe.execute() for v in chunk]
        counts = pl.Series(values, dtype=pl.Binary).cast(pl.String).cast(pl.Int64)
        ids = pl.concat([group["user_id"] for group in groups.values()])
        return pl.DataFrame({"user_id": ids, "count": counts.fill_null(0)})

    async def count(self, users: pl.DataFrame, pipe: aioredis.client.Pipeline) -> None:
        """Queue +1 on each of `users`' (user_id, local_day) count on `pipe`: one script call
        per day. Async because an async Script queues on a pipeline only when awaited."""
        for (day,), group in users.group_by("local_day"):
            await self._count(
                keys=[self.key(day)], args=[TTL_S, *group["user_id"].to_list()], client=pipe
            )
