"""An upgraded deployment keeps its data: keys written in the layout before hash tags are
moved to today's names once, at bootstrap, and nothing written since is overwritten."""

from __future__ import annotations

import uuid

import pytest
import redis

from cluster.settings import HeraldSettings
from cluster.state import keys, layout
from ops.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def test_old_keys_move_to_todays_names_once(redis_url, tmp_path):
    prefix = f"lay-{uuid.uuid4().hex[:8]}:"
    settings = HeraldSettings(redis_url=redis_url, key_prefix=prefix, data_dir=tmp_path)
    client = redis.Redis.from_url(redis_url)
    # what an older Herald wrote (its spellings, not today's functions)
    client.hset(prefix + "ntf:ev-1", "meta", "{}")
    client.zadd(prefix + "retry", {"r1": 1.0})
    client.zadd(prefix + "retry:marketing", {"r2": 2.0})
    client.xadd(prefix + "dlq", {"kind": "delivery"})
    client.hset(prefix + "campaign:c1", "state", "done")
    client.sadd(prefix + "campaign:c1:users", "u1")
    client.zadd(prefix + "campaigns:due", {"c1": 3.0})
    client.hset(prefix + "shard:0:devices", "d1", "{}")
    client.hset(prefix + "devices:owner", "d1", "u1")
    client.zadd(prefix + "inbox:u:1", {"n1": 1.0})  # a user id with a colon
    client.hset(prefix + "inbox:u:1:items", "n1", "{}")
    client.hset(prefix + "freq:2026-12-01", "u1", 1)
    client.set(prefix + "stream:transactional", "left for the log")  # not the layout's
    # written under today's name already: kept, the old one left for an operator
    client.hset(keys.device_owners(settings), "d2", "u2")

    assert layout.migrate(client, settings) == {"renamed": 11, "kept": 1}
    assert client.hget(keys.notification(settings, "ev-1"), "meta") == b"{}"
    assert client.zscore(keys.retries(settings), "r1") == 1.0
    assert client.zscore(keys.retries(settings, "marketing"), "r2") == 2.0
    assert client.xlen(keys.dead_letters(settings)) == 1
    assert client.hget(keys.campaign(settings, "c1"), "state") == b"done"
    assert client.sismember(keys.campaign(settings, "c1", "users"), "u1")
    assert client.zscore(keys.campaigns_due(settings), "c1") == 3.0
    assert client.hget(keys.shard_table(settings, 0, "devices"), "d1") == b"{}"
    assert client.zscore(keys.inbox(settings, "u:1"), "n1") == 1.0
    assert client.hget(keys.inbox_items(settings, "u:1"), "n1") == b"{}"
    assert client.hget(keys.frequency(settings, "2026-12-01"), "u1") == b"1"
    assert client.hget(keys.device_owners(settings), "d2") == b"u2"
    assert client.hget(prefix + "devices:owner", "d1") == b"u1"
    assert client.get(prefix + "stream:transactional") == b"left for the log"
    # a second start scans nothing
    client.hset(prefix + "ntf:ev-2", "meta", "{}")
    assert layout.migrate(client, settings) == {"renamed": 0, "kept": 0}
