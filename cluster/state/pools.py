"""What the fan-out and sender pools keep in Redis, so a restarted router 0 carries on
sizing them where its previous life stopped, and every router sees the same sizes.

- `<prefix>{pools}:fanout:used_at` (string, epoch s): when a router last used the fan-out pool.
  Router 0 removes the grown workers once it is older than `fanout_idle_s`.
- `<prefix>{pools}:senders` (hash), per lane: `<lane>:size` (push replicas the routers split a
  batch over), `<lane>:busy_at` (when the backlog last wanted that many),
  `<lane>:lowered_at` (when the size was last lowered) and `<lane>:retired` (bumped per
  removed replica: routers then drop their cached handles of that lane).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys


class FanoutPoolState:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis | None) -> None:
        self.key = keys.fanout_used_at(settings)
        self.redis = client

    async def touch(self) -> None:
        """The pool is in use now."""
        await self.redis.set(self.key, repr(time.time()))

    async def used_at(self) -> float | None:
        """When the pool was last used; None when never."""
        value = await self.redis.get(self.key)
        return float(value) if value is not None else None


class SenderPoolState:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis | None) -> None:
        self.key = keys.sender_pool(settings)
        self.redis = client

    async def sizes(self, lanes: Sequence[str]) -> list[tuple[int, bytes | None]]:
        """Per lane: (size, retired count as stored); one HMGET for all lanes. The retired
        count is only ever compared with its previous value, so it stays raw."""
        fields = [f"{lane}:{field}" for lane in lanes for field in ("size", "retired")]
        values = await self.redis.hmget(self.key, fields)
        return [
            (int(size or 1), retired)
            for size, retired in zip(values[::2], values[1::2], strict=True)
        ]

    async def lane(self, lane: str) -> tuple[int, float | None, float | None]:
        """(size, busy_at, lowered_at) of one lane; a lane never sized has size 1."""
        fields = [f"{lane}:size", f"{lane}:busy_at", f"{lane}:lowered_at"]
        size, busy_at, lowered_at = await self.redis.hmget(self.key, fields)
        return (
            int(size or 1),
            float(busy_at) if busy_at is not None else None,
            float(lowered_at) if lowered_at is not None else None,
        )

    async def mark_busy(self, lane: str, now: float) -> None:
        """The backlog wants the lane's current size (or more) at `now`."""
        await self.redis.hset(self.key, f"{lane}:busy_at", now)

    async def resize(self, lane: str, size: int, lowered_at: float | None) -> None:
        """Set the lane's size; `lowered_at` when it is a reduction."""
        update: dict[str, float] = {f"{lane}:size": size}
        if lowered_at is not None:
            update[f"{lane}:lowered_at"] = lowered_at
        await self.redis.hset(self.key, mapping=update)

    async def retired(self, lane: str) -> None:
        """One replica of the lane was removed: routers drop their handles of the lane."""
        await self.redis.hincrby(self.key, f"{lane}:retired", 1)
