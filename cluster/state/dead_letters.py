"""The dead-letter stream: deliveries that ran out of attempts or can never succeed, and
events no router can process — each with its reason, kept until an operator replays or
drops them (`herald dlq list | replay`).

A delivery is kept as the retry set keeps it, without its device token
(`cluster.state.retries.UNSTORED`): a replay puts it back on the retry schedule, and the
delivery step looks the token up again by device id when it is sent."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis

from cluster import finite_json
from cluster.eventlog import open_event_log
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.clients import atomic_pipeline, sync_client
from cluster.state.retries import UNSTORED

KINDS = ("delivery", "event", "kafka")  # kafka: a record no contract could parse


def dlq_key(settings: HeraldSettings) -> str:
    return keys.dead_letters(settings)


def dead_letter_fields(kind: str, body: dict[str, Any], reason: str) -> dict[str, str]:
    """The fields of one dead-letter entry (XADD them on whatever client or pipeline); a
    delivery's without its token."""
    if kind == "delivery":
        body = {name: value for name, value in body.items() if name not in UNSTORED}
    return {"kind": kind, "body": finite_json.dumps(body, sort_keys=True), "reason": reason,
            "at": repr(time.time())}  # fmt: skip


def queue_dead_letter(
    settings: HeraldSettings, pipe: Any, kind: str, body: dict[str, Any], reason: str
) -> None:
    """Queue one dead letter on `pipe` (sync or async), so it is written with the batch
    whose outcome it is — a delivery's final status, a Kafka batch's events."""
    pipe.xadd(dlq_key(settings), dead_letter_fields(kind, body, reason))


def list_dead_letters(settings: HeraldSettings, count: int = 100) -> list[dict[str, Any]]:
    client = sync_client(settings)
    entries = client.xrange(dlq_key(settings), count=count)
    return [
        {
            "id": entry_id.decode(),
            "kind": f[b"kind"].decode(),
            "reason": f[b"reason"].decode(),
            "at": float(f[b"at"]),
            "body": json.loads(f[b"body"]),
        }
        for entry_id, f in entries
    ]


def replay_dead_letters(settings: HeraldSettings, ids: list[str] | None = None) -> int:
    """Send dead letters again: deliveries go back on the retry schedule with a fresh attempt
    budget, events back into their lane's log. Replayed entries leave the stream."""
    client = sync_client(settings)
    key = dlq_key(settings)
    entries = (
        [(i.encode(), client.xrange(key, i, i)[0][1]) for i in ids if client.xrange(key, i, i)]
        if ids
        else client.xrange(key)
    )
    # Retry set, statuses and the stream are different slots on a Redis Cluster: there the
    # batch is not one transaction. Each replayed row is the same retry member however
    # often it is added, so a crash before the XDEL only replays an entry again.
    pipe = atomic_pipeline(client)
    replayed = 0
    events: list[tuple[str, dict, float]] = []
    for entry_id, fields in entries:
        body = json.loads(fields[b"body"])
        if fields[b"kind"] == b"kafka":
            continue  # unparseable bytes: replaying cannot help; fix the producer
        if fields[b"kind"] == b"delivery":
            body.pop("attempts", None)
            for name in UNSTORED:  # an entry written before tokens were left out
                body.pop(name, None)
            body["attempt"] = 0
            member = finite_json.dumps(body, sort_keys=True)
            pipe.zadd(keys.retries(settings), {member: time.time()})
            _mark_retrying(client, pipe, keys.notification(settings, body["notification_id"]), body)
        else:
            lane = body.pop("_lane", "transactional")
            accepted_at = body.pop("_accepted_at", time.time())
            events.append((lane, body, float(accepted_at)))
        pipe.xdel(key, entry_id)
        replayed += 1
    if events:
        asyncio.run(_requeue(settings, events))
    pipe.execute()
    return replayed


async def _requeue(settings: HeraldSettings, events: list[tuple[str, dict, float]]) -> None:
    log = open_event_log(settings)
    try:
        await log.requeue(events)
    finally:
        await log.redis.aclose()


def _mark_retrying(client: redis.Redis, pipe, state_key: str, delivery: dict[str, Any]) -> None:
    """The status says the replayed delivery is moving again, so pollers wait for it."""
    field = f"d:{delivery['device_id']}"
    current = client.hget(state_key, field)
    if current is None:
        return
    record = json.loads(current)
    record.update(status="retrying", updated_at=time.time())
    pipe.hset(state_key, field, finite_json.dumps(record))
