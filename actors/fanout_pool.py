"""The fan-out worker pool grows with campaign demand and shrinks when idle.

Demand is the fan-out queue: the shard plans a campaign is about to hand out. A router
starting a campaign asks for `ceil(shards / fanout_shards_per_worker)` workers, within
`fanout_workers` .. `fanout_workers_max`; workers beyond the running ones are created as
named actors that reserve `fanout_num_cpus` each. On a cluster without room for them they
stay pending — exactly the resource demand the Ray autoscaler adds a node for — and the
campaign goes on with the workers that answered within `fanout_grow_wait_s` rather than
waiting for a machine to boot.

Every router using the pool stamps `fanout:used_at` in Redis (`cluster.state.pools`) while
its campaign runs; router 0 removes the workers above `fanout_workers` once nobody has used
the pool for `fanout_idle_s`, which lets the autoscaler retire the nodes they held. A campaign that
starts in the instant between that check and the kill loses its run and resumes after its
lease (finished shards and recorded deliveries are skipped) — never a lost delivery.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import ray
import redis.asyncio as aioredis

from actors.fanout_worker import FanoutWorker
from cluster import metrics
from cluster.names import fanout_name
from cluster.placement import actor_options
from cluster.settings import HeraldSettings
from cluster.state.pools import FanoutPoolState

log = logging.getLogger("herald.fanout_pool")


def start_fanout_worker(settings: HeraldSettings, index: int) -> ray.actor.ActorHandle:
    """Create (or find) fan-out worker `index`."""

    options = actor_options(settings, fanout_name(index), max_concurrency=16)
    options["num_cpus"] = settings.fanout.num_cpus or settings.topology.actor_num_cpus
    return ray.remote(FanoutWorker).options(**options).remote(settings, index)


def running_fanout_workers(settings: HeraldSettings) -> list[str]:
    """Names of the pool's workers that exist now (the fixed ones and any grown ones)."""
    names = []
    for index in range(settings.pool_max_workers):
        try:
            ray.get_actor(fanout_name(index), namespace=settings.topology.namespace)
        except ValueError:
            continue
        names.append(fanout_name(index))
    return names


class FanoutPool:
    def __init__(self, settings: HeraldSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.state = FanoutPoolState(settings, redis)

    def wanted(self, shard_plans: int) -> int:
        per_worker = self.settings.fanout.shards_per_worker
        return min(
            self.settings.pool_max_workers,
            max(self.settings.fanout.workers, math.ceil(shard_plans / per_worker)),
        )

    async def touch(self) -> None:
        """The pool is in use now (called at a campaign's start and with its lease)."""
        await self.state.touch()

    async def workers_for(self, shard_plans: int) -> list[ray.actor.ActorHandle]:
        """Workers to plan `shard_plans` shard plans with: the fixed pool, plus grown
        workers that answer within `fanout_grow_wait_s`."""
        await self.touch()
        handles = [start_fanout_worker(self.settings, i) for i in range(self.wanted(shard_plans))]
        fixed = handles[: self.settings.fanout.workers]
        grown = handles[self.settings.fanout.workers :]
        if not grown:
            return fixed
        pings = {asyncio.ensure_future(h.ping.remote()): h for h in grown}
        done, _ = await asyncio.wait(pings, timeout=self.settings.fanout.grow_wait_s)
        ready = [pings[f] for f in done if f.exception() is None]
        await self.touch()  # in use from now on, however long the new workers took
        metrics.set_fanout_workers(len(fixed) + len(ready))
        if len(ready) < len(grown):
            log.info(
                "fan-out pool: %d of %d new workers not up yet; using %d",
                len(grown) - len(ready),
                len(grown),
                len(fixed) + len(ready),
            )
        return fixed + ready

    async def shrink_if_idle(self) -> int:
        """Remove the grown workers once the pool has been idle for `fanout_idle_s`;
        returns how many were removed."""
        used_at = await self.state.used_at()
        if used_at is not None and time.time() - used_at < self.settings.fanout.idle_s:
            return 0
        removed = 0
        for index in range(self.settings.fanout.workers, self.settings.pool_max_workers):
            try:
                worker = ray.get_actor(
                    fanout_name(index), namespace=self.settings.topology.namespace
                )
            except ValueError:
                continue
            ray.kill(worker, no_restart=True)
            removed += 1
        if removed:
            metrics.set_fanout_workers(self.settings.fanout.workers)
            log.info("fan-out pool: idle, removed %d grown workers", removed)
        return removed
