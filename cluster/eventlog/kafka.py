"""The event log on Kafka (`HERALD_EVENT_LOG=kafka`): one topic per lane, one consumer group
per lane, the same contract as the Redis Streams log in `cluster.eventlog.streams`.

Idempotency stays in Redis: `append` claims each event_id with SET NX, produces the new
events with `acks=all`, and releases the claims if the broker does not take them, so a 202
still means "durably logged" and a retry after a 503 is not mistaken for a duplicate.

Records are keyed by the event's partition key (`cluster.eventlog.base.partition_key`:
user, product), so Kafka's partitioner keeps one user's events in one partition, in order.

Reading maps Kafka's offsets onto the log contract. Each router read loop owns one
consumer and handles its batches one after another, so each partition has one sequential
reader: the group's assignment is the lease. When a rebalance takes partitions away, the
revocation waits for the batch in hand to be finished (and committed) before the group
moves on, and forgets the revoked partitions' unacked entries: their new owner re-reads
them. Entries are `<lane>/<partition>/<offset>`. `ack` commits, per partition, up to the
oldest entry that is still not acked (never auto-commit), so a router that dies leaves its
unfinished entries uncommitted and the group hands them to another member after the
rebalance: Kafka's own form of XAUTOCLAIM. Because those re-reads come unannounced, the
router treats every Kafka batch as possibly redelivered (`redelivers_unannounced`) and
skips deliveries the delivery state already holds as final. An entry that failed and stayed
unacked in a live consumer is handed out again by `claim_stale` after `claim_idle_ms`, so
poison events reach the dead-letter stream exactly as they do on Redis; so does a read of
the loop's pending entries (what it read and has not acked), which the router asks for
before anything new after an entry failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence

import polars as pl
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

from cluster.eventlog.base import (
    ENTRY_SCHEMA,
    claim_event_ids,
    partition_key,
    read_accepted_at,
    release_event_ids,
)
from cluster.eventlog.kafka_readers import LogAssignments, Reader
from cluster.settings import HeraldSettings
from cluster.state.clients import async_client
from cluster.vocabulary import LANES

log = logging.getLogger("herald.kafka_log")


def cancelled_by_caller() -> bool:
    """True when the running task itself is being cancelled; False for a CancelledError
    that leaked out of a library's own cancelled task, which must not end our loop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_quietly(client: AIOKafkaConsumer | AIOKafkaProducer, timeout_s: float = 10) -> None:
    """Stop a Kafka client that may be broken. With the broker unreachable, aiokafka's
    consumer.stop() re-raises the CancelledError of its own fetch task; left to propagate,
    it silently ended the Kafka ingestor's loop and routers' read loops after a 3 s
    connection drop, so nothing was read again. Only our own cancellation passes."""
    try:
        await asyncio.wait_for(client.stop(), timeout_s)
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        log.warning("kafka: a client's stop() raised CancelledError (ignored)")
    except Exception:  # noqa: BLE001 - a broken client may fail to stop
        pass


class KafkaEventLog:
    redelivers_unannounced = True
    leases_partitions = False

    def __init__(self, settings: HeraldSettings, client: aioredis.Redis | None = None) -> None:
        if not settings.kafka.bootstrap:
            raise ValueError("HERALD_EVENT_LOG=kafka needs HERALD_KAFKA_BOOTSTRAP")
        self.settings = settings
        self.redis = client or async_client(settings)
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._readers: dict[str, Reader] = {}
        self._owner: dict[str, str] = {}  # entry id -> consumer name
        self._probes: dict[str, AIOKafkaConsumer] = {}  # lane -> lag probe
        self._probe_lock = asyncio.Lock()

    def topic(self, lane: str) -> str:
        return f"{self.settings.kafka.log_topic_prefix}{lane}"

    def _partitions(self) -> int:
        """Partitions of a lane topic Herald creates: the Kafka override, else the log's."""
        return self.settings.kafka.log_partitions or self.settings.eventlog.log_partitions

    def group(self, lane: str) -> str:
        return f"{self.settings.kafka.log_group}.{lane}"

    async def ensure_groups(self) -> None:
        """Create the lane topics (consumer groups come into being on first join)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap)
        await admin.start()
        try:
            topics = [NewTopic(self.topic(lane), self._partitions(), 1) for lane in LANES]
            try:
                await admin.create_topics(topics)
            except TopicAlreadyExistsError:
                pass
        finally:
            await admin.close()

    # --- writing -------------------------------------------------------------------------
    async def _started_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka.bootstrap,
                    acks="all",
                    enable_idempotence=False,
                    request_timeout_ms=int(self.settings.kafka.log_produce_timeout_s * 1000),
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def append(self, events: Sequence[tuple[str, str, dict]]) -> list[bool]:
        """Log (event_id, lane, event) triples; True for each one that was new."""
        if not events:
            return []
        now = time.time()
        fresh = await claim_event_ids(self.redis, self.settings, events, now)
        new = [e for e, is_new in zip(events, fresh, strict=True) if is_new]
        try:
            await self._produce(new, now)
        except BaseException:
            # Not logged, so not accepted: forget the ids so the producer's retry is new.
            await release_event_ids(self.redis, self.settings, new)
            raise
        return fresh

    async def requeue(self, events: Sequence[tuple[str, dict, float]]) -> None:
        """Put (lane, event, accepted_at) back in the log, bypassing the idempotency check
        (dead-letter replay: the id is known, the event must run again)."""
        for lane, event, accepted_at in events:
            await self._produce([(event.get("event_id", ""), lane, event)], accepted_at)

    async def _produce(self, events: Sequence[tuple[str, str, dict]], accepted_at: float) -> None:
        if not events:
            return
        producer = await self._started_producer()
        at = repr(accepted_at).encode()
        try:
            sends = [
                await producer.send(
                    self.topic(lane),
                    json.dumps(event, separators=(",", ":"), allow_nan=False).encode(),
                    # By partition key: a user's events share a partition (and keep their
                    # order); a replay lands in the same partition as the original.
                    key=partition_key(event).encode(),
                    headers=[("at", at)],
                )
                for _, lane, event in events
            ]
            await asyncio.wait_for(
                asyncio.gather(*sends), timeout=self.settings.kafka.log_produce_timeout_s
            )
        except (KafkaError, OSError):  # OSError: TimeoutError and connection errors
            await self._discard_producer(producer)
            raise

    async def _discard_producer(self, producer: AIOKafkaProducer) -> None:
        """A producer whose sends failed is not trusted again: aiokafka producers have been
        seen to stay wedged after the broker came back (aiokafka #267, #517), which would
        stall every append. The next append starts a fresh one."""
        async with self._producer_lock:
            if self._producer is producer:
                self._producer = None
        log.warning("kafka log: produce failed; the next append uses a new producer")
        await stop_quietly(producer, timeout_s=5)

    async def accepted_at(self, event_id: str) -> float | None:
        return await read_accepted_at(self.redis, self.settings, event_id)

    # --- reading -------------------------------------------------------------------------
    async def _reader(self, lane: str, consumer: str) -> Reader:
        reader = self._readers.get(consumer)
        if reader is None:
            kafka = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka.bootstrap,
                group_id=self.group(lane),
                client_id=consumer,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await kafka.start()
            listener = LogAssignments(consumer, self.settings.eventlog.claim_idle_ms / 1000)
            kafka.subscribe([self.topic(lane)], listener=listener)
            reader = self._readers[consumer] = listener.reader = Reader(kafka)
            reader.idle.set()
        return reader

    async def read(
        self,
        lane: str,
        consumer: str,
        count: int,
        block_ms: int,
        pending: bool = False,
        partition: int | None = None,
    ) -> pl.DataFrame:
        """New records for this read loop, or (pending=True) the ones it read and has not
        acked, oldest first per partition. Uncommitted records of a dead process come back
        by themselves after the rebalance, to whoever gets their partition."""
        reader = self._readers.get(consumer)
        if reader is not None:
            reader.idle.set()  # a loop reads only once its batch in hand is done
        if pending:
            return self._pending(reader, count)
        reader = await self._reader(lane, consumer)
        try:
            batches = await reader.consumer.getmany(timeout_ms=block_ms, max_records=count)
        except KafkaError:
            await self._drop_reader(consumer)
            raise
        rows: list[tuple[str, str, float]] = []
        now = time.monotonic()
        for tp, records in batches.items():
            for record in records:
                entry_id = f"{lane}/{tp.partition}/{record.offset}"
                headers = dict(record.headers or ())
                accepted_at = float(headers.get("at", b"0") or 0)
                body = (record.value or b"").decode("utf-8", "replace")
                reader.unacked[entry_id] = (tp.partition, record.offset, body, accepted_at, now)
                self._owner[entry_id] = consumer
                rows.append((entry_id, body, accepted_at))
            reader.read_up_to[tp.partition] = records[-1].offset
        if rows:
            reader.idle.clear()
        return pl.DataFrame(rows, schema=ENTRY_SCHEMA, orient="row")

    @staticmethod
    def _pending(reader: Reader | None, count: int) -> pl.DataFrame:
        unacked = sorted((reader.unacked if reader else {}).items(), key=lambda e: e[1][:2])
        rows = [(entry_id, body, at) for entry_id, (_, _, body, at, _) in unacked[:count]]
        if rows:
            reader.idle.clear()
        return pl.DataFrame(rows, schema=ENTRY_SCHEMA, orient="row")

    async def claim_stale(
        self, lane: str, consumer: str, min_idle_ms: int, count: int, partition: int | None = None
    ) -> pl.DataFrame:
        """This loop's own entries that failed and were left unacked for min_idle_ms (entries
        of a dead consumer come back through the group rebalance instead)."""
        reader = self._readers.get(consumer)
        if reader is None:
            return pl.DataFrame(schema=ENTRY_SCHEMA)
        cutoff = time.monotonic() - min_idle_ms / 1000
        stale = [
            (entry_id, body, accepted_at)
            for entry_id, (_, _, body, accepted_at, read_at) in reader.unacked.items()
            if read_at <= cutoff
        ][:count]
        for entry_id, _, _ in stale:
            p, o, body, at, _ = reader.unacked[entry_id]
            reader.unacked[entry_id] = (p, o, body, at, time.monotonic())
        return pl.DataFrame(stale, schema=ENTRY_SCHEMA, orient="row")

    async def renew(
        self, lane: str, consumer: str, entry_ids: Sequence[str], partition: int | None = None
    ) -> None:
        """Still in work: restart the entries' claim_idle clock (a dead process's entries
        need no lease here; the group's session timeout hands them on)."""
        reader = self._readers.get(consumer)
        if reader is None:
            return
        now = time.monotonic()
        for entry_id in entry_ids:
            if entry_id in reader.unacked:
                p, o, body, at, _ = reader.unacked[entry_id]
                reader.unacked[entry_id] = (p, o, body, at, now)

    async def ack(self, lane: str, entry_ids: Sequence[str], partition: int | None = None) -> None:
        """Forget the entries and commit every partition they touched up to its oldest
        entry still in work."""
        touched: dict[str, set[int]] = {}
        for entry_id in entry_ids:
            consumer = self._owner.pop(entry_id, None)
            reader = self._readers.get(consumer) if consumer else None
            row = reader.unacked.pop(entry_id, None) if reader is not None else None
            if row is None:  # its partition was revoked meanwhile: the new owner re-reads it
                continue
            touched.setdefault(consumer, set()).add(row[0])
        for consumer, partitions in touched.items():
            await self._commit(lane, self._readers[consumer], partitions)

    async def _commit(self, lane: str, reader: Reader, partitions: set[int]) -> None:
        oldest: dict[int, int] = {}
        for partition, offset, *_ in reader.unacked.values():
            oldest[partition] = min(offset, oldest.get(partition, offset))
        assigned = {tp.partition for tp in reader.consumer.assignment()}
        offsets = {
            TopicPartition(self.topic(lane), p): OffsetAndMetadata(
                oldest.get(p, reader.read_up_to[p] + 1), ""
            )
            for p in partitions
            if p in assigned and p in reader.read_up_to
        }
        if not offsets:
            return
        try:
            await reader.consumer.commit(offsets)
        except KafkaError as exc:
            # The partition moved to another member during a rebalance: it re-reads from the
            # last commit and the delivery state skips what is already final.
            log.warning("kafka log: commit failed (%s); the new owner re-reads", exc)

    async def _drop_reader(self, consumer: str) -> None:
        reader = self._readers.pop(consumer, None)
        if reader is None:
            return
        for entry_id in reader.unacked:
            self._owner.pop(entry_id, None)
        await stop_quietly(reader.consumer)

    async def lag(self, lane: str) -> int:
        """Records not yet committed by the lane's group, over all partitions (the high
        watermark minus the group's commit; tansu, the test broker, reports a smaller end
        offset than Kafka does, so there this undercounts)."""
        # A probe that never subscribes, so it cannot trigger a rebalance; it reads the
        # group's commits through the offset-fetch API of the group coordinator. Kept per
        # lane (router 0 asks every few seconds); one that fails is closed and rebuilt.
        async with self._probe_lock:
            probe = self._probes.pop(lane, None)
            try:
                if probe is None:
                    probe = AIOKafkaConsumer(
                        bootstrap_servers=self.settings.kafka.bootstrap,
                        group_id=self.group(lane),
                        enable_auto_commit=False,
                    )
                    await probe.start()
                await probe.topics()  # fetches the cluster metadata
                partitions = probe.partitions_for_topic(self.topic(lane)) or set()
                tps = [TopicPartition(self.topic(lane), p) for p in partitions]
                ends = await probe.end_offsets(tps) if tps else {}
                committed = [await probe.committed(tp) for tp in tps]
            except BaseException:
                if probe is not None:
                    await stop_quietly(probe)
                raise
            self._probes[lane] = probe
        return sum(max(0, ends[tp] - (done or 0)) for tp, done in zip(tps, committed, strict=True))
