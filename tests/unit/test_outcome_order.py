"""Outcomes on a Redis Cluster, where a pipeline is no transaction: the retries and dead
letters of a batch are queued on the pipeline that runs first, so a master that is down
while the statuses are written can never leave a `retrying` status without its retry."""

from __future__ import annotations

import json
import time
from collections import Counter

import polars as pl
import pytest
import redis.asyncio as aioredis

from actors.flows.outcomes import Outcomes
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.campaigns import CampaignStore
from cluster.state.deliveries import DeliveryState
from cluster.state.retries import RetrySchedule
from cluster.tables.deliveries import DELIVERIES, conform
from ops.embedded_redis import EmbeddedRedis


def _answered(outcome: str, device: str, attempts: int) -> pl.DataFrame:
    row = {name: "" for name in DELIVERIES.names}
    row.update(
        delivery_id=f"n1|{device}", notification_id="n1", user_id="u1", device_id=device,
        channel="inbox" if device == "inbox" else "apns", lane="transactional", data="{}",
        accepted_at=time.time(), rich=None, locale=None, template_version=None,
    )  # fmt: skip
    frame = conform(pl.DataFrame([row]).drop("token", strict=False))
    return frame.with_columns(
        outcome=pl.lit(outcome), error=pl.lit("Redis down"),
        retry_after_s=pl.lit(None, dtype=pl.Float64), acked_at=pl.lit(time.time()),
        attempt=pl.lit(attempts - 1), attempts=pl.lit(attempts),
    )  # fmt: skip


@pytest.fixture
def redis_url(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server.url
    server.stop()


async def test_retries_and_dead_letters_are_on_the_first_pipeline(redis_url):
    settings = HeraldSettings(redis_url=redis_url, retry_max_attempts=3)
    client = aioredis.Redis.from_url(redis_url)
    state = DeliveryState(settings, client)
    outcomes = Outcomes(
        settings, Counter(), state, RetrySchedule(settings, client), CampaignStore(settings, client)
    )
    answered = pl.concat(
        [_answered("retry", "inbox", 1), _answered("retry", "dev1", 3)], how="vertical_relaxed"
    )
    first, later = client.pipeline(transaction=False), client.pipeline(transaction=True)
    outcomes.record(answered, later, first)
    await first.execute()  # `later` never runs: its master was down
    assert await client.zcard(keys.retries(settings)) == 1, "the retry was not scheduled first"
    dead = await client.xrange(keys.dead_letters(settings))
    assert [json.loads(f[b"body"])["device_id"] for _, f in dead] == ["dev1"]
    assert await client.hget(keys.notification(settings, "n1"), "d:inbox") is None
    await later.execute()
    status = json.loads(await client.hget(keys.notification(settings, "n1"), "d:inbox"))
    assert status["status"] == "retrying"
    await client.aclose()
