"""Slots of key columns equal Redis's, and the clients pick Redis Cluster when told to."""

from __future__ import annotations

import random
import string

import polars as pl
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from cluster.settings import HeraldSettings
from cluster.state import clients
from cluster.state.slots import key_slots, slot_groups


def test_key_slots_equal_redis_for_any_key():
    rng = random.Random(15)
    alphabet = string.ascii_letters + "{}:é漢 \n"
    keys = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(5000)]
    keys += ["", "{", "}{", "{}", "{}a{b}", "{{a}}", "a{b}c{d}", "herald:{u:1}:inbox"]
    got = key_slots(pl.Series(keys, dtype=pl.String)).to_list()
    assert got == [key_slot(k.encode()) for k in keys]


def test_keys_with_one_tag_share_a_slot():
    slots = key_slots(pl.Series(["p:{o:1}:latest", "q:{o:1}", "{o:1}x"])).unique()
    assert slots.len() == 1


def test_one_group_on_one_redis_one_per_slot_on_a_cluster():
    keys = pl.Series([f"herald:{{o:{i}}}:latest" for i in range(50)])
    single = aioredis.Redis()
    assert slot_groups(single, keys).unique().to_list() == [0]
    cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)  # not connected: lazy
    assert slot_groups(cluster, keys).to_list() == key_slots(keys).to_list()


def settings(url: str, cluster: bool = False) -> HeraldSettings:
    return HeraldSettings(redis_url=url, redis_cluster=cluster)


def test_cluster_by_flag_or_by_scheme():
    assert not clients.is_cluster(settings("redis://127.0.0.1:6379/0"))
    assert clients.is_cluster(settings("redis://127.0.0.1:6379/0", cluster=True))
    assert clients.is_cluster(settings("redis+cluster://127.0.0.1:7000"))
    assert clients.is_cluster(settings("rediss+cluster://10.0.0.1:7000"))


def test_a_cluster_url_names_its_startup_nodes():
    url, nodes = clients._nodes(settings("rediss+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001/0"))
    assert url == "rediss://u:pw@10.0.0.1:7000/0"
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]


def test_clients_are_cluster_clients_on_a_cluster():
    one = settings("redis://127.0.0.1:6379/0")
    many = settings("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert type(clients.async_client(one)) is aioredis.Redis
    assert isinstance(clients.async_client(many), clients.HeraldRedisCluster)
    assert type(clients.sync_client(one)) is redis.Redis  # a sync cluster client connects
    assert clients.atomic_pipeline(clients.async_client(one)).is_transaction
    # The pub/sub client is a plain one, to the first node, on a cluster too.
    plain = clients.pubsub_client(many)
    assert type(plain) is aioredis.Redis
    assert plain.connection_pool.connection_kwargs["port"] == 7000
