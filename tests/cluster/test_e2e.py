"""End to end through HTTP: devices → order update → APNs, FCM, inbox and WebSocket →
delivery status; a replayed event sends nothing; a UserShard comes back with its devices."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import ray
from websockets.sync.client import connect

from cluster.names import shard_name
from cluster.sharding import shard_of
from ops.demo import apns_token, fcm_token, wait_final


def received_for(emulator: httpx.Client, tokens: set[str]) -> list[dict]:
    answer = emulator.get("/_emulator/received")
    answer.raise_for_status()
    body = answer.json()
    items = body["received"] if isinstance(body, dict) else body
    return [i for i in items if i.get("token") in tokens and i.get("status", 200) == 200]


def register(api: httpx.Client, user: str, platform: str, token: str) -> str:
    answer = api.post("/v1/devices", json={"user_id": user, "platform": platform, "token": token})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["device_id"]


@pytest.mark.eventlog
def test_order_update_reaches_every_channel(stack, api, emulators, uid):
    user = f"u-{uid}"
    ios, android, web = apns_token(), fcm_token(), fcm_token()
    devices = {
        register(api, user, "ios", ios): "apns",
        register(api, user, "android", android): "fcm",
        register(api, user, "web", web): "fcm",
    }
    ws_url = stack.stream_url + f"/v1/users/{user}/stream"
    with connect(ws_url, additional_headers={"Authorization": "Bearer test-admin"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        event = {
            "event_id": f"ev-{uid}",
            "type": "order.updated",
            "user_id": user,
            "order_id": f"A-{uid}",
            "status": "shipped",
        }
        answer = api.post("/v1/events", json={"events": [event]})
        assert answer.status_code == 202
        assert answer.json() == {"accepted": [f"ev-{uid}"], "duplicate": []}
        pushed = json.loads(ws.recv(timeout=30))

    assert pushed["type"] == "notification"
    assert pushed["item"]["notification_id"] == f"ev-{uid}"
    assert pushed["item"]["body"] == f"Your order A-{uid} is on its way."

    status = wait_final(api, [f"ev-{uid}"])[f"ev-{uid}"]
    assert status["state"] == "delivered", status
    got = {(d["device_id"], d["channel"]) for d in status["deliveries"]}
    assert got == {*devices.items(), ("inbox", "inbox")}
    assert all(d["attempts"] == 1 and d["acked_at"] for d in status["deliveries"])

    apns = received_for(emulators["apns"], {ios})
    assert len(apns) == 1
    payload = apns[0]["payload"]
    assert payload["aps"]["alert"] == {
        "title": "Order shipped",
        "body": f"Your order A-{uid} is on its way.",
    }
    assert payload["order_id"] == f"A-{uid}" and payload["notification_id"] == f"ev-{uid}"

    fcm = received_for(emulators["fcm"], {android, web})
    assert sorted(i["token"] for i in fcm) == sorted([android, web])
    for item in fcm:
        message = item["message"]
        assert message["notification"]["title"] == "Order shipped"
        assert message["data"]["status"] == "shipped"

    inbox = api.get(f"/v1/users/{user}/inbox").json()["items"]
    assert [i["notification_id"] for i in inbox] == [f"ev-{uid}"]

    # The same event again is a duplicate and sends nothing new anywhere.
    again = api.post("/v1/events", json={"events": [event]}).json()
    assert again == {"accepted": [], "duplicate": [f"ev-{uid}"]}
    time.sleep(1.0)
    assert len(received_for(emulators["apns"], {ios})) == 1
    assert len(received_for(emulators["fcm"], {android, web})) == 2
    assert len(api.get(f"/v1/users/{user}/inbox").json()["items"]) == 1


def test_user_without_devices_gets_inbox_and_optout_is_respected(api, uid):
    quiet, loud = f"q-{uid}", f"l-{uid}"
    register(api, quiet, "ios", apns_token())
    api.put(f"/v1/users/{quiet}/preferences", json={"categories": {"order": False}})
    events = [
        {"event_id": f"{u}-e", "type": "order.updated", "user_id": u, "order_id": "o",
         "status": "paid"}
        for u in (quiet, loud)
    ]  # fmt: skip
    assert api.post("/v1/events", json={"events": events}).status_code == 202
    statuses = wait_final(api, [f"{quiet}-e", f"{loud}-e"])
    assert statuses[f"{quiet}-e"]["state"] == "suppressed"
    assert statuses[f"{quiet}-e"]["suppressed_reason"] == "category_opt_out"
    assert statuses[f"{loud}-e"]["state"] == "delivered"
    # no device: the inbox, and the fallback channel (webhook) since no push can reach him
    assert [d["channel"] for d in statuses[f"{loud}-e"]["deliveries"]] == ["inbox", "webhook"]


def test_reregistering_a_token_updates_instead_of_duplicating(api, emulators, uid):
    token = apns_token()
    first = api.post("/v1/devices", json={"user_id": f"a-{uid}", "platform": "ios", "token": token})
    again = api.post("/v1/devices", json={"user_id": f"a-{uid}", "platform": "ios", "token": token})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["device_id"] == again.json()["device_id"]
    # The phone changes hands: only the new owner gets pushes on it.
    moved = api.post("/v1/devices", json={"user_id": f"b-{uid}", "platform": "ios", "token": token})
    assert moved.json()["device_id"] == first.json()["device_id"]
    events = [
        {"event_id": f"{u}-{uid}", "type": "order.updated", "user_id": f"{u}-{uid}",
         "order_id": "o", "status": "paid"}
        for u in ("a", "b")
    ]  # fmt: skip
    api.post("/v1/events", json={"events": events})
    statuses = wait_final(api, [f"a-{uid}", f"b-{uid}"])
    assert [d["channel"] for d in statuses[f"a-{uid}"]["deliveries"]] == ["inbox", "webhook"]
    assert {d["channel"] for d in statuses[f"b-{uid}"]["deliveries"]} == {"apns", "inbox"}
    # Unregistering stops pushes too.
    assert api.delete(f"/v1/devices/{first.json()['device_id']}").status_code == 204
    api.post("/v1/events", json={"events": [{**events[1], "event_id": f"b2-{uid}"}]})
    status = wait_final(api, [f"b2-{uid}"])[f"b2-{uid}"]
    assert [d["channel"] for d in status["deliveries"]] == ["inbox", "webhook"]


def test_killed_shard_comes_back_with_every_device(stack, api, uid):
    users = [f"r-{uid}-{i}" for i in range(40)]
    shard0 = [
        u
        for u, s in zip(users, shard_of(users, stack.settings.topology.shards), strict=True)
        if s == 0
    ]
    tokens = {u: apns_token() for u in shard0}
    for user, token in tokens.items():
        register(api, user, "ios", token)
    shard = ray.get_actor(shard_name(0), namespace=stack.settings.topology.namespace)
    before = ray.get(shard.lookup.remote(shard0))
    ray.kill(shard, no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = ray.get(shard.lookup.remote(shard0), timeout=10)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert sorted(after.column("token").to_pylist()) == sorted(tokens.values())
    assert after.num_rows == before.num_rows == len(shard0)
    # and it serves traffic again
    event = {"event_id": f"after-{uid}", "type": "order.updated", "user_id": shard0[0],
             "order_id": "o", "status": "paid"}  # fmt: skip
    api.post("/v1/events", json={"events": [event]})
    status = wait_final(api, [f"after-{uid}"])[f"after-{uid}"]
    assert status["state"] == "delivered"
    assert {d["channel"] for d in status["deliveries"]} == {"apns", "inbox"}
