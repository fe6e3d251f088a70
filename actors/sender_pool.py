"""Push senders grow with each lane's send backlog and shrink once it is gone.

Demand is the queue of work a lane has not handed to its senders yet: the event log's lag
(events no router has finished) plus, in the marketing lane, the users that running
campaigns still have to reach (the fan-out queue). Router 0 measures it every
`sender_scale_interval_s` and sizes the lane's push senders (APNs and FCM alike) to
ceil(backlog / `sender_backlog_per_replica`), at least 1 and at most the lane's *ceiling*:
`sender_replicas_max`, or fewer when the lane's rate ceilings need fewer — a replica sends
about `sender_<channel>_capacity_per_s`, and a lane held to 500 FCM pushes/s gains nothing
from a second FCM replica but a process competing for the cores order updates need.

Replica 0 of each (channel, lane) is the fixed sender `actors.bootstrap` starts; grown
replicas reserve `sender_num_cpus`, so on a full cluster they are the resource demand the
Ray autoscaler adds a node for, and they are used once they answer a ping. The lane's size
lives in Redis (hash `senders`, field `<lane>:size`): every router splits a lane's batch
over that many replicas and tells each its share, so the provider's rate ceiling is divided
among the replicas rather than multiplied by them. Each removal bumps the lane's
`<lane>:retired` count, and routers then drop their cached handles of that lane's replicas:
a handle to a removed replica stays dead even when a replica of the same name is started
again.

Shrinking waits until the backlog has wanted fewer replicas for `sender_idle_s`, lowers
the size first, and removes a replica only once the routers have seen the new size and it
has nothing in flight, so no push is cut off mid-send (a call that still reaches a removed
replica fails as a whole and its rows are retried — none of them was sent).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import ray
import redis.asyncio as aioredis

from actors.sender import ChannelSender
from cluster import metrics
from cluster.eventlog import EventLog
from cluster.names import sender_name
from cluster.placement import actor_options
from cluster.settings import HeraldSettings
from cluster.state.campaigns import CampaignStore
from cluster.state.pools import SenderPoolState
from cluster.vocabulary import LANES, PUSH_CHANNELS

log = logging.getLogger("herald.sender_pool")

# How long routers keep a lane's size before reading it again.
SIZE_CACHE_S = 1.0


def start_sender(
    settings: HeraldSettings, channel: str, lane: str, replica: int = 0
) -> ray.actor.ActorHandle:
    """Create (or find) one sender replica."""

    options = actor_options(settings, sender_name(channel, lane, replica), max_concurrency=1000)
    if replica:
        options["num_cpus"] = settings.senders.num_cpus or settings.topology.actor_num_cpus
    return ray.remote(ChannelSender).options(**options).remote(settings, channel, lane, replica)


def running_sender_replicas(settings: HeraldSettings, channel: str, lane: str) -> list[int]:
    """Replica numbers of one (channel, lane) sender that exist now."""
    found = []
    for replica in range(settings.senders.replicas_max):
        try:
            ray.get_actor(
                sender_name(channel, lane, replica), namespace=settings.topology.namespace
            )
        except ValueError:
            continue
        found.append(replica)
    return found


class SenderPool:
    def __init__(self, settings: HeraldSettings, redis: aioredis.Redis, log: EventLog) -> None:
        self.settings = settings
        self.log = log
        self.campaigns = CampaignStore(settings, redis)
        # The pool's state, in Redis so a restarted router 0 carries on (`state.pools`).
        self.state = SenderPoolState(settings, redis)
        self._sizes: dict[str, int] = dict.fromkeys(LANES, 1)
        self._retired: dict[str, bytes | None] = dict.fromkeys(LANES)
        self._read_at = -math.inf
        self._handles: dict[str, tuple[str, ray.actor.ActorHandle]] = {}  # name: (lane, handle)
        # Per lane, a bound on the replica numbers that may exist: `_retire` looks no further
        # and is skipped while there is nothing above `keep` (named-actor lookups block the
        # router's loop). Unknown at start: a restarted router 0 sweeps once.
        self._above: dict[str, int] = dict.fromkeys(LANES, settings.senders.replicas_max)

    async def sizes(self) -> dict[str, int]:
        """Replicas per lane the routers split push batches over (read at most once a second)."""
        if self.settings.senders.replicas_max == 1:
            return self._sizes
        if time.monotonic() - self._read_at >= SIZE_CACHE_S:
            stored = await self.state.sizes(LANES)
            for lane, (size, retired) in zip(LANES, stored, strict=True):
                self._sizes[lane] = min(self.settings.senders.replicas_max, size)
                if retired != self._retired[lane]:
                    self._retired[lane] = retired
                    self._handles = {n: e for n, e in self._handles.items() if e[0] != lane}
            self._read_at = time.monotonic()
        return self._sizes

    def handle(self, channel: str, lane: str, replica: int) -> ray.actor.ActorHandle:
        """The cached handle of one replica (named-actor lookups go to the GCS)."""
        name = sender_name(channel, lane, replica)
        if name not in self._handles:
            actor = ray.get_actor(name, namespace=self.settings.topology.namespace)
            self._handles[name] = (lane, actor)
        return self._handles[name][1]

    def forget(self, channel: str, lane: str, replica: int) -> None:
        """Look the replica up afresh next time (its call failed as a whole)."""
        self._handles.pop(sender_name(channel, lane, replica), None)

    def ceiling(self, lane: str) -> int:
        """The most replicas that still add throughput under the lane's rate ceilings."""
        capacity = {
            "apns": self.settings.senders.apns_capacity_per_s,
            "fcm": self.settings.senders.fcm_capacity_per_s,
        }
        useful = max(
            math.ceil(self.settings.send_rate_per_s(channel, lane) / capacity[channel])
            for channel in PUSH_CHANNELS
        )
        return max(1, min(self.settings.senders.replicas_max, useful))

    def wanted(self, lane: str, backlog: int) -> int:
        per_replica = self.settings.senders.backlog_per_replica
        return max(1, min(self.ceiling(lane), math.ceil(backlog / per_replica)))

    async def backlog(self, lane: str) -> int:
        """Work the lane has not handed to its senders: log lag, plus the users running
        campaigns have yet to reach (marketing)."""
        queued = await self.log.lag(lane)
        if lane == "marketing":
            queued += await self.campaigns.backlog()
        return queued

    async def scale(self) -> dict[str, int]:
        """One round of router 0's sizing: grow, shrink, remove idle replicas; the sizes."""
        sizes = {}
        for lane in LANES:
            sizes[lane] = await self._scale_lane(lane, await self.backlog(lane))
        return sizes

    async def _scale_lane(self, lane: str, backlog: int) -> int:
        current, busy_at, lowered_at = await self.state.lane(lane)
        wanted = self.wanted(lane, backlog)
        now = time.time()
        if wanted >= current or busy_at is None:
            busy_at = now
            await self.state.mark_busy(lane, now)
        size = current
        if wanted > current:
            size = await self._grow(lane, current, wanted)
        elif now - busy_at >= self.settings.senders.idle_s:
            size = wanted
        if size != current:
            lowered = now if size < current else None
            lowered_at = lowered or lowered_at
            await self.state.resize(lane, size, lowered)
            log.info(
                "sender pool: %s lane %d -> %d replicas per push channel",
                lane,
                current,
                size,
                extra={"lane": lane, "backlog": backlog},
            )
        keep = max(size, wanted)
        settled = lowered_at is None or now - lowered_at >= 3 * SIZE_CACHE_S
        if settled and keep < self._above[lane]:
            await self._retire(lane, keep)
        metrics.set_sender_replicas(lane, size)
        return size

    async def _grow(self, lane: str, current: int, wanted: int) -> int:
        """Start replicas current..wanted-1 of every push channel; the new size counts the
        replicas that answered within `sender_grow_wait_s` (others stay pending, the
        autoscaler's demand, and are picked up in a later round)."""
        handles = {
            (replica, channel): start_sender(self.settings, channel, lane, replica)
            for replica in range(current, wanted)
            for channel in PUSH_CHANNELS
        }
        self._above[lane] = max(self._above[lane], wanted)
        pings = {asyncio.ensure_future(h.ping.remote()): key for key, h in handles.items()}
        done, _ = await asyncio.wait(pings, timeout=self.settings.senders.grow_wait_s)
        answered = {pings[f] for f in done if f.exception() is None}
        size = current
        while all((size, channel) in answered for channel in PUSH_CHANNELS) and size < wanted:
            size += 1
        return size

    async def _retire(self, lane: str, keep: int) -> None:
        """Remove replicas from `keep` up that have nothing in flight (replicas still
        starting count as idle); called once routers have seen the lowered size."""
        above = keep
        for replica in range(keep, self._above[lane]):
            for channel in PUSH_CHANNELS:
                name = sender_name(channel, lane, replica)
                try:
                    sender = ray.get_actor(name, namespace=self.settings.topology.namespace)
                    busy = (await asyncio.wait_for(sender.ping.remote(), 2))["in_flight"]
                except ValueError:
                    continue  # not there
                except (TimeoutError, ray.exceptions.RayError):
                    busy = 0  # pending or unreachable: nothing of ours in flight there
                if busy == 0:
                    ray.kill(sender, no_restart=True)
                    await self.state.retired(lane)
                    log.info("sender pool: removed idle %s", name)
                else:
                    above = replica + 1  # still sending: looked at again next round
        self._above[lane] = above
