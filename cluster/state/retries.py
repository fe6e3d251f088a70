"""Retries that survive restarts: a Redis sorted set of deliveries keyed by when they are due.

Taking due retries does not remove them: it pushes their due time out by a lease, in one
Lua call, so a router that dies holding them only delays them — another router takes them
when the lease runs out. They leave the set only when their next outcome is recorded.
Delays grow exponentially with full jitter (AWS's "Exponential Backoff and Jitter") and
never undercut a provider's Retry-After.

Each lane has its own set, `<prefix>{retry:<lane>}` (its own Redis Cluster slot; the
transactional one is what dead-letter replays feed, and an older deployment's bare `retry`
key is moved to it at bootstrap, `cluster.state.layout`), and routers take due retries per
lane, so a backlog of marketing retries never holds up an order update's retry. Every row
carries its lane, and is re-sent through that lane's senders whichever set it came from.

A row is stored without its device token (`UNSTORED`): the device id names it, and the
delivery step looks the token up again in the owning shard when the retry is due, so a
device unregistered meanwhile is not pushed to, and no token sits in Redis in the clear.
"""

from __future__ import annotations

import json
import random
import time

import polars as pl
import redis.asyncio as aioredis

from cluster import finite_json
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.vocabulary import LANES

# Delivery columns never written to the retry set (nor the dead letters, which share it).
UNSTORED = ("token",)

# Due members of a sorted set, their scores pushed out to a lease's end in the same call:
# the lease pattern retries and campaigns share.
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], member)
end
return due
"""


def backoff_s(settings: HeraldSettings, attempt: int, retry_after_s: float | None) -> float:
    """Delay before attempt `attempt + 1`: full jitter over an exponential ceiling."""
    ceiling = min(settings.retry.max_s, settings.retry.base_s * 2 ** max(0, attempt - 1))
    delay = random.uniform(settings.retry.base_s / 2, ceiling)
    return max(delay, retry_after_s or 0.0)


def stored(rows: pl.DataFrame) -> pl.DataFrame:
    """Delivery rows as the retry set and the dead letters keep them: without a token."""
    return rows.drop(UNSTORED, strict=False)


class RetrySchedule:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.key = keys.retries(settings)
        self._take = client.register_script(TAKE_DUE)

    def key_of(self, lane: str) -> str:
        return self.key if lane == "transactional" else keys.retries(self.settings, lane)

    def schedule(self, rows: pl.DataFrame, pipe: aioredis.client.Pipeline) -> None:
        """Queue DELIVERIES rows (plus `attempt` done so far and `retry_after_s`) on `pipe`."""
        now = time.time()
        for row in stored(rows).iter_rows(named=True):
            due = now + backoff_s(self.settings, row["attempt"], row.pop("retry_after_s", None))
            pipe.zadd(self.key_of(row["lane"]), {finite_json.dumps(row, sort_keys=True): due})

    def defer(self, rows: pl.DataFrame, pipe: aioredis.client.Pipeline) -> None:
        """Queue DELIVERIES rows (plus `attempt` and `send_after`, epoch s) to be sent first
        at `send_after`: quiet hours hold a campaign's push in the same durable set."""
        for row in stored(rows).iter_rows(named=True):
            due = row.pop("send_after")
            pipe.zadd(self.key_of(row["lane"]), {finite_json.dumps(row, sort_keys=True): due})

    async def take_due(
        self, limit: int = 500, lane: str = "transactional"
    ) -> tuple[list[bytes], pl.DataFrame]:
        """Due retries of one lane, leased to the caller: (their members, their rows)."""
        now = time.time()
        members = await self._take(
            keys=[self.key_of(lane)], args=[now, limit, now + self.settings.retry.lease_s]
        )
        rows = pl.DataFrame([json.loads(m) for m in members]) if members else pl.DataFrame()
        return members, rows

    def done(
        self, members: list[bytes], pipe: aioredis.client.Pipeline, lane: str = "transactional"
    ) -> None:
        if members:
            pipe.zrem(self.key_of(lane), *members)

    async def size(self) -> int:
        return sum([int(await self.redis.zcard(self.key_of(lane))) for lane in LANES])
