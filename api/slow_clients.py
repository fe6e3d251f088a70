"""A client that sends its request body slowly — a byte every few seconds, or nothing after
the headers — must not hold a connection and a slot of the ingress for as long as it
likes: the whole body has to arrive within `HERALD_HTTP_READ_TIMEOUT_S` of the request
reaching the ingress, else the answer is 408 `request_timeout` with `Connection: close`,
and Serve's HTTP proxy (uvicorn) closes the connection once that answer is written.

`BodyReadTimeout` is an ASGI middleware around `receive`: one deadline per request, every
read of a body chunk bounded by what is left of it. Once the body is complete, reads are
not bounded any more (a streaming answer waits on `receive` for the client's disconnect).
WebSockets are left alone: their reads are the conversation, not a request body.

Headers are not covered here: they are read by Serve's HTTP proxy before any of Herald's
code sees the request. `api.header_timeout` gives the proxy that deadline.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DETAIL = "the request body did not arrive within HERALD_HTTP_READ_TIMEOUT_S"


class BodyTimedOut(Exception):
    """The body's deadline passed while a read of it was waiting."""


class BodyReadTimeout:
    """See the module docstring. `limit` is read per request: the ingress sets it from its
    settings when a replica starts, after the app was built (as `api.errors.BodySizeLimit`)."""

    @dataclass
    class Limit:
        seconds: float

    def __init__(self, app: ASGIApp, limit: BodyReadTimeout.Limit) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limit.seconds
        state = {"body_done": False, "timed_out": False, "started": False}

        async def timed_receive() -> Message:
            if state["body_done"]:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                state["timed_out"] = True
                raise BodyTimedOut(DETAIL) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def closing_send(message: Message) -> None:
            if state["timed_out"]:
                # Whatever the app made of the failed read (FastAPI turns an error while
                # reading a body into a 400), the answer is the timeout, and the last one.
                if not state["started"]:
                    state["started"] = True
                    await _answer_timeout(send)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        except BodyTimedOut:
            await closing_send({"type": "http.response.start"})


async def _answer_timeout(send: Send) -> None:
    """408 in the one error shape (`api.errors`), with `Connection: close`."""
    body = json.dumps(
        {
            "error": {
                "code": "request_timeout",
                "message": DETAIL,
                "fields": [{"field": "body", "reason": "not received in time"}],
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})
