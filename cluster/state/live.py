"""The live stream's Redis side: one pub/sub subscription per Serve replica (`StreamHub`),
fanned out in memory to that replica's sockets, and the per-user cap on open streams
(`StreamSlots`), counted across replicas.

Why a hub: a pub/sub subscription holds its Redis connection for as long as it lasts. One
per socket took a connection of the replica's pool per open WebSocket — and a socket whose
close was never noticed kept it for ever, until the pool was exhausted and ingestion,
statuses and `/readyz` answered 503. The hub holds exactly one connection, on a client of
its own (`clients.pubsub_client`, a small blocking pool), so no socket can take a
connection ingestion needs. The slots' short commands (on open, on close, one per
heartbeat) and the unread count a stream opens with queue on a second small blocking pool
of `SLOT_CONNECTIONS` (the pub/sub pool's 4 were too few for a burst of opening sockets on
a loaded box: waits ran out), so such a burst cannot grow the main pool either — except on
a Redis Cluster, where a user's slot key may live on any node: there they use the main,
cluster-aware client (`stream_clients`).

The hub subscribes to a user's channel when the replica's first socket of that user joins
and unsubscribes when the last one leaves; a message is put on each local subscriber's
bounded queue as the raw JSON text the inbox store published, so a message costs no
decoding per socket.

A Redis restart breaks the connection: redis-py reconnects on the next read and
re-subscribes every channel (`PubSub.on_connect`), so the reader loop only waits and
retries. Messages published while it was disconnected are lost to the live feed (they are
in the inbox, which a client reloads on `subscribed`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.clients import connection_options, is_cluster, pubsub_client

log = logging.getLogger("herald.stream")

QUEUE_MAX = 256  # messages a socket may be behind before it is closed as too slow
SLOT_CONNECTIONS = 16
SLOT_WAIT_S = 20.0
SUBSCRIBE_WAIT_S = 5.0


def stream_clients(
    settings: HeraldSettings, main: aioredis.Redis
) -> tuple[aioredis.Redis, aioredis.Redis]:
    """(the hub's client, the slots' client); see the module docstring."""
    if is_cluster(settings):
        return pubsub_client(settings), main
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.state.redis_url,
        max_connections=SLOT_CONNECTIONS,
        timeout=SLOT_WAIT_S,
        health_check_interval=5,
        **connection_options(settings),
    )
    return pubsub_client(settings), aioredis.Redis(connection_pool=pool)


class Subscriber:
    """One socket's place in the hub: its queue of JSON texts, and whether it fell too far
    behind (then the socket is closed rather than fed an incomplete stream)."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_MAX)
        self.overflowed = False

    def offer(self, text: str) -> None:
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True


class StreamHub:
    """One replica's subscription, shared by all its sockets (see the module docstring)."""

    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.pubsub: Any = None
        self.reader: asyncio.Task | None = None
        self.local: dict[str, set[Subscriber]] = {}  # channel → this replica's subscribers
        self.confirmed: dict[str, asyncio.Event] = {}
        self.lock = asyncio.Lock()

    def channel(self, user_id: str) -> str:
        return keys.user_stream(self.settings, user_id)

    async def join(self, user_id: str) -> Subscriber:
        """A subscriber of the user's channel; subscribed in Redis before it returns, so
        whatever is published from now on reaches it."""
        subscriber = Subscriber(user_id)
        channel = self.channel(user_id)
        async with self.lock:
            if self.pubsub is None:
                self.pubsub = self.redis.pubsub()
            first = channel not in self.local
            self.local.setdefault(channel, set()).add(subscriber)
            if first:
                self.confirmed[channel] = asyncio.Event()
                await self.pubsub.subscribe(channel)
            if self.reader is None or self.reader.done():
                self.reader = asyncio.create_task(self._read(), name="stream-hub")
            confirmed = self.confirmed.get(channel)
        try:
            if confirmed is not None:
                await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_WAIT_S)
        except BaseException:
            await self.leave(subscriber)
            raise
        return subscriber

    async def leave(self, subscriber: Subscriber) -> None:
        """Forget the subscriber; the channel is unsubscribed when it was the last one."""
        channel = self.channel(subscriber.user_id)
        async with self.lock:
            members = self.local.get(channel)
            if members is None:
                return
            members.discard(subscriber)
            if not members:
                del self.local[channel]
                self.confirmed.pop(channel, None)
                try:
                    await self.pubsub.unsubscribe(channel)
                except Exception:  # a broken connection re-subscribes only what is local
                    log.warning("unsubscribe failed", exc_info=True)

    def sockets(self) -> int:
        return sum(len(members) for members in self.local.values())

    async def _read(self) -> None:
        """Hand every message to the local subscribers of its channel, for ever; on a
        Redis error wait and read again (redis-py reconnects and re-subscribes)."""
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("stream hub lost Redis; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = _text(message["channel"])
        if message["type"] == "subscribe":
            event = self.confirmed.get(channel)
            if event is not None:
                event.set()
        elif message["type"] == "message":
            text = _text(message["data"])
            for subscriber in tuple(self.local.get(channel, ())):
                subscriber.offer(text)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.pubsub is not None:
            await self.pubsub.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# KEYS[1] the user's slots; ARGV: connection id, now, lapse time, the cap.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000) + 1)
return 1
"""


class StreamSlots:
    """At most `stream_max_per_user` open streams per user over all replicas. Each open
    stream holds a slot that lapses `lapse_s` after its last heartbeat, so the slots of a
    replica that died free themselves (60 s: three of `api.live`'s 20 s heartbeats)."""

    def __init__(
        self, settings: HeraldSettings, client: aioredis.Redis, lapse_s: float = 60.0
    ) -> None:
        self.settings = settings
        self.redis = client
        self.lapse_s = lapse_s
        self._take = client.register_script(_TAKE)

    async def take(self, user_id: str) -> str | None:
        """A slot's id, or None when the user holds the most streams already."""
        slot = uuid.uuid4().hex
        now = time.time()
        cap = self.settings.api.stream_max_per_user
        key = keys.user_stream_slots(self.settings, user_id)
        taken = await self._take(keys=[key], args=[slot, now, now + self.lapse_s, cap])
        return slot if taken else None

    async def renew(self, user_id: str, slot: str) -> None:
        key = keys.user_stream_slots(self.settings, user_id)
        lapse_at = time.time() + self.lapse_s
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {slot: lapse_at}, xx=True)
        pipe.pexpireat(key, int(lapse_at * 1000) + 1)
        await pipe.execute()

    async def release(self, user_id: str, slot: str) -> None:
        await self.redis.zrem(keys.user_stream_slots(self.settings, user_id), slot)
