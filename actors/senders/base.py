"""The one interface every channel's provider client implements.

A provider client turns a `DELIVERIES` batch into provider requests and sorts every answer
into exactly one outcome (see `cluster.tables.deliveries.OUTCOMES`): *delivered*, *retry*
(429 with Retry-After, 5xx, connection errors), *dead_token* (the token will never work
again) or *failed* (payload/auth errors: retrying cannot help). The sorting table lives in
each provider's own module so it is decided once.

`ChannelSender` (`actors.sender`) is the only caller: it starts the client once inside its
actor's event loop, hands it batches, and — for push channels, whose senders grow replicas
(`actors.sender_pool`) — tells it how many replicas share the lane's rate ceiling.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

import pyarrow as pa
from aiolimiter import AsyncLimiter

from cluster.settings import HeraldSettings
from cluster.tables.deliveries import RESULTS

# One delivery's answer: (outcome, error, retry_after_s, acked_at), see RESULTS.
Answer = tuple[str, str | None, float | None, float]


class ProviderClient(Protocol):
    """A long-lived client of one provider, created inside the running event loop."""

    async def start(self) -> None:
        """Open connections; called once, inside the sender actor's event loop, because
        aioapns and httpx bind their pools to the loop they are created in."""

    async def send(self, batch: pa.Table) -> pa.Table:
        """Send every row of a DELIVERIES batch concurrently and answer a RESULTS table,
        one row per delivery: the provider's answer sorted into an outcome, never raised,
        so one bad token cannot fail the batch's other rows."""

    async def close(self) -> None:
        """Close connections (a sender's end; a crashed actor's just die with it)."""


@runtime_checkable
class PushClient(ProviderClient, Protocol):
    """A push provider's client (APNs, FCM): its lane's senders grow replicas, which divide
    the provider's rate ceiling among themselves."""

    def share_rate(self, replicas: int) -> None:
        """This client is one of `replicas` sending its lane: keep to that share of the
        lane's rate ceiling, so grown senders never push the project over its quota."""


class RateLimitedClient:
    """What the push clients share: their lane, the limiter holding them to their share
    of the lane's rate ceiling, and the semaphore bounding their requests in flight (both
    made in `start`, inside the running loop)."""

    channel: str  # the settings' name of the provider (`send_rate_per_s(channel, lane)`)

    def __init__(self, settings: HeraldSettings, lane: str = "transactional") -> None:
        self.settings = settings
        self.lane = lane
        self.limiter: AsyncLimiter | None = None
        self.in_flight: asyncio.Semaphore | None = None

    def share_rate(self, replicas: int) -> None:
        """This client is one of `replicas` sending its lane: it keeps to its share of the
        lane's rate ceiling, so grown senders never push the project over its quota."""
        rate = self.settings.send_rate_per_s(self.channel, self.lane)
        self.limiter = AsyncLimiter(rate / replicas, 1)


def answer_table(delivery_ids: pa.Array | list[str], answers: list[Answer]) -> pa.Table:
    """The RESULTS table of a batch from its answers, in the batch's order: every client
    answers the same shape, so it is built in one place."""
    outcomes, errors, retry_after, acked_at = zip(*answers, strict=True) if answers else [()] * 4
    return pa.table(
        {
            "delivery_id": delivery_ids,
            "outcome": pa.array(outcomes, pa.string()),
            "error": pa.array(errors, pa.string()),
            "retry_after_s": pa.array(retry_after, pa.float64()),
            "acked_at": pa.array(acked_at, pa.float64()),
        },
        schema=RESULTS,
    )


async def refused(error: str) -> Answer:
    """The answer to a row that cannot be sent as asked (its `rich` outside the contract):
    failed — retrying cannot help — without a request, so the rest of the batch goes out."""
    return "failed", error, None, time.time()
