"""The router's price-drop flow against a real (embedded) Redis, without Ray: what it
records, holds for quiet hours, sends and counts, and that a redelivered event reaches no
wisher twice and counts nobody twice. The shards and senders are stood in for."""

from __future__ import annotations

import json
import time
import uuid

import polars as pl
import pytest
import redis

from actors.router import EventRouter
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.keys import frequency as freq_key
from ops.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


async def _no_loops(self) -> None:
    return None


@pytest.fixture
async def router(redis_url, tmp_path, monkeypatch):
    """A real EventRouter whose read loops never start; `sent` collects what it sends."""
    monkeypatch.setattr(EventRouter, "_start", _no_loops)
    settings = HeraldSettings(
        redis_url=redis_url,
        key_prefix=f"pdr-{uuid.uuid4().hex[:8]}:",
        data_dir=tmp_path,
        batch_max_rows=3,  # several batches: a notification is never split between two
    )
    router = EventRouter(settings, 0)
    router.sent = []

    async def send(deliveries, retry_members=None, retry_lane="transactional"):
        router.sent.append(deliveries)

    router.delivery.send = send  # every flow's sends go through the one delivery step
    yield router
    await router.redis.aclose()


def _audience(now: float) -> pl.DataFrame:
    minute = int(now // 60)
    users = ["now1", "now2", "quiet", "capped"]
    n = len(users)
    return pl.DataFrame(
        {
            "product_id": ["P"] * n,
            "user_id": users,
            "push": [True] * n,
            "inbox": [True] * n,
            "cat_price_alert": [True] * n,
            "timezone": ["UTC"] * n,
            "quiet_start_min": pl.Series([None, None, (minute - 60) % 1440, None], dtype=pl.Int16),
            "quiet_end_min": pl.Series([None, None, (minute + 60) % 1440, None], dtype=pl.Int16),
            "max_marketing_per_day": pl.Series([3, 3, 3, 1], dtype=pl.Int32),
            "device_id": [f"d-{u}" for u in users],
            "platform": ["ios"] * n,
            "token": ["a" * 64] * n,
        }
    )


DROPS = pl.DataFrame(
    {
        "event_id": ["ev"],
        "type": ["price.dropped"],
        "product_id": ["P"],
        "old_price": [10.0],
        "new_price": [8.0],
        "currency": ["EUR"],
        "title": ["Mug"],
        "category": ["home"],
        "lane": ["marketing"],
        # accepted just now: a price drop's pushes expire HERALD_PRICE_DROP_TTL_S after it
        "accepted_at": [time.time()],
    }
)


async def test_fan_out_holds_sends_counts_and_a_redelivery_repeats_nothing(router):
    now = time.time()
    audience = _audience(now)
    release = (int(now // 60) + 60) * 60.0

    async def wishers(product_ids):
        return audience

    router.shards.wishers = wishers
    settings = router.settings
    client = redis.Redis.from_url(settings.state.redis_url)
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    client.hset(freq_key(settings, day), "capped", 1)  # a campaign reached them today

    await router.price_drops.route(DROPS, redelivered=False)

    sent = pl.concat(router.sent)
    assert sorted(sent["delivery_id"]) == [
        "ev:now1|d-now1",
        "ev:now1|inbox",
        "ev:now2|d-now2",
        "ev:now2|inbox",
    ]
    assert [part["notification_id"].n_unique() for part in router.sent] == [1, 1]  # never split
    held = {
        json.loads(m)["delivery_id"]: due
        for m, due in client.zrange(keys.retries(settings, "marketing"), 0, -1, withscores=True)
    }
    assert held == {"ev:quiet|d-quiet": release, "ev:quiet|inbox": release}
    counts = {u: client.hget(freq_key(settings, day), u) for u in ("now1", "quiet", "capped")}
    assert counts == {"now1": b"1", "quiet": b"1", "capped": b"1"}
    users_key = keys.price_drop_users(settings, "ev")
    assert client.smembers(users_key) == {b"now1", b"now2", b"quiet"}
    assert 0 < client.ttl(users_key) <= settings.state.notification_ttl_s
    capped = await router.state.get("ev:capped")
    assert capped["suppressed"] == "frequency_cap" and capped["deliveries"] == []
    quiet = await router.state.get("ev:quiet")
    assert quiet["meta"]["send_after"] == release
    assert {d["status"] for d in quiet["deliveries"]} == {"queued"}
    assert router.counts["price_drop_targeted"] == 4
    assert router.counts["price_drop_selected"] == 3
    assert router.counts["price_drop_deferred"] == 1
    assert router.counts["price_drop_suppressed:frequency_cap"] == 1

    # The log hands the same event over again (a crash before its ack): nothing is sent,
    # held or counted a second time; the capped wisher stays recorded as such.
    router.sent.clear()
    await router.price_drops.route(DROPS, redelivered=True)
    assert sum(part.height for part in router.sent) == 0
    assert client.zcard(keys.retries(settings, "marketing")) == 2
    assert client.hget(freq_key(settings, day), "now1") == b"1"
    assert router.counts["price_drop_suppressed:already_sent"] == 3
    assert (await router.state.get("ev:capped"))["suppressed"] == "frequency_cap"
    client.close()
