"""Fallback: an order update no push could deliver goes to the inbox and to the configured
webhook (email) channel, and the notification status says which channel served."""

from __future__ import annotations

import time

from ops.demo import apns_token, wait_final
from tests.cluster.test_dead_letters import wait_for
from tests.cluster.test_e2e import register


def order(event_id: str, user: str) -> dict:
    return {"event_id": event_id, "type": "order.updated", "user_id": user,
            "order_id": "fb1", "status": "delayed"}  # fmt: skip


def channels(api, nid: str) -> dict[str, str]:
    status = api.get(f"/v1/notifications/{nid}").json()
    return {d["channel"]: d["status"] for d in status.get("deliveries", [])}


def test_dead_push_falls_back_to_webhook(api, emulators, webhook, uid):
    user, token = f"fb-{uid}", apns_token()
    register(api, user, "ios", token)
    emulators["apns"].post("/_emulator/faults", json={"dead_tokens": [token]})
    try:
        api.post("/v1/events", json={"events": [order(f"fb-{uid}", user)]}).raise_for_status()
        served = wait_for(
            lambda: (c := channels(api, f"fb-{uid}")).get("webhook") == "delivered" and c
        )
    finally:
        emulators["apns"].post("/_emulator/faults", json={})
    assert served == {"apns": "dead", "inbox": "delivered", "webhook": "delivered"}
    [sent] = webhook.for_user(user)
    assert sent["notification_id"] == f"fb-{uid}"
    assert sent["body"] == "Your order fb1 is delayed. We're on it."
    assert sent["idempotency_key"] == f"fb-{uid}|webhook"


def test_user_without_devices_gets_inbox_and_webhook(api, webhook, uid):
    user = f"nd-{uid}"
    api.post("/v1/events", json={"events": [order(f"nd-{uid}", user)]}).raise_for_status()
    status = wait_final(api, [f"nd-{uid}"])[f"nd-{uid}"]
    assert status["state"] == "delivered", status
    assert {d["channel"] for d in status["deliveries"]} == {"inbox", "webhook"}
    assert [s["notification_id"] for s in webhook.for_user(user)] == [f"nd-{uid}"]


def test_no_fallback_for_users_who_turned_email_off(api, emulators, webhook, uid):
    user, token = f"ne-{uid}", apns_token()
    register(api, user, "ios", token)
    api.put(f"/v1/users/{user}/preferences", json={"channels": {"email": False}})
    emulators["apns"].post("/_emulator/faults", json={"dead_tokens": [token]})
    try:
        api.post("/v1/events", json={"events": [order(f"ne-{uid}", user)]}).raise_for_status()
        wait_for(lambda: channels(api, f"ne-{uid}").get("apns") == "dead")
    finally:
        emulators["apns"].post("/_emulator/faults", json={})
    time.sleep(1.0)  # a fallback would have been sent right after the dead answer
    assert channels(api, f"ne-{uid}") == {"apns": "dead", "inbox": "delivered"}
    assert webhook.for_user(user) == []
