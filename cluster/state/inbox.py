"""The in-app inbox in Redis: per user, a sorted set of notification ids by creation time,
a hash of the items (JSON, as the inbox routes answer them), a set of the ids read, and a
pub/sub channel the live streams listen on (through `cluster.state.live.StreamHub`).

An item is {notification_id, title, body, created_at, data} and, when its delivery's `rich`
has them, subtitle, image_url and deeplink (built by `actors.senders.inbox.inbox_items`;
this store keeps items as given).

One Lua call per item adds it only if that notification is not in the inbox yet, trims the
inbox to its newest `inbox_max_items` and publishes `{"type": "notification", "unread": n,
"item": ...}` to the user's channel — so a redelivered notification can never appear twice,
on screen or in the list. Marking read and deleting are scripts too, each publishing what
changed (`read`, `read_all`, `deleted`, with the new unread count), so every open tab of
the user shows the same state. The read set only ever holds ids in the inbox (trimming and
deleting take them out), so the unread count is ZCARD − SCARD.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

# KEYS: zset, items, read. ARGV: id, created_at, item JSON, limit, channel.
_ADD = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
    redis.call('HDEL', KEYS[2], unpack(old))
    redis.call('SREM', KEYS[3], unpack(old))
  end
  local unread = redis.call('ZCARD', KEYS[1]) - redis.call('SCARD', KEYS[3])
  redis.call('PUBLISH', ARGV[5],
    '{"type":"notification","unread":' .. unread .. ',"item":' .. ARGV[3] .. '}')
  return 1
end
return 0
"""

# KEYS: zset, items, read. ARGV: channel, action (read | read_all | delete), id.
# Answers the unread count after the change, or -1 when the id is not in the inbox.
_CHANGE = """
local action, id = ARGV[2], ARGV[3]
local message
if action == 'read_all' then
  local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
  for i = 1, #ids, 1000 do
    redis.call('SADD', KEYS[3], unpack(ids, i, math.min(i + 999, #ids)))
  end
  message = {type = 'read_all'}
else
  if not redis.call('ZSCORE', KEYS[1], id) then return -1 end
  if action == 'read' then
    redis.call('SADD', KEYS[3], id)
    message = {type = 'read', notification_id = id}
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('SREM', KEYS[3], id)
    message = {type = 'deleted', notification_id = id}
  end
end
local unread = redis.call('ZCARD', KEYS[1]) - redis.call('SCARD', KEYS[3])
message.unread = unread
redis.call('PUBLISH', ARGV[1], cjson.encode(message))
return unread
"""


def inbox_keys(settings: HeraldSettings, user_id: str) -> tuple[str, str, str, str]:
    """(sorted set of notification ids, hash of items, set of ids read, pub/sub channel)."""
    return (
        keys.inbox(settings, user_id),
        keys.inbox_items(settings, user_id),
        keys.inbox_read(settings, user_id),
        keys.user_stream(settings, user_id),
    )


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last item's (created_at, notification_id). Items are in
    (created_at, id) descending order, so the next page starts strictly after it even when
    items share a created_at, and items added meanwhile never shift a page."""

    created_at: float
    notification_id: str

    def encode(self) -> str:
        return f"{self.created_at!r}~{self.notification_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError on a cursor this store did not make."""
        score, sep, nid = text.partition("~")
        if not sep or not nid:
            raise ValueError("not a cursor of this inbox")
        return cls(float(score), nid)


@dataclass(frozen=True)
class InboxPage:
    items: list[dict[str, Any]]  # each with "read": bool
    next_cursor: str | None
    unread: int


class InboxStore:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._add = client.register_script(_ADD)
        self._change = client.register_script(_CHANGE)

    async def add(self, items: pl.DataFrame) -> None:
        """Add each item not in its user's inbox yet, trim, publish; one pipeline for all.
        `items` has the columns user_id, notification_id, created_at (the score) and item
        (the item's JSON)."""
        limit = self.settings.state.inbox_max_items
        pipe = self.redis.pipeline(transaction=False)
        rows = items.select("user_id", "notification_id", "created_at", "item").iter_rows()
        for user_id, notification_id, created_at, item in rows:
            zset, hash_key, read, channel = inbox_keys(self.settings, user_id)
            await self._add(
                keys=[zset, hash_key, read],
                args=[notification_id, created_at, item, limit, channel],
                client=pipe,
            )
        await pipe.execute()

    async def latest(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """The user's newest `limit` items, newest first."""
        zset, hash_key, _, _ = inbox_keys(self.settings, user_id)
        ids = await self.redis.zrevrange(zset, 0, limit - 1)
        items = await self.redis.hmget(hash_key, ids) if ids else []
        return [json.loads(item) for item in items if item is not None]

    async def page(self, user_id: str, limit: int, cursor: Cursor | None) -> InboxPage:
        """Up to `limit` items after `cursor` (newest first), each with its read flag."""
        zset, hash_key, read, _ = inbox_keys(self.settings, user_id)
        rows = await self._after(zset, cursor, limit + 1)
        more, rows = len(rows) > limit, rows[:limit]
        if not rows:
            return InboxPage([], None, await self.unread(user_id))
        ids = [nid for nid, _ in rows]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(hash_key, ids).smismember(read, ids).zcard(zset).scard(read)
        items, flags, total, read_count = await pipe.execute()
        page = [
            {**json.loads(item), "read": bool(flag)}
            for item, flag in zip(items, flags, strict=True)
            if item is not None
        ]
        last = Cursor(rows[-1][1], _text(rows[-1][0])) if more else None
        return InboxPage(page, last.encode() if last else None, max(total - read_count, 0))

    async def _after(self, zset: str, cursor: Cursor | None, count: int) -> list:
        """(id, created_at) of the next `count` items strictly after `cursor`."""
        if cursor is None:
            return await self.redis.zrevrange(zset, 0, count - 1, withscores=True)
        found: list = []
        offset = 0
        while len(found) < count:
            batch = await self.redis.zrevrangebyscore(
                zset, cursor.created_at, "-inf", start=offset, num=count, withscores=True
            )
            found += [
                (nid, score)
                for nid, score in batch
                if score < cursor.created_at or _text(nid) < cursor.notification_id
            ]
            if len(batch) < count:
                break
            offset += len(batch)
        return found[:count]

    async def unread(self, user_id: str) -> int:
        zset, _, read, _ = inbox_keys(self.settings, user_id)
        pipe = self.redis.pipeline(transaction=False)
        total, read_count = await pipe.zcard(zset).scard(read).execute()
        return max(total - read_count, 0)

    async def change(self, user_id: str, action: str, notification_id: str = "") -> int | None:
        """Mark one item read (`read`), all (`read_all`) or delete one (`delete`), and tell
        the user's open streams. The unread count after, or None when the id is not in this
        user's inbox (another user's id is simply not there)."""
        zset, hash_key, read, channel = inbox_keys(self.settings, user_id)
        unread = await self._change(
            keys=[zset, hash_key, read], args=[channel, action, notification_id]
        )
        return None if int(unread) < 0 else int(unread)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
