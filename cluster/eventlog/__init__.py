"""The durable event log: one contract (`base.EventLog`), two backends — Redis Streams
(`streams`, the default) and Kafka topics (`kafka`) — and the one place that chooses."""

from __future__ import annotations

import redis.asyncio as aioredis

from cluster.eventlog.base import ENTRY_SCHEMA, GROUP, EventLog, claim_event_ids
from cluster.eventlog.kafka import KafkaEventLog
from cluster.eventlog.streams import RedisEventLog
from cluster.settings import HeraldSettings

__all__ = ["ENTRY_SCHEMA", "GROUP", "EventLog", "claim_event_ids", "open_event_log"]


def open_event_log(settings: HeraldSettings, client: aioredis.Redis | None = None) -> EventLog:
    """The log `HERALD_EVENT_LOG` names; the one place that chooses."""
    if settings.eventlog.event_log == "kafka":
        return KafkaEventLog(settings, client)
    return RedisEventLog(settings, client)
