"""`/demo/inbox`: a shop-style inbox bell as one static page and one script, no build step —
what a shop's web page does with a user token: the unread count, the list, live arrival over
`WS /v1/me/stream`, mark-as-read (and the other open tabs following). The page is told where
the stream gateway is (a `<meta name="herald-stream">`: `HERALD_STREAM_PUBLIC_URL`, or the
gateway's port on the page's own host).

The page holds no secret and mints nothing: the visitor pastes a user token (on the local
stack, `herald token mint <user>`), which stays in the tab's `sessionStorage`. So these
routes are public and safe anywhere. They are kept out of the OpenAPI document (they are a
demo, not the API) and sent with a Content-Security-Policy allowing only Herald's own
script and connections back to Herald.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

STATIC = Path(__file__).with_name("static")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
    "img-src 'self' https: data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
FILES = {
    "/demo/inbox": ("inbox.html", "text/html; charset=utf-8"),
    "/demo/inbox.js": ("inbox.js", "text/javascript; charset=utf-8"),
    "/demo/inbox.css": ("inbox.css", "text/css; charset=utf-8"),
}


def demo_router(stream: Callable[[], str]) -> APIRouter:
    """The demo's routes; `stream` answers the stream gateway's URL, or its port."""
    router = APIRouter(include_in_schema=False)
    for path, (name, media_type) in FILES.items():
        router.add_api_route(path, _bound(name, media_type, stream), methods=["GET"])
    return router


HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _bound(name: str, media_type: str, stream: Callable[[], str]):
    """A parameterless endpoint answering one static file (the page with its stream URL)."""

    async def endpoint() -> Response:
        body = (STATIC / name).read_bytes()
        if name.endswith(".html"):
            body = body.replace(b"{{stream}}", html.escape(stream()).encode())
        return Response(body, media_type=media_type, headers=HEADERS)

    return endpoint
