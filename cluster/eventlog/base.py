"""The event log's contract, shared by its two backends (`streams`, `kafka`).

An event is accepted (202) only once it is in the log, and stays owed to the consumer group
until a router acks it after recording its deliveries: a crash between read and ack means
the entry is read again, never lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

GROUP = "routers"

ENTRY_SCHEMA = {"entry_id": pl.String, "body": pl.String, "accepted_at": pl.Float64}


class EventLog(Protocol):
    """What ingress, routers and the Kafka ingestor need of a log, whichever backend.

    Entries come back as columns `ENTRY_SCHEMA`; an entry stays owed to the consumer group
    until acked, so a crash between read and ack means the entry is read again."""

    redis: aioredis.Redis
    # True when the backend can hand out an entry again without saying so (a rebalance):
    # the router then checks every batch against the delivery state, not just re-reads.
    redelivers_unannounced: bool

    async def ensure_groups(self) -> None: ...
    async def append(self, events: Sequence[tuple[str, str, dict]]) -> list[bool]: ...
    async def requeue(self, events: Sequence[tuple[str, dict, float]]) -> None: ...
    async def accepted_at(self, event_id: str) -> float | None: ...
    async def read(
        self, lane: str, consumer: str, count: int, block_ms: int, pending: bool = False
    ) -> pl.DataFrame: ...
    async def claim_stale(
        self, lane: str, consumer: str, min_idle_ms: int, count: int
    ) -> pl.DataFrame: ...
    async def renew(self, lane: str, consumer: str, entry_ids: Sequence[str]) -> None:
        """Tell the group these entries are still in work (resets their claim_idle clock)."""

    async def ack(self, lane: str, entry_ids: Sequence[str]) -> None: ...
    async def lag(self, lane: str) -> int: ...


async def claim_event_ids(
    redis: aioredis.Redis, settings: HeraldSettings, event_ids: Sequence[str], now: float
) -> list[bool]:
    """Remember each event_id for the idempotency window; True where it was not known."""
    pipe = redis.pipeline(transaction=False)
    for event_id in event_ids:
        pipe.set(
            keys.event(settings, event_id),
            repr(now),
            nx=True,
            ex=settings.state.idempotency_window_s,
        )
    return [bool(flag) for flag in await pipe.execute()]
