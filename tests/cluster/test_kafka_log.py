"""The event log on Kafka (HERALD_EVENT_LOG=kafka) keeps the Redis Streams log's contract,
against a real Kafka-protocol broker (tansu) and the session's real Redis."""

from __future__ import annotations

import asyncio

import pytest

from cluster.eventlog.base import partition_for
from cluster.eventlog.kafka import KafkaEventLog
from cluster.settings import HeraldSettings


def order(event_id: str) -> tuple[str, str, dict]:
    event = {"event_id": event_id, "type": "order.updated", "user_id": "u1",
             "order_id": "o1", "status": "shipped"}  # fmt: skip
    return event_id, "transactional", event


@pytest.fixture
def settings(stack, kafka, uid) -> HeraldSettings:
    return stack.settings.with_overrides(
        event_log="kafka",
        kafka_bootstrap=kafka.bootstrap,
        key_prefix=f"kl-{uid}:",
        kafka_log_topic_prefix=f"kl-{uid}.",
        kafka_log_group=f"kl-{uid}",
        kafka_log_partitions=2,
        kafka_log_produce_timeout_s=3,
    )


async def read_all(log: KafkaEventLog, consumer: str, want: int, timeout_s: float = 30):
    """Read until `want` entries came (a fresh group member first waits for its partitions)."""
    rows = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(rows) < want and asyncio.get_running_loop().time() < deadline:
        frame = await log.read("transactional", consumer, 100, 200)
        rows += frame.rows(named=True)
    return rows


async def close(log: KafkaEventLog) -> None:
    for consumer in list(log._readers):
        await log._drop_reader(consumer)
    if log._producer is not None:
        await log._producer.stop()
    for probe in log._probes.values():
        await probe.stop()
    await log.redis.aclose()


def test_append_read_ack_and_idempotency(settings, uid):
    async def scenario():
        log = KafkaEventLog(settings)
        await log.ensure_groups()
        assert await log.append([order(f"a{i}") for i in range(10)]) == [True] * 10
        assert await log.append([order("a3"), order("a10")]) == [False, True]
        assert await log.accepted_at("a3") is not None
        rows = await read_all(log, "c1", 11)
        assert sorted(r["body"].split('"event_id":"')[1].split('"')[0] for r in rows) == sorted(
            f"a{i}" for i in range(11)
        )
        assert all(r["accepted_at"] > 0 for r in rows)
        # Read but not acked: still the lane's backlog (what the sender pool sizes by); the
        # probe is kept between calls. (tansu reports low end offsets, so only > 0 here.)
        assert await log.lag("transactional") > 0
        assert await log.lag("transactional") > 0
        await log.ack("transactional", [r["entry_id"] for r in rows])
        assert await log.lag("transactional") == 0
        assert await log.lag("marketing") == 0
        await close(log)

        # A new member of the group finds nothing left: everything was committed.
        again = KafkaEventLog(settings)
        assert await read_all(again, "c2", 1, timeout_s=8) == []
        await close(again)

    asyncio.run(scenario())


def test_unacked_entries_come_back_after_a_crash(settings):
    async def scenario():
        log = KafkaEventLog(settings)
        await log.ensure_groups()
        await log.append([order(f"b{i}") for i in range(6)])
        rows = await read_all(log, "c1", 6)
        # The router finished four of them, then died without acking the other two.
        acked = rows[:4]
        await log.ack("transactional", [r["entry_id"] for r in acked])
        await close(log)

        survivor = KafkaEventLog(settings)
        back = await read_all(survivor, "c2", 2)
        ids = {r["entry_id"] for r in back}
        # Per partition, everything from the oldest unacked entry on is read again.
        assert {r["entry_id"] for r in rows[4:]} <= ids
        await survivor.ack("transactional", list(ids))
        await close(survivor)

    asyncio.run(scenario())


def test_a_failed_entry_is_handed_out_again_after_claim_idle(settings):
    async def scenario():
        log = KafkaEventLog(settings)
        await log.ensure_groups()
        await log.append([order("p1")])
        [row] = await read_all(log, "c1", 1)
        assert (await log.claim_stale("transactional", "c1", 60_000, 10)).height == 0
        await asyncio.sleep(0.3)
        stale = await log.claim_stale("transactional", "c1", 200, 10)
        assert stale["entry_id"].to_list() == [row["entry_id"]]
        # A router still working on it renews the lease: not stale any more.
        await asyncio.sleep(0.3)
        await log.renew("transactional", "c1", [row["entry_id"]])
        assert (await log.claim_stale("transactional", "c1", 200, 10)).height == 0
        await log.ack("transactional", [row["entry_id"]])
        assert (await log.claim_stale("transactional", "c1", 0, 10)).height == 0
        await close(log)

    asyncio.run(scenario())


def test_an_event_the_broker_did_not_take_is_not_remembered(settings, kafka):
    async def scenario():
        log = KafkaEventLog(settings)
        await log.ensure_groups()
        await log.append([order("warm")])  # the producer is connected
        kafka.proxy.cut()
        await asyncio.sleep(0.3)
        try:
            with pytest.raises(Exception):  # noqa: B017 - any broker error is a 503 upstream
                await log.append([order("lost-1")])
        finally:
            kafka.proxy.restore()
        assert await log.accepted_at("lost-1") is None
        await close(log)
        # The producer's retry of the same event is new, not a duplicate.
        retry = KafkaEventLog(settings)
        assert await retry.append([order("lost-1")]) == [True]
        await close(retry)

    asyncio.run(scenario())


def test_redis_log_lease_renewal_keeps_peers_off(stack, uid):
    """The same lease contract on the Redis Streams log: renewed entries are not claimed."""
    from cluster.eventlog import RedisEventLog

    async def scenario():
        log = RedisEventLog(stack.settings.with_overrides(key_prefix=f"rl-{uid}:"))
        await log.ensure_groups()
        await log.append([order("r1"), order("r2")])
        # Both are user u1's: one partition, in order.
        lane, p = "transactional", partition_for(log.settings, order("r1")[2])
        rows = await log.read(lane, "c1", 10, 100, partition=p)
        assert [b.split('"event_id":"')[1][:2] for b in rows["body"]] == ["r1", "r2"]
        await asyncio.sleep(0.3)
        await log.renew(lane, "c1", [rows["entry_id"][0]], partition=p)
        stolen = await log.claim_stale(lane, "c2", 250, 10, partition=p)
        assert stolen["entry_id"].to_list() == [rows["entry_id"][1]]
        await log.ack(lane, rows["entry_id"].to_list(), partition=p)
        await log.redis.aclose()

    asyncio.run(scenario())


def test_a_reader_dropped_while_the_broker_is_unreachable_reads_again(settings, kafka):
    """A read loop's consumer torn down during a connection drop: with the broker
    unreachable aiokafka's stop() raises its fetch task's CancelledError, which once ended
    the router's read loop for good. Dropping must return, and the loop read on after."""

    async def scenario():
        log = KafkaEventLog(settings)
        await log.ensure_groups()
        await log.append([order(f"d{i}") for i in range(4)])
        first = await read_all(log, "c1", 4)
        await log.ack("transactional", [r["entry_id"] for r in first])
        kafka.proxy.cut()
        try:
            await asyncio.sleep(0.5)  # the consumer's fetches now fail
            await log._drop_reader("c1")  # what a read that raised KafkaError does
        finally:
            kafka.proxy.restore()
        assert not asyncio.current_task().cancelling()
        await log.append([order(f"e{i}") for i in range(3)])
        again = await read_all(log, "c1", 3)
        assert sorted(r["body"].split('"event_id":"')[1][:2] for r in again) == ["e0", "e1", "e2"]
        await close(log)

    asyncio.run(scenario())
