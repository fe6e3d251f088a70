"""Create (or find) Herald's named actors: shards, senders, routers.

Actors are detached and named, so any Serve replica, CLI or notebook finds the same ones
and they outlive the process that created them; `get_if_exists` makes this idempotent, so
every ingress replica may call it. `max_restarts=-1` brings a dead actor back, and each
rebuilds its state from Redis (shards) or its own pending log entries (routers).
"""

from __future__ import annotations

import ray

from actors.fanout_worker import FanoutWorker
from actors.kafka_ingestor import KafkaIngestor
from actors.router import EventRouter
from actors.sender import ChannelSender
from actors.user_shard import UserShard
from cluster.names import INGESTOR, fanout_name, router_name, sender_name, senders, shard_name
from cluster.settings import HeraldSettings


def _options(settings: HeraldSettings, name: str, **extra) -> dict:
    return {
        "name": name,
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": settings.actor_num_cpus,
        "max_restarts": -1,
        **extra,
    }


def shard_handle(settings: HeraldSettings, index: int) -> ray.actor.ActorHandle:
    return ray.get_actor(shard_name(index), namespace=settings.namespace)


def ensure_actors(settings: HeraldSettings, timeout_s: float = 120.0) -> None:
    """Start every actor Herald needs and wait until each answers."""
    shards = [
        ray.remote(UserShard)
        .options(**_options(settings, shard_name(i), max_task_retries=3))
        .remote(settings, i)
        for i in range(settings.shards)
    ]
    # One sender per (channel, lane): separate capacity, so marketing never delays orders.
    channel_senders = [
        ray.remote(ChannelSender)
        .options(**_options(settings, sender_name(c, lane), max_concurrency=1000))
        .remote(settings, c, lane)
        for c, lane in senders(settings)
    ]
    # Campaign planning is CPU-heavy columnar work: its own pool, off the routers' loops.
    workers = [
        ray.remote(FanoutWorker)
        .options(**_options(settings, fanout_name(i), max_concurrency=16))
        .remote(settings, i)
        for i in range(settings.fanout_workers)
    ]
    routers = [
        ray.remote(EventRouter)
        .options(**_options(settings, router_name(i), max_concurrency=1000))
        .remote(settings, i)
        for i in range(settings.routers)
    ]
    ray.get([a.ping.remote() for a in shards + channel_senders + workers], timeout=timeout_s)
    ray.get([r.start.remote() for r in routers], timeout=timeout_s)
    if settings.kafka_bootstrap:
        ray.remote(KafkaIngestor).options(
            **_options(settings, INGESTOR, max_concurrency=100)
        ).remote(settings)


def kill_actors(settings: HeraldSettings) -> None:
    """Remove every Herald actor (tests, `herald stop`); state stays in Redis."""
    names = [shard_name(i) for i in range(settings.shards)]
    names += [sender_name(c, lane) for c, lane in senders(settings)]
    names += [fanout_name(i) for i in range(settings.fanout_workers)]
    names += [router_name(i) for i in range(settings.routers)] + [INGESTOR]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=settings.namespace), no_restart=True)
        except ValueError:
            pass
