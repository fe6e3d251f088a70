"""The stream gateway's ASGI app: `WS /v1/me/stream` (a user token) and
`WS /v1/users/{user_id}/stream` (a service key with `read`), plus `GET /healthz`.

Why a gateway of its own rather than routes on the Serve ingress: through Serve, every
WebSocket frame is a Ray call between the node's HTTP proxy and a replica, and each open
socket is one of the replica's ongoing requests for as long as it lives. On the 2-core box
one proxy held about 2,000 sockets; near 4,000 opening at once it stopped answering Serve's
health checks and Serve restarted it, dropping every socket of the node — and sockets
counted as load made the ingress autoscaler add replicas for idle streams
(`bench/RESULTS.md`, "Live streams at 10,000 sockets"). Here the socket ends in the process
that holds its hub subscription: uvicorn in one actor per node (`actors.stream_gateway`),
no Ray call per frame, as Centrifugo and Novu's ws service keep their sockets apart from
their APIs.

The checks are the ingress's own (`api.auth.admit`, `api.me.admit_user`) and the stream is
`api.live.run_stream` on the gateway's `Live`. The page's `Origin` may also be Herald's API
on the same host (`HERALD_HTTP_PORT`): that is where `/demo/inbox` is served from.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, WebSocket

from api.auth import admit
from api.live import Live, open_live, run_stream
from api.me import admit_user
from api.paths import UserId
from api.user_tokens import UserTokens
from cluster.settings import HeraldSettings
from cluster.state.clients import async_client

STREAM_PATH = "/v1/me/stream"
PORT = re.compile(r".*:\d+")  # a Host header ending in a port ("[::1]:8001" too)


def api_origins(settings: HeraldSettings, host_header: str) -> list[str]:
    """The allowed origins plus Herald's API on the host the client reached: the demo page
    at `http://<host>:<HERALD_HTTP_PORT>` opens its stream here."""
    hostname = host_header.rsplit(":", 1)[0] if PORT.fullmatch(host_header) else host_header
    port = settings.api.http_port
    own = [f"{scheme}://{hostname}:{port}" for scheme in ("http", "https")]
    return [*settings.api.allowed_origins, *own]


# Settings a running gateway takes without a restart (its sockets stay open): keys,
# tokens and origins are checked per new connection. Any other difference restarts it.
HOT = {
    "api_keys", "allowed_origins", "user_token_secret", "user_token_public_key",
    "user_token_audience", "stream_public_url", "http_port",
}  # fmt: skip


@dataclass(frozen=True)
class Checks:
    """What a new connection is checked against; replaced whole by `reconfigure`."""

    settings: HeraldSettings
    tokens: UserTokens


def reconfigure(app: FastAPI, settings: HeraldSettings) -> bool:
    """Take `settings` if they differ from the app's in `HOT` fields only; False when a
    restart is needed."""
    old, new = app.state.checks.settings.flat(), settings.flat()
    if any(old[k] != new[k] for k in old if k not in HOT):
        return False
    app.state.checks = Checks(settings, UserTokens.from_settings(settings.api))
    return True


def stream_app(settings: HeraldSettings) -> FastAPI:
    """The gateway's app. Redis clients are made in its lifespan, on the loop that serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = async_client(settings)
        app.state.live = open_live(settings, redis)
        try:
            yield
        finally:
            await app.state.live.hub.close()
            await redis.aclose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.checks = Checks(settings, UserTokens.from_settings(settings.api))

    def live() -> Live:
        return app.state.live

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "sockets": live().hub.sockets()}

    @app.websocket(STREAM_PATH)
    async def my_stream(websocket: WebSocket) -> None:
        """The signed-in user's live inbox changes (see `api.me` and `api.live`)."""
        checks: Checks = app.state.checks
        origins = api_origins(checks.settings, websocket.headers.get("host", ""))
        user_id = await admit_user(websocket, origins, lambda: checks.tokens)
        if user_id is not None:
            hello = {"unread": await live().inbox.unread(user_id)}
            await run_stream(websocket, live(), user_id, hello)

    @app.websocket("/v1/users/{user_id}/stream")
    async def user_stream(websocket: WebSocket, user_id: UserId) -> None:
        """Any user's live inbox changes, for support tools (read scope, key in the
        `Authorization` header only)."""
        if await admit(websocket, app.state.checks.settings.api.api_keys, "read"):
            await run_stream(websocket, live(), user_id, {})

    return app
