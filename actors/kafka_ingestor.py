"""KafkaIngestor: upstream services may produce events to Kafka instead of calling HTTP.

At-least-once without auto-commit: records are validated with the same pydantic contract as
`POST /v1/events` and checked against the templates the same way (`TemplateBook.problems`:
the template exists, the variables fill it, the push fits), valid events are appended to
the durable event log (idempotent by event_id, so a record read twice is logged once),
invalid ones go to the dead-letter stream with the reason, and only then are the offsets
(`offset + 1` per partition) committed.
Reading, handing off and committing happen in one task, one batch at a time, so when a
rebalance revokes partitions (which aiokafka only does inside getmany/commit) nothing done
is left uncommitted — there is nothing for a rebalance listener to flush. A commit that
fails on a rebalance just means the batch is read again by the new owner and logged as
duplicates.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import TypeAdapter, ValidationError

from api.events import AnyEvent, Event, log_entries
from api.templates import TemplateBook
from cluster import metrics
from cluster.eventlog import open_event_log
from cluster.eventlog.kafka import cancelled_by_caller, stop_quietly
from cluster.logs import configure_logging
from cluster.settings import HeraldSettings
from cluster.state.dead_letters import queue_dead_letter

log = logging.getLogger("herald.kafka")
_EVENT = TypeAdapter(Event)
_RAW_LIMIT = 64 * 1024


def parse_record(value: bytes | None) -> tuple[list[AnyEvent], str | None]:
    """A record holds one event object or {"events": [...]}: its events, or a reason why
    it cannot be processed (the first thing wrong with it)."""
    try:
        body = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return [], "not JSON"
    items = body.get("events") if isinstance(body, dict) and "events" in body else [body]
    if not isinstance(items, list):
        return [], "'events' is not a list"
    events = []
    for i, item in enumerate(items):
        try:
            event = _EVENT.validate_python(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if not str(p).count("."))
            return [], f"event {i}: {where or 'event'}: {first['msg']}"
        events.append(event)
    return events, None


def describe(problems: list[tuple[int, str, str]]) -> str | None:
    """The dead-letter reason of a record's template problems (None: there are none), in
    `parse_record`'s words: `event <i>: <field>: <reason>`, every problem, `; ` between."""
    return "; ".join(f"event {i}: {field}: {reason}" for i, field, reason in problems) or None


class KafkaIngestor:
    """Plain class; `actors.bootstrap` wraps it with `ray.remote` when Kafka is configured."""

    def __init__(self, settings: HeraldSettings) -> None:
        configure_logging(settings)
        self.settings = settings
        self.log = open_event_log(settings)
        self.templates = TemplateBook(settings, self.log.redis)
        self.counts: Counter[str] = Counter()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def ping(self) -> dict[str, int]:
        if self._task.done():  # the loop must never end: say so instead of idling
            raise RuntimeError(f"the Kafka ingestor's loop ended: {self._task!r}")
        return dict(self.counts)

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                self.settings.kafka.topic,
                bootstrap_servers=self.settings.kafka.bootstrap,
                group_id=self.settings.kafka.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            try:
                await consumer.start()
                await self._consume(consumer)
            except asyncio.CancelledError:
                if cancelled_by_caller():
                    raise
                self._reconnect("CancelledError leaked by the Kafka client")
                await asyncio.sleep(1.0)
            except (KafkaError, OSError) as exc:
                self._reconnect(exc)
                await asyncio.sleep(1.0)
            finally:
                await stop_quietly(consumer)

    def _reconnect(self, why: object) -> None:
        self.counts["reconnects"] += 1
        log.warning("kafka: %s; reconnecting", why)

    async def _entries(self, value: bytes | None) -> tuple[list[tuple[str, str, dict]], str | None]:
        """A record's log entries, or why it goes to the dead-letter stream instead: the
        contract first, then the templates (as `POST /v1/events` checks them)."""
        events, reason = parse_record(value)
        if reason is None:
            reason = describe(await self.templates.problems(events))
        if reason is not None:
            return [], reason
        return log_entries(events, self.settings.marketing.categories), None

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(
                timeout_ms=200, max_records=self.settings.kafka.batch_max
            )
            if not batches:
                continue
            triples: list[tuple[str, str, dict]] = []
            pipe = self.log.redis.pipeline(transaction=False)
            for tp, records in batches.items():
                for record in records:
                    parsed, reason = await self._entries(record.value)
                    triples += parsed
                    if reason is not None:
                        raw = (record.value or b"")[:_RAW_LIMIT].decode("utf-8", "replace")
                        where = {"topic": tp.topic, "partition": tp.partition,
                                 "offset": record.offset, "raw": raw}  # fmt: skip
                        queue_dead_letter(self.settings, pipe, "kafka", where, reason)
                        self.counts["dead_lettered"] += 1
                        metrics.count_dead_letters("kafka", 1)
            fresh = await self.log.append(triples)
            await pipe.execute()
            if triples:
                types = [event["type"] for _, _, event in triples]
                metrics.record_ingested(types, [lane for _, lane, _ in triples], fresh)
            self.counts["accepted"] += sum(fresh)
            self.counts["duplicate"] += len(fresh) - sum(fresh)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
