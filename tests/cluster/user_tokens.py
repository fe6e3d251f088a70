"""User tokens on the session stack, for the `/v1/me` tests.

The session `stack` (tests/conftest.py) is started without `user_token_secret` unless its
fixture passes one; then `/v1/me` is closed. `ensure_user_tokens` makes sure the running
app verifies tokens of a known secret — the stack's own if it has one, else by deploying
the app again with a test secret (once per session; the new replica is up before it
returns) — and answers that secret, for `api.user_tokens.mint`.
"""

from __future__ import annotations

import json
import time

import httpx
import websockets
from ray import serve
from websockets.sync.client import connect

from api.user_tokens import mint
from cluster.settings import HeraldArgs, HeraldSettings
from ops.local import LocalStack
from serve_app import app_builder

TEST_SECRET = "herald-test-user-token-secret-0123456789"


def ensure_user_tokens(stack: LocalStack) -> str:
    secret = stack.settings.api.user_token_secret
    if secret:
        return secret
    flat = {**stack.settings.flat(), "user_token_secret": TEST_SECRET}
    stack.settings = HeraldSettings(**flat)
    serve.run(app_builder(HeraldArgs(**flat)), name="herald", route_prefix="/", blocking=False)
    token = mint(TEST_SECRET, "u-probe", stack.settings.api.user_token_audience)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(
                f"{stack.api_url}/v1/me/inbox/unread",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            ready = httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200
            if answer.status_code == 200 and ready and _gateway_takes(stack, token):
                return TEST_SECRET
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the app never took the test user token secret")


def _gateway_takes(stack: LocalStack, token: str) -> bool:
    """The stream gateway has the new secret too (the new replica hands it over)."""
    try:
        with connect(
            stack.stream_url + "/v1/me/stream", subprotocols=["herald.v1", f"bearer.{token}"]
        ) as ws:
            return json.loads(ws.recv(timeout=10))["type"] == "subscribed"
    except (OSError, TimeoutError, websockets.ConnectionClosed):
        return False


def user_token(stack: LocalStack, user_id: str, ttl_s: int = 600) -> str:
    secret = ensure_user_tokens(stack)
    return mint(secret, user_id, stack.settings.api.user_token_audience, ttl_s)
