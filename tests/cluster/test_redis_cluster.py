"""The stores on a real 3-master Redis Cluster answer exactly as on one Redis: batches over
many users and orders split by slot, scripts queued on cluster pipelines (and run again
when a master forgot them), transactions within one slot, pub/sub across nodes."""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import polars as pl
import pytest
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state.campaigns import CampaignStore
from cluster.state.clients import HeraldRedisCluster, async_client, pubsub_client, sync_client
from cluster.state.frequency import FrequencyCounters
from cluster.state.inbox import InboxStore, inbox_keys
from cluster.state.orders import OrderLatest
from cluster.state.templates import TemplateStore
from ops.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="module")
def single_url(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("single-redis")).start()
    yield server.url
    server.stop()


def settings_for(url: str, cluster: bool) -> HeraldSettings:
    return HeraldSettings(
        redis_url=url, redis_cluster=cluster, key_prefix=f"rc-{uuid.uuid4().hex[:8]}:"
    )


@pytest.fixture
async def on_cluster(redis_cluster):
    settings = settings_for(redis_cluster.url, cluster=True)
    client = async_client(settings)
    assert isinstance(client, HeraldRedisCluster)
    yield settings, client
    await client.aclose()


def order_updates(seed: int) -> pl.DataFrame:
    """300 updates of 60 orders, with sequence or occurred_at, shuffled out of order."""
    rng = random.Random(seed)
    rows = []
    for i in range(300):
        order = f"o-{i % 60}"
        rows.append({
            "order_id": order, "event_id": f"e-{i}",
            "sequence": rng.randint(1, 50) if i % 3 else None,
            "occurred_at": 1_700_000_000.0 + rng.random() * 100 if i % 3 == 0 else None,
            "accepted_at": 1_700_000_100.0 + i,
        })  # fmt: skip
    rng.shuffle(rows)
    return pl.DataFrame(rows, schema_overrides={"sequence": pl.Int64})


async def test_latest_status_per_slot_equals_one_call(on_cluster, single_url):
    """The latest-status script split by slot on the cluster finds the very same stale
    updates as one call over the whole batch on one Redis, batch after batch."""
    settings, client = on_cluster
    single_settings = settings_for(single_url, cluster=False)
    single = aioredis.Redis.from_url(single_url)
    on_one, on_many = OrderLatest(single_settings, single), OrderLatest(settings, client)
    for seed in range(3):
        batch = order_updates(seed)
        expected = await on_one.stale(batch)
        assert (await on_many.stale(batch)).to_list() == expected.to_list()
        assert 0 < expected.sum() < batch.height
    await single.aclose()


async def test_inbox_scripts_on_a_cluster_pipeline_survive_a_flushed_script_cache(
    on_cluster, redis_cluster
):
    """InboxStore.add queues one script per item on a pipeline over users on every master;
    after every master's script cache is flushed (as by a restart) it still runs, once."""
    settings, client = on_cluster
    store = InboxStore(settings, client)
    users = [f"u{i}" for i in range(40)]

    def items(tag: str) -> pl.DataFrame:
        return pl.DataFrame({
            "user_id": users, "notification_id": [f"{tag}-{u}" for u in users],
            "created_at": [1.0] * len(users),
            "item": [json.dumps({"notification_id": f"{tag}-{u}"}) for u in users],
        })  # fmt: skip

    await store.add(items("a"))
    sync = sync_client(settings)
    sync.script_flush()  # on every master (redis-py sends it to all primaries)
    await store.add(items("b"))
    await store.add(items("b"))  # a redelivery: refused by the script
    for user in users:
        assert sync.zcard(inbox_keys(settings, user)[0]) == 2
    sync.close()


async def test_pubsub_reaches_a_subscriber_on_another_node(on_cluster, redis_cluster):
    """The inbox script PUBLISHes on the master of the user's slot; a subscriber on the
    pub/sub client (connected to the first node) hears it for users on every master."""
    settings, client = on_cluster
    store = InboxStore(settings, client)
    users = [f"p{i}" for i in range(12)]
    assert len({redis_cluster.node_of(inbox_keys(settings, u)[0]) for u in users}) == 3
    listener = pubsub_client(settings)
    pubsub = listener.pubsub()
    await pubsub.subscribe(*[inbox_keys(settings, u)[3] for u in users])
    await store.add(
        pl.DataFrame(
            {
                "user_id": users,
                "notification_id": users,
                "created_at": [1.0] * 12,
                "item": [json.dumps({"notification_id": u}) for u in users],
            }
        )  # fmt: skip
    )
    heard = set()
    for _ in range(60):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            heard.add(json.loads(message["data"])["item"]["notification_id"])
        if heard == set(users):
            break
    assert heard == set(users)
    await pubsub.aclose()
    await listener.aclose()


async def test_campaign_scripts_and_transactions_on_a_cluster(on_cluster):
    settings, client = on_cluster
    store = CampaignStore(settings, client)
    spec = {"campaign_id": "spring", "send_at": None}
    assert (await store.create(spec))[0]
    assert not (await store.create(spec))[0]
    assert await store.take_due() == ["spring"]
    version, resumed = await store.start("spring", "m1")
    assert (version, resumed) == ("m1", False)
    await store.finish("spring")
    assert await store.state("spring") == "done"
    assert (await store.create({"campaign_id": "autumn"}))[0]
    assert await store.cancel("autumn") == "cancelled"
    assert await store.cancelled(["autumn", "spring"]) == {"autumn"}


async def test_templates_and_frequency_on_a_cluster(on_cluster):
    settings, client = on_cluster
    templates = TemplateStore(settings, client)
    assert await templates.put({"template_id": "t", "locales": {}}) == 1
    generation, stored = await templates.snapshot()
    assert generation == 1 and stored[0]["version"] == 1
    counters = FrequencyCounters(settings, client)
    users = pl.DataFrame({"user_id": ["a", "b", "a"], "local_day": ["d1", "d1", "d2"]})
    pipe = client.pipeline(transaction=False)
    await counters.count(users, pipe)
    await pipe.execute()
    got = await counters.sent_today(pl.DataFrame({"user_id": ["a", "b"], "day": ["d1", "d1"]}))
    assert got["count"].to_list() == [1, 1]


async def test_concurrent_batches_share_one_client(on_cluster):
    """Many pipelines in flight on one client (routers run loops concurrently)."""
    settings, client = on_cluster
    store = OrderLatest(settings, client)
    answers = await asyncio.gather(*(store.stale(order_updates(s)) for s in range(4)))
    assert all(a.len() == 300 for a in answers)


async def test_a_slot_migrating_mid_stream_loses_nothing(on_cluster, redis_cluster):
    """A user's slot moves to another master, its keys MIGRATEd ten at a time (clients get
    ASK, then MOVED), while batches keep adding to that user's inbox. A batch that fails
    meanwhile is retried, as a router retries an entry: every item arrives, none twice."""
    settings, client = on_cluster
    store = InboxStore(settings, client)
    user = "mover"
    zset = inbox_keys(settings, user)[0]
    sync = sync_client(settings)
    tag = zset[: zset.index("}") + 1]
    for start in range(0, 3000, 500):  # filler in the slot, so the move takes a while
        sync.mset({f"{tag}:filler:{i}": i for i in range(start, start + 500)})
    source = redis_cluster.node_of(zset)
    mover = asyncio.create_task(
        asyncio.to_thread(redis_cluster.migrate_slot, zset, (source + 1) % 3)
    )
    retried = 0
    for batch in range(50):
        ids = [f"m{batch}-{k}" for k in range(3)]
        items = pl.DataFrame({
            "user_id": [user] * 3, "notification_id": ids, "created_at": [float(batch)] * 3,
            "item": [json.dumps({"notification_id": i}) for i in ids],
        })  # fmt: skip
        for _ in range(20):
            try:
                await store.add(items)
                break
            except Exception:  # noqa: BLE001 - TRYAGAIN while the user's keys are split
                retried += 1
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.01)
    await mover
    assert redis_cluster.node_of(zset) == (source + 1) % 3
    members = sync.zrange(zset, 0, -1)
    assert len(members) == len(set(members)) == 150, retried
    sync.close()
