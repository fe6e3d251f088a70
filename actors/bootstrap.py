"""Create (or find) Herald's named actors: shards, senders, routers.

Actors are detached and named, so any Serve replica, CLI or notebook finds the same ones
and they outlive the process that created them; `get_if_exists` makes this idempotent, so
every ingress replica may call it. `max_restarts=-1` brings a dead actor back, and each
rebuilds its state from Redis (shards) or its own pending log entries (routers).

Every actor is placed with the SPREAD strategy: on a multi-node cluster shards, routers,
senders and fan-out workers land on different nodes, so losing one node takes a slice of
each role rather than all of one, and their restarts go to the nodes left. On one node
SPREAD places exactly as the default does.
"""

from __future__ import annotations

import ray

from actors.fanout_pool import start_fanout_worker
from actors.kafka_ingestor import KafkaIngestor
from actors.router import EventRouter
from actors.sender_pool import start_sender
from actors.stream_gateway import gateway_nodes
from actors.user_shard import UserShard
from cluster.names import (
    INGESTOR,
    fanout_name,
    gateway_name,
    router_name,
    sender_name,
    senders,
    shard_name,
)
from cluster.placement import actor_options
from cluster.settings import HeraldSettings
from cluster.state import layout
from cluster.state.clients import sync_client


def shard_handle(settings: HeraldSettings, index: int) -> ray.actor.ActorHandle:
    return ray.get_actor(shard_name(index), namespace=settings.topology.namespace)


def start_fanout_workers(settings: HeraldSettings) -> list[ray.actor.ActorHandle]:
    """Create (or find) the fixed fan-out pool without waiting for it. Campaign planning is
    CPU-heavy columnar work: its own pool, off the routers' loops, each worker holding
    `fanout_num_cpus` — the demand the autoscaler adds nodes for. Workers beyond these are
    grown and removed with demand by `actors.fanout_pool`."""
    return [start_fanout_worker(settings, i) for i in range(settings.fanout.workers)]


def ensure_actors(settings: HeraldSettings, timeout_s: float = 120.0) -> None:
    """Start every actor Herald needs and wait until each answers — after moving an older
    deployment's keys to today's layout (once; `cluster.state.layout`), so no actor starts
    on a Redis whose data it cannot see."""
    client = sync_client(settings)
    try:
        layout.migrate(client, settings)
    finally:
        client.close()
    shards = [
        ray.remote(UserShard)
        .options(**actor_options(settings, shard_name(i), max_task_retries=3))
        .remote(settings, i)
        for i in range(settings.topology.shards)
    ]
    # One sender per (channel, lane): separate capacity, so marketing never delays orders.
    # Push senders grow more replicas with demand (`actors.sender_pool`).
    channel_senders = [start_sender(settings, c, lane) for c, lane in senders(settings)]
    workers = start_fanout_workers(settings)
    routers = [
        ray.remote(EventRouter)
        .options(**actor_options(settings, router_name(i), max_concurrency=1000))
        .remote(settings, i)
        for i in range(settings.topology.routers)
    ]
    ray.get([a.ping.remote() for a in shards + channel_senders + workers], timeout=timeout_s)
    ray.get([r.start.remote() for r in routers], timeout=timeout_s)
    if settings.kafka.bootstrap:
        ray.remote(KafkaIngestor).options(
            **actor_options(settings, INGESTOR, max_concurrency=100)
        ).remote(settings)


def kill_actors(settings: HeraldSettings) -> None:
    """Remove every Herald actor (tests, `herald stop`); state stays in Redis."""
    names = [shard_name(i) for i in range(settings.topology.shards)]
    names += [
        sender_name(c, lane, r)
        for c, lane in senders(settings)
        for r in range(settings.senders.replicas_max)
    ]
    names += [fanout_name(i) for i in range(settings.pool_max_workers)]
    names += [router_name(i) for i in range(settings.topology.routers)] + [INGESTOR]
    names += [gateway_name(address) for address in gateway_nodes()]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=settings.topology.namespace), no_restart=True)
        except ValueError:
            pass
