"""Dead letters: a poison event does not block the events behind it, a delivery that runs
out of attempts lands in the dead-letter stream with its reason, and an operator lists and
replays them with `herald dlq`."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from typer.testing import CliRunner

from cluster.state import keys
from cluster.state.clients import sync_client
from cluster.state.dead_letters import list_dead_letters
from ops.cli import app
from ops.demo import apns_token, wait_final
from tests.cluster.test_e2e import register
from tests.cluster.test_kafka import produce


def cli(stack, *args: str) -> str:
    env = {
        "HERALD_REDIS_URL": stack.settings.state.redis_url,
        "HERALD_KEY_PREFIX": stack.settings.state.key_prefix,
        "HERALD_REDIS_CLUSTER": str(stack.settings.state.redis_cluster).lower(),
    }
    result = CliRunner().invoke(app, ["dlq", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def order(event_id: str, user: str) -> dict:
    return {"event_id": event_id, "type": "order.updated", "user_id": user,
            "order_id": "p1", "status": "packed"}  # fmt: skip


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return value


@pytest.mark.eventlog
def test_poison_event_is_dead_lettered_and_does_not_block(stack, api, uid):
    # Written straight into the log, as a buggy producer or a bad replay could: not JSON.
    poison = f"{{poison {uid}"
    if stack.settings.eventlog.event_log == "kafka":
        topic = stack.settings.kafka.log_topic_prefix + "transactional"
        asyncio.run(produce(stack.settings.kafka.bootstrap, topic, [poison.encode()]))
    else:
        client = sync_client(stack.settings)
        client.xadd(
            keys.stream(stack.settings, "transactional"), {"e": poison, "at": repr(time.time())}
        )
    answer = api.post("/v1/events", json={"events": [order(f"after-{uid}", f"pu-{uid}")]})
    assert answer.status_code == 202
    status = wait_final(api, [f"after-{uid}"], timeout_s=60)[f"after-{uid}"]
    assert status["state"] == "delivered", status

    # Each of the `poison_attempts` tries comes after the entry sat unacked for claim_idle_ms.
    dead = wait_for(
        lambda: [d for d in list_dead_letters(stack.settings, 10_000) if uid in json.dumps(d)],
        timeout_s=150,
    )
    assert dead[0]["kind"] == "event"
    assert dead[0]["reason"] == "routing failed repeatedly"
    assert uid in cli(stack, "list", "--count", "10000")


@pytest.mark.eventlog
def test_exhausted_delivery_is_dead_lettered_then_replayed(stack, api, emulators, uid):
    user, token = f"dl-{uid}", apns_token()
    device_id = register(api, user, "ios", token)
    emulators["apns"].post("/_emulator/faults", json={"error_rate": {"500": 1.0}})
    try:
        api.post("/v1/events", json={"events": [order(f"dl-{uid}", user)]}).raise_for_status()

        def apns_dead_lettered() -> dict | None:
            status = api.get(f"/v1/notifications/dl-{uid}").json()
            push = [d for d in status.get("deliveries", []) if d["channel"] == "apns"]
            return push[0] if push and push[0]["status"] == "dead_lettered" else None

        push = wait_for(apns_dead_lettered, timeout_s=90)
        assert push["attempts"] == stack.settings.retry.max_attempts
        assert "InternalServerError" in push["last_error"]
    finally:
        emulators["apns"].post("/_emulator/faults", json={})

    # A dead letter names its device, never the token (sealed at rest, looked up on replay).
    dead = [d for d in list_dead_letters(stack.settings, 10_000) if device_id in json.dumps(d)]
    assert [d["kind"] for d in dead] == ["delivery"]
    assert dead[0]["body"]["device_id"] == device_id and "token" not in dead[0]["body"]
    assert token not in json.dumps(dead)
    listed = cli(stack, "list", "--count", "10000")
    assert dead[0]["id"] in listed and "InternalServerError" in listed

    assert "replayed 1" in cli(stack, "replay", dead[0]["id"])
    status = wait_final(api, [f"dl-{uid}"], timeout_s=60)[f"dl-{uid}"]
    assert status["state"] == "delivered", status
    assert not [d for d in list_dead_letters(stack.settings, 10_000) if d["id"] == dead[0]["id"]]
    got = emulators["apns"].get("/_emulator/received").json()
    items = got["received"] if isinstance(got, dict) else got
    assert [i["status"] for i in items if i["token"] == token][-1] == 200
