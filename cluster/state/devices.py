"""Which user owns each device id, across shards.

A device's row lives in its user's shard; this map finds that shard from a bare device id
(`DELETE /v1/devices/{id}`), and tells a registration that a phone changed hands (the old
owner must stop getting pushes on it). Bulk imports write it in pipelines of many fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

# Fields per HSET in a bulk write: big enough to amortize the round trip, small enough not
# to block Redis for long on one command.
BULK_FIELDS = 10_000


class DeviceOwners:
    def __init__(self, settings: HeraldSettings, redis_client: aioredis.Redis) -> None:
        self.key = keys.device_owners(settings)
        self.redis = redis_client

    async def owner(self, device_id: str) -> str | None:
        value = await self.redis.hget(self.key, device_id)
        return value.decode() if value is not None else None

    async def set_owner(self, device_id: str, user_id: str) -> None:
        await self.redis.hset(self.key, device_id, user_id)

    async def forget(self, device_id: str) -> None:
        await self.redis.hdel(self.key, device_id)


def write_owners(
    settings: HeraldSettings,
    client: redis.Redis,
    device_ids: Sequence[str],
    user_ids: Sequence[str],
) -> None:
    """Bulk import: every (device, owner) pair in one pipeline of HSETs of `BULK_FIELDS`."""
    key = keys.device_owners(settings)
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(device_ids), BULK_FIELDS):
        stop = start + BULK_FIELDS
        flat: list[str] = [None] * (2 * len(device_ids[start:stop]))  # type: ignore[list-item]
        flat[0::2] = device_ids[start:stop]
        flat[1::2] = user_ids[start:stop]
        pipe.execute_command("HSET", key, *flat)
    pipe.execute()


def forget_owned(
    settings: HeraldSettings,
    client: redis.Redis,
    device_ids: Sequence[str],
    user_ids: Sequence[str],
) -> int:
    """Drop the index entries of devices a shard deleted (expired dead tokens) — only those
    still pointing at the user whose row went, so a token another user registered since
    keeps its new owner. One HMGET, then one HDEL; returns the entries removed."""
    if not device_ids:
        return 0
    key = keys.device_owners(settings)
    current = client.hmget(key, list(device_ids))
    mine = [
        device
        for device, user, owner in zip(device_ids, user_ids, current, strict=True)
        if owner is not None and owner.decode() == user
    ]
    return client.hdel(key, *mine) if mine else 0
