"""Which partitions of the Redis Streams log this router reads, and one read loop for each.

Every tick (a second, or a third of the lease when that is shorter) the router says it is
alive, works out its fair share of the partitions from the routers alive
(`cluster.state.leases.share`), renews the leases it holds — also while their loops are in
the middle of a long batch —, and takes the free leases of its share, starting one
sequential read loop per partition taken (read batch → process → ack → next). A loop whose
partition left the share (a router joined) ends after the batch in hand and gives the
lease back, so the new owner starts after it; a lease found lost (it expired under a
stalled router and a peer took it) ends its loop as well. A router that died stops renewing:
after `claim_idle_ms` its heartbeat and leases run out, the others' shares grow over its
partitions, and each new owner reads the partition's pending entries first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state.leases import PartitionLeases, Slot, holder_id, share
from cluster.vocabulary import LANES

log = logging.getLogger("herald.router")

# A partition's read loop: (lane, partition, keep reading?) → runs until keep() is False.
ReadLoop = Callable[[str, int, Callable[[], bool]], Awaitable[None]]


class PartitionReaders:
    def __init__(
        self, settings: HeraldSettings, index: int, redis: aioredis.Redis, read: ReadLoop
    ) -> None:
        self.settings = settings
        self.index = index
        self.leases = PartitionLeases(settings, redis)
        self.holder = holder_id(index)
        self.read = read
        # The lease outlives a missed renewal or two; a dead router's runs out in this time.
        self.ttl_ms = settings.eventlog.claim_idle_ms
        self.tick_s = min(1.0, self.ttl_ms / 3000)
        self.held: set[Slot] = set()
        self.wanted: set[Slot] = set()
        self.loops: dict[Slot, asyncio.Task] = {}

    def reading(self) -> dict[str, list[int]]:
        """The partitions this router reads now, per lane (for status and tests)."""
        return {lane: sorted(p for ln, p in self.held if ln == lane) for lane in LANES}

    def keep(self, slot: Slot) -> bool:
        return slot in self.held and slot in self.wanted

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away: leases run on until they expire
                log.warning("router %s: partition lease tick failed", self.index, exc_info=True)
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        live = await self.leases.heartbeat(self.index, time.time(), self.ttl_ms / 1000)
        partitions = self.settings.eventlog.log_partitions
        mine = share(live, self.index, partitions)
        self.wanted = {(lane, k) for lane in LANES for k in mine}
        if self.held:
            still = set(await self.leases.renew(sorted(self.held), self.holder, self.ttl_ms))
            if lost := self.held - still:
                log.warning("router %s: partition leases lost: %s", self.index, sorted(lost))
            self.held = still
        free = sorted(s for s in self.wanted if s not in self.held and s not in self.loops)
        if free:
            for slot in await self.leases.acquire(free, self.holder, self.ttl_ms):
                self.held.add(slot)
                self.loops[slot] = asyncio.create_task(self._read(slot))

    async def _read(self, slot: Slot) -> None:
        """One partition's loop while it is ours and wanted; then the lease goes back (a
        lost one is no longer ours to give)."""
        lane, partition = slot
        try:
            await self.read(lane, partition, lambda: self.keep(slot))
        finally:
            self.loops.pop(slot, None)
            if slot in self.held:
                self.held.discard(slot)
                await self.leases.release([slot], self.holder)
