"""How every Herald actor is placed: detached, named, restarted, spread over nodes.

Actors are detached and named, so any Serve replica, CLI or notebook finds the same ones
and they outlive the process that created them; `get_if_exists` makes creation
idempotent. `max_restarts=-1` brings a dead actor back. The SPREAD strategy puts shards,
routers, senders and fan-out workers on different nodes of a multi-node cluster, so losing
one node takes a slice of each role rather than all of one; on one node it places exactly as
the default does. Here, at the bottom, so both `actors.bootstrap` and the pools that grow
actors later (`actors.fanout_pool`, `actors.sender_pool`) use the same options.
"""

from __future__ import annotations

from cluster.settings import HeraldSettings

# Ray's scheduling strategy for every Herald actor (see the module docstring).
SCHEDULING_STRATEGY = "SPREAD"


def actor_options(settings: HeraldSettings, name: str, **extra) -> dict:
    """The options every Herald actor is created with (the fan-out pool's too)."""
    return {
        "name": name,
        "namespace": settings.topology.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": settings.topology.actor_num_cpus,
        "max_restarts": -1,
        "scheduling_strategy": SCHEDULING_STRATEGY,
        **extra,
    }
