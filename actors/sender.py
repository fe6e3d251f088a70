"""ChannelSender: one actor per (channel, lane) that owns that provider's long-lived
connections for that lane.

Batches come in, every row goes out concurrently inside the provider client, a RESULTS
table goes back. The client is created lazily inside the actor's own event loop (aioapns
and httpx bind to the loop they are created in). The transactional and the marketing lane
each have their own sender per channel — own process, connections, in-flight bound and
rate limit (marketing's is capped by `HERALD_MARKETING_*_RATE_PER_S`) — so a large
marketing fan-out never queues in front of an order update. Push senders grow more
replicas of themselves with their lane's backlog (`actors.sender_pool`).
"""

from __future__ import annotations

import asyncio

import pyarrow as pa

from actors.senders.base import ProviderClient, PushClient
from cluster.logs import configure_logging
from cluster.settings import HeraldSettings


def provider_client(
    settings: HeraldSettings, channel: str, lane: str = "transactional"
) -> ProviderClient:
    """The one place that maps a channel name to its provider module. Imported here, not
    at the top: each sender process loads only its own provider's library (aioapns,
    firebase-admin and their dependencies are slow to import and large in memory)."""
    if channel == "apns":
        from actors.senders.apns import ApnsClient

        return ApnsClient(settings, lane)
    if channel == "fcm":
        from actors.senders.fcm import FcmClient

        return FcmClient(settings, lane)
    if channel == "inbox":
        from actors.senders.inbox import InboxClient

        return InboxClient(settings)
    if channel == "webhook":
        from actors.senders.webhook import WebhookClient

        return WebhookClient(settings)
    raise ValueError(f"unknown channel {channel!r}")


class ChannelSender:
    """Plain class; `actors.bootstrap` wraps it with `ray.remote` and its options."""

    def __init__(self, settings: HeraldSettings, channel: str, lane: str, replica: int = 0) -> None:
        configure_logging(settings)
        self.channel = channel
        self.lane = lane
        self.replica = replica
        self.client = provider_client(settings, channel, lane)
        self._started: asyncio.Task | None = None
        self.sent = 0
        self.in_flight = 0  # rows handed in and not answered yet
        self.replicas = 1

    async def send(self, batch: pa.Table, replicas: int = 1) -> pa.Table:
        """Send a batch as one of `replicas` senders of this (channel, lane): a push client
        keeps to that share of the lane's rate ceiling (`actors.sender_pool`)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.client.start())
        await self._started
        if replicas != self.replicas and isinstance(self.client, PushClient):
            self.client.share_rate(replicas)
            self.replicas = replicas
        self.in_flight += batch.num_rows
        try:
            results = await self.client.send(batch)
        finally:
            self.in_flight -= batch.num_rows
        self.sent += batch.num_rows
        return results

    async def reload_credentials(self) -> dict[str, object]:
        """Look at the provider's credentials file now (`POST /v1/admin/credentials/reload`):
        a changed one is used for the sends that follow. Which sender, what it uses now
        (key id, content fingerprint) and whether this call changed it."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.client.start())
        await self._started
        reload = getattr(self.client, "reload_credentials", None)
        answer = reload(force=True) if reload is not None else {"credential": None}
        return {"channel": self.channel, "lane": self.lane, "replica": self.replica, **answer}

    async def ping(self) -> dict[str, int | str]:
        return {
            "channel": self.channel,
            "lane": self.lane,
            "replica": self.replica,
            "sent": self.sent,
            "in_flight": self.in_flight,
        }
