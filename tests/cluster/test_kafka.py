"""Kafka ingestion against a real Kafka-protocol broker (tansu): events produced upstream
are delivered like HTTP ones, garbage is dead-lettered, a dropped connection loses nothing."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from cluster.state.dead_letters import list_dead_letters
from ops.demo import wait_final


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[producer.send_and_wait(topic, v) for v in values])
    finally:
        await producer.stop()


def order(event_id: str, user: str) -> dict:
    return {"event_id": event_id, "type": "order.updated", "user_id": user,
            "order_id": "k1", "status": "shipped"}  # fmt: skip


@pytest.mark.eventlog
def test_kafka_events_are_delivered_and_garbage_dead_lettered(stack, api, kafka, uid):
    good = [order(f"k-{uid}-{i}", f"ku-{uid}-{i}") for i in range(20)]
    batch = {"events": [order(f"k-{uid}-b{i}", f"ku-{uid}-b") for i in range(5)]}
    values = [json.dumps(e).encode() for e in good] + [json.dumps(batch).encode()]
    values += [b"\xff not json " + uid.encode(), json.dumps({"type": "order.updated"}).encode()]
    values += [json.dumps(good[0]).encode()]  # a replay: logged once
    asyncio.run(produce(kafka.bootstrap, stack.settings.kafka.topic, values))

    ids = [e["event_id"] for e in good] + [e["event_id"] for e in batch["events"]]
    statuses = wait_final(api, ids, timeout_s=60)
    assert {s["state"] for s in statuses.values()} == {"delivered"}, statuses
    inbox = api.get(f"/v1/users/ku-{uid}-0/inbox").json()["items"]
    assert [i["notification_id"] for i in inbox] == [f"k-{uid}-0"]

    deadline = time.monotonic() + 30
    while True:
        dead = [d for d in list_dead_letters(stack.settings, 10_000) if d["kind"] == "kafka"]
        reasons = {
            d["reason"] for d in dead if uid in d["body"]["raw"] or "event_id" in d["reason"]
        }
        if "not JSON" in reasons or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "not JSON" in reasons
    assert any("event_id" in d["reason"] for d in dead)


def _dead_letter_reasons(settings, marker: str, want: int, timeout_s: float = 30) -> list[str]:
    """Reasons of the Kafka dead letters whose raw record holds `marker`, once `want` are in."""
    deadline = time.monotonic() + timeout_s
    while True:
        dead = [d for d in list_dead_letters(settings, 10_000) if d["kind"] == "kafka"]
        reasons = [d["reason"] for d in dead if marker in d["body"]["raw"]]
        if len(reasons) >= want or time.monotonic() > deadline:
            return reasons
        time.sleep(0.5)


@pytest.mark.eventlog
def test_kafka_notification_requests_are_checked_against_their_templates(stack, api, kafka, uid):
    """The door's template check holds for Kafka too: a request whose variables fill its
    template is logged, one that would leave a hole is dead-lettered with the reason."""

    def request(event_id: str, **fields) -> bytes:
        event = {"event_id": event_id, "type": "notification.requested", "category": "loyalty",
                 "user_ids": [f"ku-{uid}"], "template_id": "order.shipped", **fields}  # fmt: skip
        return json.dumps(event).encode()

    values = [
        request(f"kn-{uid}-good", variables={"order_id": "k1"}, ttl_s=600),
        request(f"kn-{uid}-bad", variables={"order_id": 7}),
        request(f"kn-{uid}-unknown", template_id=f"nope.{uid}"),
    ]
    asyncio.run(produce(kafka.bootstrap, stack.settings.kafka.topic, values))
    deadline = time.monotonic() + 30
    while api.get(f"/v1/notifications/kn-{uid}-good").status_code == 404:
        assert time.monotonic() < deadline, "the valid request was never logged"
        time.sleep(0.5)
    assert sorted(_dead_letter_reasons(stack.settings, f"kn-{uid}-", want=2)) == [
        f"event 0: template_id: no template 'nope.{uid}': neither the shop's nor a shipped one",
        "event 0: variables.order_id: must be a string",
    ]
    for rejected in ("bad", "unknown"):
        assert api.get(f"/v1/notifications/kn-{uid}-{rejected}").status_code == 404
