"""Many single-slot Lua script calls in as few round trips as the client allows.

Herald's per-partition scripts (the log's append, the partition leases) each touch the keys
of one hash tag, so each is valid on a Redis Cluster. On one Redis they all go in one
non-transactional pipeline (redis-py loads missing scripts first), followed by any plain
commands `after` queues; a cluster client's pipeline cannot carry EVALSHA, so there the
scripts are sent concurrently and the plain commands in a pipeline after them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[str | int | float]]


async def run_scripts(
    redis: aioredis.Redis,
    calls: Sequence[ScriptCall],
    after: Callable[[aioredis.client.Pipeline], None] | None = None,
) -> list:
    """Each script call's reply, in the calls' order (the `after` commands' are dropped)."""
    pipe = redis.pipeline(transaction=False)
    if isinstance(redis, aioredis.RedisCluster):
        replies = await asyncio.gather(*(script(keys=k, args=a) for script, k, a in calls))
        if after is not None:
            after(pipe)
            await pipe.execute()
        return list(replies)
    for script, k, a in calls:
        await script(keys=k, args=a, client=pipe)
    if after is not None:
        after(pipe)
    return (await pipe.execute())[: len(calls)] if calls or after else []
