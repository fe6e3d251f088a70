"""The ingress's view of Herald's actors, each found by name in the deployment's namespace:
the shards it writes users and devices to, the actors readiness waits for, the pings the
admin stats gather, the model reload every fan-out worker gets and the credentials reload
every push sender gets.

`actors.bootstrap` starts the actors outside Serve, so the ingress holds no handles from
`.bind()`. The pools' current members come in as functions
(`actors.fanout_pool.running_fanout_workers`, `actors.sender_pool.running_sender_replicas`)
because `api/` sits below `actors/` and imports nothing of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import ray

from cluster.names import (
    INGESTOR,
    fanout_name,
    gateway_name,
    router_name,
    sender_name,
    senders,
    shard_name,
)
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from cluster.vocabulary import PUSH_CHANNELS

PING_TIMEOUT_S = 2.0
RELOAD_TIMEOUT_S = 10.0  # a sender not started yet starts its client first


class Fleet:
    def __init__(
        self,
        settings: HeraldSettings,
        running_fanout_workers: Callable[[HeraldSettings], list[str]],
        running_sender_replicas: Callable[[HeraldSettings, str, str], list[int]],
    ) -> None:
        self.settings = settings
        self.running_fanout_workers = running_fanout_workers
        self.running_sender_replicas = running_sender_replicas
        self.shards = [self.actor(shard_name(i)) for i in range(settings.topology.shards)]

    def actor(self, name: str) -> ray.actor.ActorHandle:
        return ray.get_actor(name, namespace=self.settings.topology.namespace)

    def shard(self, user_id: str) -> ray.actor.ActorHandle:
        """The shard holding `user_id`'s rows."""
        return self.shards[int(shard_of([user_id], self.settings.topology.shards)[0])]

    def expected(self) -> list[str]:
        """The actors readiness waits for: every shard, router, fixed fan-out worker and
        first sender replica, the stream gateway of this replica's node (where the load
        balancer sends this node's sockets), and the Kafka ingestor when Kafka is
        configured."""
        topology = self.settings.topology
        names = [shard_name(i) for i in range(topology.shards)]
        names += [router_name(i) for i in range(topology.routers)]
        names += [fanout_name(i) for i in range(self.settings.fanout.workers)]
        names += [sender_name(c, lane) for c, lane in senders(self.settings)]
        names.append(gateway_name(ray.util.get_node_ip_address()))
        if self.settings.kafka.bootstrap:
            names.append(INGESTOR)
        return names

    async def ready(self) -> dict[str, bool]:
        """Per expected actor, whether it answers a ping within `PING_TIMEOUT_S`."""
        names = self.expected()
        up = await asyncio.gather(*[self._answers_ping(name) for name in names])
        return dict(zip(names, up, strict=True))

    async def _answers_ping(self, name: str) -> bool:
        """Any error — no such actor, a dead one, one still starting — is a no."""
        try:
            await asyncio.wait_for(self.actor(name).ping.remote(), timeout=PING_TIMEOUT_S)
            return True
        except Exception:
            return False

    async def stats(self) -> dict[str, list]:
        """Shard sizes, router counters and the counters of every sender replica up now."""
        replicas = [
            sender_name(channel, lane, replica)
            for channel, lane in senders(self.settings)
            for replica in self.running_sender_replicas(self.settings, channel, lane)
        ]
        routers = [router_name(i) for i in range(self.settings.topology.routers)]
        shards, routers, pings = await asyncio.gather(
            asyncio.gather(*[s.stats.remote() for s in self.shards]),
            asyncio.gather(*[self.actor(n).ping.remote() for n in routers]),
            asyncio.gather(*[self.actor(n).ping.remote() for n in replicas]),
        )
        return {"shards": shards, "routers": routers, "senders": pings}

    async def reload_credentials(self) -> list[dict]:
        """Every push sender replica up now looks at its credentials file again; each
        answer says what it uses after (a replica that does not answer within
        `PING_TIMEOUT_S` is listed with its error: it checks the file on its next send)."""
        names = [
            sender_name(channel, lane, replica)
            for channel, lane in senders(self.settings)
            if channel in PUSH_CHANNELS
            for replica in self.running_sender_replicas(self.settings, channel, lane)
        ]
        answers = await asyncio.gather(
            *[
                asyncio.wait_for(self.actor(n).reload_credentials.remote(), RELOAD_TIMEOUT_S)
                for n in names
            ],
            return_exceptions=True,
        )
        return [
            {"sender": name, "error": f"{type(a).__name__}: {a}"}
            if isinstance(a, BaseException)
            else {"sender": name, **a}
            for name, a in zip(names, answers, strict=True)
        ]

    async def reload_fanout_workers(self) -> list[str]:
        """The version each fan-out worker ranks with after reloading the registry's: the
        fixed pool must answer; a grown worker still waiting for a node (or just removed by
        the idle shrink) is skipped — it loads the current version when it starts."""
        fixed = [fanout_name(i) for i in range(self.settings.fanout.workers)]
        grown = [n for n in self.running_fanout_workers(self.settings) if n not in fixed]
        versions = list(await asyncio.gather(*[self.actor(n).reload.remote() for n in fixed]))
        for name in grown:
            try:
                versions.append(
                    await asyncio.wait_for(
                        self.actor(name).reload.remote(), self.settings.fanout.grow_wait_s
                    )
                )
            except (TimeoutError, ray.exceptions.RayActorError):
                pass
        return versions
