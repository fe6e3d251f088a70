"""The event log's contract, shared by its two backends (`streams`, `kafka`).

An event is accepted (202) only once it is in the log, and stays owed to the consumer group
until a router acks it after recording its deliveries: a crash between read and ack means
the entry is read again, never lost.

Each lane's log is `HERALD_LOG_PARTITIONS` partitions, and an event's partition follows from
its *partition key*: the user for an order update and for a `notification.requested` to one
user, the product for a price drop, the event itself otherwise. One consumer reads a
partition at a time, so one user's events are handled in the order they were accepted.
`partition_key` (a logged event) and `partition_key_column` (a frame of them, for a batch's
waves) must agree; `tests/unit/test_partitions.py` holds them to it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

GROUP = "routers"

ENTRY_SCHEMA = {"entry_id": pl.String, "body": pl.String, "accepted_at": pl.Float64}


def partition_key(event: dict) -> str:
    """What keeps order for this event: its user, its product, or (nothing to keep) its id."""
    kind, key = event.get("type"), None
    if kind == "order.updated":
        key = event.get("user_id")
    elif kind == "notification.requested":
        users = event.get("user_ids")
        key = users[0] if isinstance(users, list) and len(users) == 1 else None
    elif kind == "price.dropped":
        key = event.get("product_id")
    return str(key) if key is not None else str(event.get("event_id", ""))


def partition_key_column(events: pl.DataFrame) -> pl.Expr:
    """`partition_key` over a decoded batch (columns type, user_id, user_ids, product_id,
    event_id, entry_id; absent ones count as null); an entry no event could be decoded from
    is its own key, so it never holds back anyone else's."""

    def col(name: str, dtype: pl.DataType = pl.String) -> pl.Expr:
        return pl.col(name) if name in events.columns else pl.lit(None, dtype=dtype)

    users = col("user_ids", pl.List(pl.String))
    return (
        pl.when(col("type") == "order.updated")
        .then(col("user_id"))
        .when((col("type") == "notification.requested") & (users.list.len() == 1))
        .then(users.list.first())
        .when(col("type") == "price.dropped")
        .then(col("product_id"))
        .otherwise(None)
        .fill_null(col("event_id"))
        .fill_null(col("entry_id"))
        .alias("partition_key")
    )


def partition_of(key: str, partitions: int) -> int:
    """A stable partition for a key: crc32 is the same in every process and Python version
    (`hash()` is salted per process), so ingress replicas and routers all agree."""
    return zlib.crc32(key.encode()) % partitions


def partition_for(settings: HeraldSettings, event: dict) -> int:
    return partition_of(partition_key(event), settings.eventlog.log_partitions)


class EventLog(Protocol):
    """What ingress, routers and the Kafka ingestor need of a log, whichever backend.

    Entries come back as columns `ENTRY_SCHEMA`; an entry stays owed to the consumer group
    until acked, so a crash between read and ack means the entry is read again. `partition`
    names the Redis stream read or acked (None: the pre-partition stream of the lane);
    Kafka ignores it (its group assigns partitions, entry ids carry theirs)."""

    redis: aioredis.Redis
    # True when the backend can hand out an entry again without saying so (a rebalance):
    # the router then checks every batch against the delivery state, not just re-reads.
    redelivers_unannounced: bool
    # True when routers must lease partitions themselves (Redis); False when the backend's
    # consumer group assigns them (Kafka).
    leases_partitions: bool

    async def ensure_groups(self) -> None: ...
    async def append(self, events: Sequence[tuple[str, str, dict]]) -> list[bool]: ...
    async def requeue(self, events: Sequence[tuple[str, dict, float]]) -> None: ...
    async def accepted_at(self, event_id: str) -> float | None: ...
    async def read(
        self,
        lane: str,
        consumer: str,
        count: int,
        block_ms: int,
        pending: bool = False,
        partition: int | None = None,
    ) -> pl.DataFrame: ...
    async def claim_stale(
        self, lane: str, consumer: str, min_idle_ms: int, count: int, partition: int | None = None
    ) -> pl.DataFrame: ...
    async def renew(
        self, lane: str, consumer: str, entry_ids: Sequence[str], partition: int | None = None
    ) -> None:
        """Tell the group these entries are still in work (resets their claim_idle clock)."""

    async def ack(
        self, lane: str, entry_ids: Sequence[str], partition: int | None = None
    ) -> None: ...
    async def lag(self, lane: str) -> int: ...


def idempotency_key(settings: HeraldSettings, event_id: str, lane: str, event: dict) -> str:
    return keys.event(settings, event_id, lane, partition_for(settings, event))


async def claim_event_ids(
    redis: aioredis.Redis,
    settings: HeraldSettings,
    events: Sequence[tuple[str, str, dict]],
    now: float,
) -> list[bool]:
    """Remember each (event_id, lane, event)'s id for the idempotency window, in its
    partition's slot, plus the untagged `accepted:` key the status endpoint reads; True
    where the id was not known. One pipeline of single-key commands (any slot each)."""
    window = settings.state.idempotency_window_s
    pipe = redis.pipeline(transaction=False)
    for event_id, lane, event in events:
        pipe.set(idempotency_key(settings, event_id, lane, event), repr(now), nx=True, ex=window)
    for event_id, _, _ in events:
        pipe.set(keys.accepted(settings, event_id), repr(now), nx=True, ex=window)
    flags = await pipe.execute()
    return [bool(flag) for flag in flags[: len(events)]]


async def release_event_ids(
    redis: aioredis.Redis, settings: HeraldSettings, events: Sequence[tuple[str, str, dict]]
) -> None:
    """Forget ids claimed for events the log did not take, so the producer's retry is new.
    One DEL per key (they live in different slots)."""
    pipe = redis.pipeline(transaction=False)
    for event_id, lane, event in events:
        pipe.delete(idempotency_key(settings, event_id, lane, event))
        pipe.delete(keys.accepted(settings, event_id))
    await pipe.execute()


async def read_accepted_at(
    redis: aioredis.Redis, settings: HeraldSettings, event_id: str
) -> float | None:
    """The `accepted:` key, else the untagged idempotency key an older deployment wrote."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(keys.accepted(settings, event_id))
    pipe.get(keys.event(settings, event_id))
    found = [v for v in await pipe.execute() if v is not None]
    return float(found[0]) if found else None
