"""The in-app inbox in Redis: per user, a sorted set of notification ids by creation time,
a hash of the items (JSON, as `GET /v1/users/{id}/inbox` answers them) and a pub/sub
channel the live stream (`WS /v1/users/{id}/stream`) listens on.

An item is {notification_id, title, body, created_at, data} and, when its delivery's `rich`
has them, subtitle, image_url and deeplink (built by `actors.senders.inbox.inbox_items`;
this store keeps items as given).

One Lua call per item adds it only if that notification is not in the inbox yet, trims the
inbox to its newest `inbox_max_items` and publishes the item to the user's channel — so a
redelivered notification can never appear twice, on screen or in the list.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

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


class InboxFeed:
    """A user's new inbox items, from the moment `InboxStore.follow` subscribed."""

    def __init__(self, pubsub: aioredis.client.PubSub) -> None:
        self.pubsub = pubsub

    async def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next item, or None when none came within `timeout_s` (so the caller can
        look up from the wait now and then)."""
        message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        return json.loads(message["data"]) if message is not None else None


class InboxStore:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._add = client.register_script(_ADD)

    async def add(self, items: pl.DataFrame) -> None:
        """Add each item not in its user's inbox yet, trim, publish; one pipeline for all.
        `items` has the columns user_id, notification_id, created_at (the score) and item
        (the item's JSON)."""
        limit = self.settings.state.inbox_max_items
        pipe = self.redis.pipeline(transaction=False)
        rows = items.select("user_id", "notification_id", "created_at", "item").iter_rows()
        for user_id, notification_id, created_at, item in rows:
            zset, hash_key, channel = inbox_keys(self.settings, user_id)
            await self._add(
                keys=[zset, hash_key],
                args=[notification_id, created_at, item, limit, channel],
                client=pipe,
            )
        await pipe.execute()

    async def latest(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """The user's newest `limit` items, newest first."""
        zset, hash_key, _ = inbox_keys(self.settings, user_id)
        ids = await self.redis.zrevrange(zset, 0, limit - 1)
        items = await self.redis.hmget(hash_key, ids) if ids else []
        return [json.loads(item) for item in items if item is not None]

    @asynccontextmanager
    async def follow(self, user_id: str) -> AsyncIterator[InboxFeed]:
        """Subscribed to the user's channel while the block runs; items published before
        the subscription are in `latest`, not in the feed."""
        _, _, channel = inbox_keys(self.settings, user_id)
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(channel)
        try:
            yield InboxFeed(pubsub)
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()
