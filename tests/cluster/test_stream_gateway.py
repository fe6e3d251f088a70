"""The stream gateway (`actors.stream_gateway`): the live streams are served by one actor
per node on `HERALD_STREAM_PORT`, not by Serve's proxy — and that gateway is checked by
readiness, survives being killed (Ray restarts it; clients reconnect and get what follows),
refuses slow headers like the API, and reports a port it cannot bind instead of failing
silently.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import ray
import websockets
from websockets.sync.client import connect

from actors.stream_gateway import StreamGateway
from cluster.names import gateway_name
from tests.cluster.test_me import order
from tests.cluster.test_slow_clients import _limit, _slow_clients
from tests.cluster.user_tokens import user_token

pytestmark = pytest.mark.timeout(240)


def _gateway(stack):
    return ray.get_actor(
        gateway_name(ray.util.get_node_ip_address()), namespace=stack.settings.topology.namespace
    )


def _subscribed(stack, token: str, timeout_s: float = 60):
    """A socket on the gateway, once it says `subscribed` (retrying while it restarts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ws = connect(
                stack.stream_url + "/v1/me/stream", subprotocols=["herald.v1", f"bearer.{token}"]
            )
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "subscribed", hello
            return ws
        except (OSError, TimeoutError, websockets.ConnectionClosed):
            assert time.monotonic() < deadline, "the gateway never took a stream again"
            time.sleep(0.5)


def _next_notification(ws) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == "notification":
            return message["item"]


def test_streams_are_the_gateways_and_readiness_checks_it(stack, api, uid):
    token = user_token(stack, f"gw-{uid}")
    checks = api.get("/readyz").json()["checks"]
    assert checks[gateway_name(ray.util.get_node_ip_address())] is True
    # Serve's port no longer takes streams: every socket is the gateway's.
    with pytest.raises(websockets.InvalidStatus):
        connect(stack.api_url.replace("http", "ws") + "/v1/me/stream").close()
    with _subscribed(stack, token):
        health = httpx.get(stack.stream_url.replace("ws", "http") + "/healthz", timeout=10)
        assert health.json()["sockets"] >= 1
        assert ray.get(_gateway(stack).ping.remote())["sockets"] >= 1


def test_a_killed_gateway_comes_back_and_streams_resume(stack, api, uid):
    user = f"gwk-{uid}"
    token = user_token(stack, user)
    ws = _subscribed(stack, token)
    ray.kill(_gateway(stack), no_restart=False)  # Ray restarts it on its node
    with pytest.raises((websockets.ConnectionClosed, TimeoutError)):
        while True:
            ws.recv(timeout=30)
    # Ingestion never depended on it.
    assert api.post("/v1/events", json={"events": [order(uid, user, 1)]}).status_code == 202
    with _subscribed(stack, token, timeout_s=90) as again:
        assert api.post("/v1/events", json={"events": [order(uid, user, 2)]}).status_code == 202
        assert _next_notification(again)["notification_id"] == f"me-{uid}-{user}-2"
    # The one sent while no socket was open is in the inbox the page reloads.
    inbox = httpx.get(
        f"{stack.api_url}/v1/me/inbox", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    assert {i["notification_id"] for i in inbox["items"]} >= {
        f"me-{uid}-{user}-1",
        f"me-{uid}-{user}-2",
    }


async def test_slow_headers_on_the_gateway_are_answered_408(stack):
    head = b"GET /v1/me/stream HTTP/1.1\r\nHost: herald\r\n"
    drip = b"X-Slow: " + b"a" * 4  # 12 bytes: 24 s, past the limit
    results = await _slow_clients(stack.stream_url.replace("ws", "http"), head, drip)
    assert max(seconds for seconds, _ in results) < _limit(stack)
    for _, answer in results:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_port_taken_is_reported_by_ping(stack):
    """A second gateway on the same port does not start silently: `ping` names the cause."""
    other = (
        ray.remote(StreamGateway)
        .options(namespace=stack.settings.topology.namespace, num_cpus=0, max_restarts=0)
        .remote(stack.settings, 0.0)
    )
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match=str(stack.stream_port)):
            ray.get(other.ping.remote(), timeout=90)
    finally:
        ray.kill(other)
