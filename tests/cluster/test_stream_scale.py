"""The live stream can never starve ingestion (issue 16): sockets share one Redis
subscription per replica, a closed socket is noticed at once, and a user holds at most
`stream_max_per_user` streams.

The leak this guards against: the old stream never read its socket, so every closed
WebSocket kept a pooled Redis connection subscribed; after ~100 of them the replica's pool
was exhausted and `POST /v1/events`, statuses and `/readyz` answered 503.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis
import websockets
from websockets.sync.client import connect

from cluster.state import keys
from cluster.state.clients import sync_client

ADMIN = {"Authorization": "Bearer test-admin"}


def ws_url(stack, user: str) -> str:
    return stack.stream_url + f"/v1/users/{user}/stream"


async def open_and_close(stack, users: list[str], at_once: int = 25) -> None:
    """Open a socket per user (`at_once` at a time), wait for `subscribed`, close cleanly."""

    async def one(user: str) -> None:
        async with websockets.connect(ws_url(stack, user), additional_headers=ADMIN) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "subscribed"

    for start in range(0, len(users), at_once):
        await asyncio.gather(*(one(u) for u in users[start : start + at_once]))


def subscribers(client: redis.Redis, settings, users: list[str]) -> int:
    channels = [keys.user_stream(settings, u) for u in users]
    counts = client.pubsub_numsub(*channels)
    return sum(n for _, n in counts)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_500_closed_sockets_leave_nothing_behind_and_ingestion_still_works(stack, api, uid):
    client = sync_client(stack.settings)
    # Warm up first: the hub opens its own few connections (at most 4) on first use.
    asyncio.run(open_and_close(stack, [f"u-{uid}-warm{i}" for i in range(25)]))
    clients_before = len(client.client_list())
    users = [f"u-{uid}-ws{i}" for i in range(500)]
    started = time.monotonic()
    asyncio.run(open_and_close(stack, users))
    took = time.monotonic() - started

    # Every close was seen: no channel of those users keeps a subscriber; Redis holds one
    # pub/sub connection per ingress replica at most (the old stream held one per socket),
    # and its client count did not grow with the sockets (other pools may grow a little
    # with the stack's own background work meanwhile).
    wait_for(lambda: subscribers(client, stack.settings, users) == 0, 10, "subscribers left")
    assert len(client.client_list(_type="pubsub")) <= 4
    wait_for(
        lambda: len(client.client_list()) <= clients_before + 10,
        10,
        f"Redis clients grew from {clients_before} to {len(client.client_list())}",
    )
    assert api.get("/readyz").status_code == 200

    # 1,000 events for 100 users are accepted, delivered to the inboxes, and reach a socket
    # that is open meanwhile.
    targets = [f"u-{uid}-ev{i}" for i in range(100)]
    events = [
        {
            "event_id": f"ev-{uid}-{n}",
            "type": "order.updated",
            "user_id": targets[n % 100],
            "order_id": f"o-{uid}-{n}",
            "status": "shipped",
        }
        for n in range(1000)
    ]
    with connect(ws_url(stack, targets[0]), additional_headers=ADMIN) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        answer = api.post("/v1/events", json={"events": events})
        assert answer.status_code == 202, answer.text
        assert len(answer.json()["accepted"]) == 1000
        live = set()
        deadline = time.monotonic() + 60
        while len(live) < 10 and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=60))
            if message["type"] == "notification":
                live.add(message["item"]["notification_id"])
    assert live == {f"ev-{uid}-{n}" for n in range(0, 1000, 100)}

    def inboxes_full() -> bool:
        counts = [len(api.get(f"/v1/users/{u}/inbox?limit=200").json()["items"]) for u in targets]
        return sum(counts) == 1000

    wait_for(inboxes_full, 120, "not every event reached its inbox")
    assert api.get("/readyz").status_code == 200
    print(f"500 sockets opened and closed in {took:.1f} s")


def test_a_user_holds_at_most_stream_max_per_user_streams(stack, uid):
    user = f"u-{uid}"
    cap = stack.settings.api.stream_max_per_user
    held = [connect(ws_url(stack, user), additional_headers=ADMIN) for _ in range(cap)]
    try:
        for ws in held:
            assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        with connect(ws_url(stack, user), additional_headers=ADMIN) as extra:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    extra.recv(timeout=10)
        assert closed.value.rcvd.code == 4429
        held.pop().close()
        # The slot is free again as soon as the close is seen.
        deadline = time.monotonic() + 10
        while True:
            with connect(ws_url(stack, user), additional_headers=ADMIN) as again:
                try:
                    if json.loads(again.recv(timeout=10))["type"] == "subscribed":
                        break
                except websockets.ConnectionClosed:
                    assert time.monotonic() < deadline, "the slot never came back"
                    time.sleep(0.2)
    finally:
        for ws in held:
            ws.close()


def test_a_client_ping_is_answered_and_readiness_is_unaffected(stack, uid):
    with connect(ws_url(stack, f"u-{uid}"), additional_headers=ADMIN) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    assert httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_client_that_stops_answering_is_closed_and_leaves_nothing(stack, uid):
    """A client whose network went away without a close (it reads nothing and answers no
    ping) is closed with 4408 after two missed heartbeats (`api.live.IDLE_S`), and its
    Redis subscription and stream slot are released: it cannot hold them for ever."""
    from api.live import CLOSE_IDLE, IDLE_S

    user = f"idle-{uid}"
    client = sync_client(stack.settings)
    started = time.monotonic()
    with connect(ws_url(stack, user), additional_headers=ADMIN, ping_interval=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        assert subscribers(client, stack.settings, [user]) == 1
        assert client.zcard(keys.user_stream_slots(stack.settings, user)) == 1
        pings = 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # read (the server's pings arrive) but never answer
                message = json.loads(ws.recv(timeout=IDLE_S + 30))
                pings += message["type"] == "ping"
    waited = time.monotonic() - started
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_IDLE
    assert pings >= 2, f"closed after {pings} heartbeat(s)"
    assert IDLE_S <= waited < IDLE_S + 30, f"closed after {waited:.0f} s"
    wait_for(lambda: subscribers(client, stack.settings, [user]) == 0, 10, "subscription kept")
    # The slot is released right after the subscription is left (`api.live.run_stream`).
    slots = keys.user_stream_slots(stack.settings, user)
    wait_for(lambda: client.zcard(slots) == 0, 10, "stream slot kept")
