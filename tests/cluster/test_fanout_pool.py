"""The fan-out worker pool grows with a campaign's shard plans, goes on without workers that
cannot be placed yet, and shrinks back to its fixed size once idle."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from actors.bootstrap import kill_actors
from actors.fanout_pool import FanoutPool, running_fanout_workers, start_fanout_worker
from cluster.names import fanout_name
from cluster.state.clients import async_client


@pytest.fixture
def pool_settings(stack, uid):
    """The stack's Redis and Ray, but a namespace of the test's own: its workers cannot be
    confused with the stack's."""
    settings = stack.settings.with_overrides(
        namespace=f"pool-{uid}", key_prefix=f"pool-{uid}:", fanout_workers=1,
        fanout_workers_max=3, fanout_idle_s=5.0, fanout_grow_wait_s=60.0,
    )  # fmt: skip
    yield settings
    kill_actors(settings)


def test_wanted_workers_follow_the_queue_within_bounds(pool_settings):
    pool = FanoutPool(pool_settings.with_overrides(fanout_shards_per_worker=2), None)
    assert [pool.wanted(n) for n in (0, 1, 2, 3, 4, 5, 6, 64)] == [1, 1, 1, 2, 2, 3, 3, 3]


def test_pool_grows_for_demand_and_shrinks_when_idle(pool_settings):
    async def scenario() -> tuple[list, int, list, int, list]:
        pool = FanoutPool(pool_settings, async_client(pool_settings))
        workers = await pool.workers_for(8)
        answers = await asyncio.gather(*[w.ping.remote() for w in workers])
        grown = running_fanout_workers(pool_settings)
        removed_busy = await pool.shrink_if_idle()  # just used: nothing goes
        await asyncio.sleep(pool_settings.fanout.idle_s + 0.5)
        removed_idle = await pool.shrink_if_idle()
        return answers, removed_busy, grown, removed_idle, running_fanout_workers(pool_settings)

    answers, removed_busy, grown, removed_idle, left = asyncio.run(scenario())
    assert sorted(a["worker"] for a in answers) == [0, 1, 2]
    assert grown == [fanout_name(i) for i in range(3)]
    assert removed_busy == 0
    assert removed_idle == 2
    assert left == [fanout_name(0)]


def test_campaign_goes_on_without_workers_that_cannot_be_placed(pool_settings):
    """Grown workers asking for more CPUs than the cluster has stay pending (what the
    autoscaler adds nodes for); the campaign uses the fixed pool after the grow wait."""
    settings = pool_settings.with_overrides(fanout_num_cpus=64.0, fanout_grow_wait_s=1.0)
    # The fixed worker was started (and placed) with the cluster, as bootstrap does.
    ray.get(start_fanout_worker(pool_settings, 0).ping.remote(), timeout=60)

    async def scenario() -> tuple[list, float]:
        pool = FanoutPool(settings, async_client(settings))
        started = time.monotonic()
        workers = await pool.workers_for(3)
        return await asyncio.gather(*[w.ping.remote() for w in workers]), time.monotonic() - started

    answers, waited = asyncio.run(scenario())
    assert [a["worker"] for a in answers] == [0]
    assert waited < 10
    # The pending ones exist (named, waiting for resources), so the autoscaler sees them.
    assert running_fanout_workers(settings) == [fanout_name(i) for i in range(3)]
