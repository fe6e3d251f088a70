"""Partition leases: which router reads each partition of the Redis Streams log.

One reader per partition at a time is what keeps a user's events in order. A lease is a
string `lease:{<lane>:<partition>}` holding the holder's id, taken with SET NX PX, renewed
with a compare-and-PEXPIRE script and given back with compare-and-DEL, so a router only
ever extends or deletes its own lease, never one a peer took after it expired. A router's
holder id is its index (`router-<i>`): Ray restarting router i after a crash re-takes its
leases at once instead of waiting for them to expire, and reads their pending entries.

Routers also say they are alive (`{routers}:alive`, index → last heartbeat): each one aims
at its fair share of partitions (`share`), so when a router joins, the others hand
partitions over after the batch in hand, and when one stops for good its heartbeat and
leases run out and the new owners take its partitions. Every command touches one key, so
each works on a Redis Cluster; many of them go in one round trip (`state.scripts`).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.scripts import run_scripts

# KEYS[1]: the lease. ARGV: holder, ttl ms. Taken when free, or already ours (a restart).
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Slot = tuple[str, int]  # (lane, partition)


def holder_id(index: int) -> str:
    return f"router-{index}"


def share(live: list[int], index: int, partitions: int) -> set[int]:
    """The partitions router `index` should read: partition k belongs to the k-th live
    router modulo their number (sorted by index), so every router computes the same map."""
    ranked = sorted(set(live) | {index})
    return {k for k in range(partitions) if ranked[k % len(ranked)] == index}


class PartitionLeases:
    def __init__(self, settings: HeraldSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def heartbeat(self, index: int, now: float, window_s: float) -> list[int]:
        """Say router `index` is alive; the indices of the routers alive within `window_s`
        (those older are forgotten), sorted."""
        key = keys.routers_alive(self.settings)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {str(index): now})
        pipe.zremrangebyscore(key, "-inf", now - window_s)
        pipe.zrange(key, 0, -1)
        *_, members = await pipe.execute()
        return sorted(int(m) for m in members)

    async def acquire(self, slots: list[Slot], holder: str, ttl_ms: int) -> list[Slot]:
        """Of `slots`, the ones now held by `holder` (free, or held by it already)."""
        return await self._each(self._acquire, slots, [holder, ttl_ms])

    async def renew(self, slots: list[Slot], holder: str, ttl_ms: int) -> list[Slot]:
        """Of `slots`, the ones `holder` still holds (now for another `ttl_ms`)."""
        return await self._each(self._renew, slots, [holder, ttl_ms])

    async def release(self, slots: list[Slot], holder: str) -> None:
        await self._each(self._release, slots, [holder])

    async def _each(self, script, slots: list[Slot], args: list) -> list[Slot]:
        calls = [(script, [keys.lease(self.settings, lane, p)], args) for lane, p in slots]
        replies = await run_scripts(self.redis, calls)
        return [slot for slot, ok in zip(slots, replies, strict=True) if ok]
