"""One live stream (WebSocket) from accept to close, over the replica's `StreamHub`.

Why two tasks: the old stream only ever wrote, so a socket closed by its client was noticed
by nobody and kept its Redis subscription for ever. Here one task reads the socket — a
close is seen at once, and what the client sends (`{"type": "pong"}` answering the
server's `{"type": "ping"}`, or its own `ping`) keeps it alive — while the other writes
what the hub hands over and sends the heartbeat. A client silent for `IDLE_S` (two missed
heartbeats) is closed with 4408; one so slow that `QUEUE_MAX` messages pile up for it is
closed with 1013 (try again later: a reload shows the inbox as it is), and so is a new
stream on a replica holding `REPLICA_MAX_STREAMS`; a user holding `stream_max_per_user`
streams already gets 4429. Whatever ends the stream, the subscriber
leaves the hub and the slot is released in one `finally`.

Messages to the client, all JSON: `subscribed` {user_id, unread}, `notification` {item,
unread}, `read` {notification_id, unread}, `read_all` {unread}, `deleted`
{notification_id, unread}, `ping`, `pong`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from cluster.settings import HeraldSettings
from cluster.state.inbox import InboxStore
from cluster.state.live import StreamHub, StreamSlots, Subscriber, stream_clients

HEARTBEAT_S = 20.0
IDLE_S = 2 * HEARTBEAT_S + 5
# Streams one gateway (`actors.stream_gateway`) holds; past it a new one is closed with
# 1013 (the client retries, and a load balancer may pick another node's gateway).
REPLICA_MAX_STREAMS = 20_000
CLOSE_IDLE, CLOSE_TOO_MANY, CLOSE_TOO_SLOW, CLOSE_FULL = 4408, 4429, 1013, 1013


@dataclass
class Live:
    """What a replica's streams share: the hub, the slots, and the inbox on the streams'
    own Redis client (for the unread count a stream opens with, so a burst of opening
    sockets queues on that small pool rather than growing ingestion's)."""

    hub: StreamHub
    slots: StreamSlots
    inbox: InboxStore


def open_live(settings: HeraldSettings, main: Redis) -> Live:
    """A replica's `Live`, its Redis use off `main` (ingestion's client) where it can be
    (see `cluster.state.live.stream_clients`)."""
    hub_redis, slots_redis = stream_clients(settings, main)
    return Live(
        StreamHub(settings, hub_redis),
        StreamSlots(settings, slots_redis),
        InboxStore(settings, slots_redis),
    )


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close unless the socket is gone already (then there is no one to tell)."""
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason)


async def run_stream(websocket: WebSocket, live: Live, user_id: str, hello: dict[str, Any]) -> None:
    """Stream the user's inbox changes on an accepted socket until either side ends it.
    `hello` is added to the `subscribed` message (e.g. the unread count)."""
    if live.hub.sockets() >= REPLICA_MAX_STREAMS:
        await close(websocket, CLOSE_FULL, "this replica holds its most streams; retry")
        return
    try:
        slot = await live.slots.take(user_id)
    except RedisError:
        await close(websocket, CLOSE_FULL, "busy; retry")
        return
    if slot is None:
        await close(websocket, CLOSE_TOO_MANY, "too many open streams for this user")
        return
    subscriber: Subscriber | None = None
    try:
        subscriber = await live.hub.join(user_id)
        await websocket.send_json({"type": "subscribed", "user_id": user_id, **hello})
        seen = [time.monotonic()]  # when the client last said anything
        tasks = [
            asyncio.create_task(_read(websocket, seen)),
            asyncio.create_task(_write(websocket, live, subscriber, slot, seen)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # A task that raised met a socket already gone: nothing to close then.
        ended = [t.result() for t in done if not t.cancelled() and t.exception() is None]
        if ended and ended[0] is not None:
            await close(websocket, *ended[0])
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left while we were saying hello
    finally:
        if subscriber is not None:
            await live.hub.leave(subscriber)
        await live.slots.release(user_id, slot)


async def _read(websocket: WebSocket, seen: list[float]) -> None:
    """Until the client closes: note when it last spoke, answer its pings."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        seen[0] = time.monotonic()
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if json.loads(message.get("text") or "{}").get("type") == "ping":
                await websocket.send_json({"type": "pong"})


async def _write(
    websocket: WebSocket, live: Live, subscriber: Subscriber, slot: str, seen: list[float]
) -> tuple[int, str] | None:
    """Forward the hub's messages; every `HEARTBEAT_S` a ping and a slot renewal. Answers
    the close (code, reason) when the stream must end from this side. One `queue.get` is
    kept pending across heartbeats rather than cancelled by a timeout, so no message can be
    lost between a timeout and its cancellation."""
    next_beat = time.monotonic() + HEARTBEAT_S
    getter = asyncio.ensure_future(subscriber.queue.get())
    try:
        while True:
            if subscriber.overflowed:
                return CLOSE_TOO_SLOW, "the stream fell too far behind; reload"
            done, _ = await asyncio.wait({getter}, timeout=max(next_beat - time.monotonic(), 0))
            if done:
                await websocket.send_text(getter.result())
                getter = asyncio.ensure_future(subscriber.queue.get())
            if time.monotonic() >= next_beat:
                if time.monotonic() - seen[0] > IDLE_S:
                    return CLOSE_IDLE, "no pong to the last heartbeats"
                await websocket.send_json({"type": "ping"})
                await live.slots.renew(subscriber.user_id, slot)
                next_beat = time.monotonic() + HEARTBEAT_S
    finally:
        getter.cancel()
