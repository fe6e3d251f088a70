"""APNs through `aioapns`: provider-token (JWT) auth, HTTP/2 connections kept open, every row
of a batch in flight at once (bounded), every answer sorted once into an outcome.

aioapns has no host/port argument; `_protocol_for` gives its pool a protocol subclass that
names the server (Apple's, or the emulator in tests), and `ssl_context` trusts an extra CA
when one is configured. aioapns does not raise on a non-2xx answer: we read `status` and
`description` of every result.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid

import polars as pl
import pyarrow as pa
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from aioapns.exceptions import MaxAttemptsExceeded

from actors.senders.base import RateLimitedClient
from cluster.tables.deliveries import RESULTS

# Apple's reason → outcome. Anything not listed that is 5xx or 429 is "retry", else "failed".
OUTCOME_OF_REASON = {
    "Unregistered": "dead_token",  # 410: the app is gone from the device
    "BadDeviceToken": "dead_token",
    "DeviceTokenNotForTopic": "dead_token",
    "TooManyRequests": "retry",
    "InternalServerError": "retry",
    "ServiceUnavailable": "retry",
    "Shutdown": "retry",
    "IdleTimeout": "retry",
    "ExpiredProviderToken": "retry",  # aioapns mints a fresh token on the next connection
    "InvalidProviderToken": "failed",
    "MissingProviderToken": "failed",
    "PayloadTooLarge": "failed",
    "PayloadEmpty": "failed",
    "MissingTopic": "failed",
    "BadTopic": "failed",
    "TopicDisallowed": "failed",
}
_ID_NAMESPACE = uuid.UUID("6f1d5c1e-6d1f-4b35-8f3c-2a7f4c8f9a10")


def outcome_of(status: str, reason: str | None) -> str:
    if status == "200":
        return "delivered"
    if reason in OUTCOME_OF_REASON:
        return OUTCOME_OF_REASON[reason]
    return "retry" if status in ("429",) or status.startswith("5") else "failed"


def _protocol_for(host: str, port: int) -> type[APNsProductionClientProtocol]:
    return type(
        "HeraldApnsProtocol",
        (APNsProductionClientProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": port},
    )


class ApnsClient(RateLimitedClient):
    """`PushClient` for APNs."""

    channel = "apns"
    client: APNs | None = None

    async def start(self) -> None:
        """Inside the actor's loop: aioapns binds its pool to the running loop."""
        s = self.settings.apns
        if s.key_file is None:
            raise RuntimeError("HERALD_APNS_KEY_FILE is not set: cannot authenticate to APNs")
        context = ssl.create_default_context()
        if s.ca_file is not None:
            context.load_verify_locations(cafile=str(s.ca_file))
        context.set_alpn_protocols(["h2"])
        self.client = APNs(
            key=s.key_file.read_text(),
            key_id=s.key_id,
            team_id=s.team_id,
            topic=s.topic,
            max_connections=s.connections,
            ssl_context=context,
            err_func=self._quiet,
        )
        self.client.pool.protocol_class = _protocol_for(s.host, s.port)
        self.share_rate(1)
        self.in_flight = asyncio.Semaphore(s.concurrency)

    async def _quiet(self, request: NotificationRequest, result: object) -> None:
        """Errors are outcomes we record, not log lines per notification."""

    async def send(self, batch: pa.Table) -> pa.Table:
        """Every row in flight at once (bounded by `apns_concurrency` and the limiter)."""
        frame = pl.from_arrow(batch)
        rows = frame.select("delivery_id", "notification_id", "token", "title", "body", "data",
                            "lane").iter_rows()  # fmt: skip
        answers = await asyncio.gather(*[self._one(*row) for row in rows])
        return pa.table(
            {
                "delivery_id": frame["delivery_id"].to_arrow(),
                "outcome": [a[0] for a in answers],
                "error": [a[1] for a in answers],
                "retry_after_s": pa.nulls(len(answers), pa.float64()),
                "acked_at": [a[2] for a in answers],
            },
            schema=RESULTS,
        )

    async def _one(
        self, delivery_id: str, nid: str, token: str, title: str, body: str, data: str, lane: str
    ) -> tuple[str, str | None, float]:
        message = {"aps": {"alert": {"title": title, "body": body}, "sound": "default"}}
        message.update(json.loads(data))
        request = NotificationRequest(
            device_token=token,
            message=message,
            notification_id=str(uuid.uuid5(_ID_NAMESPACE, delivery_id)),  # same id on resend
            priority=10 if lane == "transactional" else 5,
            collapse_key=nid.encode()[:64].decode("utf-8", "ignore"),
            push_type=PushType.ALERT,
        )
        async with self.in_flight, self.limiter:
            try:
                # aioapns waits forever for an answer that never comes (a dropped stream):
                # bound it, and a resend carries the same apns-id.
                async with asyncio.timeout(self.settings.apns.timeout_s):
                    result = await self.client.send_notification(request)
            except (TimeoutError, ApnsConnectionError, MaxAttemptsExceeded, OSError) as e:
                return "retry", type(e).__name__, time.time()
        outcome = outcome_of(str(result.status), result.description)
        return outcome, None if outcome == "delivered" else result.description, time.time()

    async def close(self) -> None:
        """Close aioapns' connection pool."""
        if self.client is not None:
            self.client.pool.close()
