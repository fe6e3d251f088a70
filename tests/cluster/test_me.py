"""`/v1/me/…` through Serve with real user tokens: the signed-in user's inbox (cursor
pages, read state, deletions), preferences, devices, feedback and live stream — and that a
token for user A never reads, changes or learns of anything of user B (404, like an id
that does not exist).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websockets
from websockets.sync.client import connect

from ops.demo import apns_token
from tests.cluster.user_tokens import user_token


def me(stack, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=f"{stack.api_url}/v1/me", headers=headers, timeout=30)


def order(uid: str, user: str, n: int) -> dict:
    return {
        "event_id": f"me-{uid}-{user}-{n}",
        "type": "order.updated",
        "user_id": user,
        "order_id": f"o-{uid}-{user}-{n}",
        "status": "shipped",
    }


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def stream(stack, token: str, **kwargs):
    url = stack.stream_url + "/v1/me/stream"
    return connect(url, subprotocols=["herald.v1", f"bearer.{token}"], **kwargs)


def next_of(ws, kind: str) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == kind:
            return message


@pytest.fixture
def two_users(stack, api, uid):
    """Users A (5 notifications) and B (2), each with a user token, inboxes filled."""
    a, b = f"ua-{uid}", f"ub-{uid}"
    events = [order(uid, a, n) for n in range(5)] + [order(uid, b, n) for n in range(2)]
    assert api.post("/v1/events", json={"events": events}).status_code == 202
    tokens = {a: user_token(stack, a), b: user_token(stack, b)}
    for user, count in ((a, 5), (b, 2)):
        with me(stack, tokens[user]) as client:
            wait_for(
                lambda c=client, n=count: len(c.get("/inbox").json()["items"]) == n,
                60,
                f"{user}'s inbox never filled",
            )
    return a, b, tokens


def test_inbox_pages_read_state_and_isolation(stack, api, two_users):
    a, b, tokens = two_users
    with me(stack, tokens[a]) as mine, me(stack, tokens[b]) as theirs:
        seen, cursor = [], None
        while True:
            page = mine.get("/inbox", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            seen += [item["notification_id"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 5 and all(a in nid for nid in seen)
        assert mine.get("/inbox", params={"cursor": "garbage"}).status_code == 422
        assert mine.get("/inbox/unread").json() == {"unread": 5}

        first = seen[0]
        assert mine.post(f"/inbox/{first}/read").json() == {"unread": 4}
        items = {i["notification_id"]: i["read"] for i in mine.get("/inbox").json()["items"]}
        assert items[first] is True and sum(items.values()) == 1

        # B cannot touch, see or learn of A's notification: 404 as for an unknown id.
        for answer in (
            theirs.post(f"/inbox/{seen[1]}/read"),
            theirs.delete(f"/inbox/{seen[1]}"),
            theirs.post("/feedback", json={"notification_id": seen[1], "action": "opened"}),
        ):
            assert answer.status_code == 404, answer.text
        assert theirs.post("/inbox/unknown-id/read").status_code == 404
        their_ids = [i["notification_id"] for i in theirs.get("/inbox").json()["items"]]
        assert len(their_ids) == 2 and not set(their_ids) & set(seen)
        assert mine.get("/inbox/unread").json() == {"unread": 4}

        assert mine.delete(f"/inbox/{seen[1]}").json() == {"unread": 3}
        assert len(mine.get("/inbox").json()["items"]) == 4
        assert mine.post("/inbox/read-all").json() == {"unread": 0}
        assert theirs.get("/inbox/unread").json() == {"unread": 2}

        # Feedback on one's own notification counts once.
        body = {"notification_id": seen[2], "action": "opened"}
        assert mine.post("/feedback", json=body).json()["counted"] is True
        assert mine.post("/feedback", json=body).json()["counted"] is False

    # The doors do not mix: a service key on /v1/me, a user token on a service route.
    assert httpx.get(f"{stack.api_url}/v1/me/inbox", headers=api.headers).status_code == 401
    answer = httpx.get(
        f"{stack.api_url}/v1/users/{a}/inbox", headers={"Authorization": f"Bearer {tokens[a]}"}
    )
    assert answer.status_code == 401


def test_preferences_and_own_devices(stack, uid):
    a, b = f"ua-{uid}", f"ub-{uid}"
    with me(stack, user_token(stack, a)) as mine, me(stack, user_token(stack, b)) as theirs:
        defaults = mine.get("/preferences").json()
        assert defaults["channels"] == {"push": True, "inbox": True, "email": True}
        assert defaults["quiet_hours"] is None and defaults["max_marketing_per_day"] == 3
        wanted = {
            "channels": {"push": True, "inbox": True, "email": False},
            "categories": {"order": True, "price_alert": True, "marketing": False, "vip": False},
            "quiet_hours": {"start": "22:00", "end": "07:30"},
            "max_marketing_per_day": 1,
        }
        assert mine.put("/preferences", json=wanted).status_code == 200
        assert mine.get("/preferences").json() == wanted
        assert theirs.get("/preferences").json() == defaults

        # a fresh token: one another test registered would be moved (200), not created
        device = {"platform": "ios", "token": apns_token()}
        created = mine.post("/devices", json=device)
        assert created.status_code == 201, created.text
        device_id = created.json()["device_id"]
        assert mine.post("/devices", json=device).status_code == 200
        assert mine.post("/devices", json={**device, "user_id": b}).status_code == 422
        assert theirs.delete(f"/devices/{device_id}").status_code == 404
        assert mine.delete(f"/devices/{device_id}").status_code == 204
        assert mine.delete(f"/devices/{device_id}").status_code == 404


def test_stream_follows_changes_made_in_other_tabs(stack, api, two_users, uid):
    a, b, tokens = two_users
    origin = stack.api_url  # the page Herald serves itself (the demo) is always allowed
    with (
        stream(stack, tokens[a], origin=origin) as tab1,
        stream(stack, tokens[a]) as tab2,
        stream(stack, tokens[b]) as other,
    ):
        assert tab1.subprotocol == "herald.v1"
        hello = next_of(tab1, "subscribed")
        assert hello == {"type": "subscribed", "user_id": a, "unread": 5}
        assert next_of(tab2, "subscribed")["unread"] == 5
        assert next_of(other, "subscribed")["user_id"] == b

        assert api.post("/v1/events", json={"events": [order(uid, a, 9)]}).status_code == 202
        for tab in (tab1, tab2):
            arrived = next_of(tab, "notification")
            assert arrived["item"]["notification_id"] == f"me-{uid}-{a}-9"
            assert arrived["unread"] == 6
        with me(stack, tokens[a]) as mine:
            assert mine.post(f"/inbox/me-{uid}-{a}-9/read").json() == {"unread": 5}
        for tab in (tab1, tab2):
            assert next_of(tab, "read") == {
                "type": "read",
                "notification_id": f"me-{uid}-{a}-9",
                "unread": 5,
            }
        other.send(json.dumps({"type": "ping"}))
        assert json.loads(other.recv(timeout=10)) == {"type": "pong"}  # nothing of A's came


def test_stream_auth_by_first_message_and_refusals(stack, uid):
    url = stack.stream_url + "/v1/me/stream"
    good = user_token(stack, f"ua-{uid}")
    with connect(url) as ws:
        ws.send(json.dumps({"type": "auth", "token": good}))
        assert next_of(ws, "subscribed")["user_id"] == f"ua-{uid}"
    cases = [
        ({"origin": "https://evil.example"}, ["herald.v1", f"bearer.{good}"], 4403),
        ({}, ["herald.v1", f"bearer.{user_token(stack, 'u-x', ttl_s=-100)}"], 4401),
        ({}, ["herald.v1", "bearer.not-a-jwt"], 4401),
    ]
    for options, protocols, code in cases:
        with connect(url, subprotocols=protocols, **options) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == code
