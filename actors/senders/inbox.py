"""The in-app inbox channel: a per-user sorted set in Redis plus a live WebSocket feed.

One Lua call per item adds it only if that notification is not in the inbox yet, trims the
inbox to its newest items and publishes the item to the user's stream channel — so a
redelivered notification can never appear twice, on screen or in the list.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.clients import async_client
from cluster.tables.deliveries import RESULTS

_ADD = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
    redis.call('HDEL', KEYS[2], unpack(old))
  end
  redis.call('PUBLISH', ARGV[5], ARGV[3])
  return 1
end
return 0
"""


def inbox_keys(settings: HeraldSettings, user_id: str) -> tuple[str, str, str]:
    """(sorted set of notification ids, hash of items, pub/sub channel) of a user's inbox."""
    return (
        keys.inbox(settings, user_id),
        keys.inbox_items(settings, user_id),
        keys.user_stream(settings, user_id),
    )


class InboxClient:
    """ProviderClient for the inbox: Redis is the provider, so every answer is final."""

    def __init__(self, settings: HeraldSettings) -> None:
        self.settings = settings
        self.redis: aioredis.Redis | None = None

    async def start(self) -> None:
        self.redis = async_client(self.settings)
        self._add = self.redis.register_script(_ADD)

    async def send(self, batch: pa.Table) -> pa.Table:
        frame = pl.from_arrow(batch)
        # `data` is already a JSON object: splice it in rather than decoding and re-encoding.
        head = pl.struct(
            "notification_id", "title", "body", created_at="accepted_at"
        ).struct.json_encode()
        items = frame.select(
            "user_id",
            "notification_id",
            "accepted_at",
            pl.concat_str(
                [head.str.strip_suffix("}"), pl.lit(',"data":'), pl.col("data"), pl.lit("}")]
            ).alias("item"),
        )
        pipe = self.redis.pipeline(transaction=False)
        for user_id, nid, score, item in items.iter_rows():
            zset, hash_key, channel = inbox_keys(self.settings, user_id)
            await self._add(
                keys=[zset, hash_key],
                args=[nid, score, item, self.settings.state.inbox_max_items, channel],
                client=pipe,
            )
        await pipe.execute()
        now = time.time()
        return pa.table(
            {
                "delivery_id": frame["delivery_id"].to_arrow(),
                "outcome": pa.array(["delivered"] * frame.height, pa.string()),
                "error": pa.nulls(frame.height, pa.string()),
                "retry_after_s": pa.nulls(frame.height, pa.float64()),
                "acked_at": pa.array([now] * frame.height, pa.float64()),
            },
            schema=RESULTS,
        )

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
