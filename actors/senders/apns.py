"""APNs through `aioapns`: provider-token (JWT) auth, HTTP/2 connections kept open, every row
of a batch in flight at once (bounded), every answer sorted once into an outcome.

aioapns has no host/port argument; `_protocol_for` gives its pool a protocol subclass that
names the server (Apple's, or the emulator in tests), and `ssl_context` trusts an extra CA
when one is configured. aioapns does not raise on a non-2xx answer: we read `status` and
`description` of every result.

What a request carries is decided by two pure functions, `apns_payload` (the JSON) and
`apns_request` (the headers, through aioapns' request fields), from the row and its
`rich` extras (`cluster.tables.deliveries.Rich`); a row without extras is an alert with
title, body, sound "default" and the row's data keys, as before rich push.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from typing import Any

import polars as pl
import pyarrow as pa
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from aioapns.exceptions import MaxAttemptsExceeded

from actors.senders.base import Answer, RateLimitedClient, answer_table, refused
from cluster.tables.deliveries import Rich, conform, parse_rich

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
PRIORITY = {"high": 10, "normal": 5}  # apns-priority of an alert push
# What a request is built from, per delivery row.
_COLUMNS = ("delivery_id", "notification_id", "token", "title", "body", "data", "lane",
            "accepted_at")  # fmt: skip


def outcome_of(status: str, reason: str | None) -> str:
    if status == "200":
        return "delivered"
    if reason in OUTCOME_OF_REASON:
        return OUTCOME_OF_REASON[reason]
    return "retry" if status in ("429",) or status.startswith("5") else "failed"


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """Only the keys with a value: an absent key is Apple's default, a null one is not."""
    return {k: v for k, v in fields.items() if v is not None}


def apns_payload(title: str, body: str, data: str, rich: Rich) -> dict[str, Any]:
    """The JSON body: `aps` as `rich` asks (see `Rich` for each key), the row's `data`
    keys at the top level as the apps have always read them, then the image URL (for the
    app's notification service extension, which `mutable-content` wakes) and the
    deeplink. A silent push carries only `content-available` in `aps`."""
    if rich.background:
        aps: dict[str, Any] = {"content-available": 1}
    else:
        aps = _given(
            {
                "alert": _given({"title": title, "subtitle": rich.subtitle, "body": body}),
                "sound": rich.sound or "default",
                "badge": rich.badge,
                "thread-id": rich.thread_id,
                "category": rich.category,
                "mutable-content": 1 if rich.image_url else None,
            }
        )
    payload: dict[str, Any] = {"aps": aps}
    payload.update(json.loads(data))
    payload.update(_given({"image_url": rich.image_url, "deeplink": rich.deeplink}))
    return payload


def apns_request(row: dict[str, Any], rich: Rich, now: float) -> NotificationRequest:
    """One delivery row (`_COLUMNS`) as aioapns' request, which writes the headers: the
    apns-id is derived from the delivery id (a resend is the same push to Apple), the
    collapse id is `rich`'s or the notification id (cut to Apple's 64 bytes), a silent
    push is `background` at priority 5 (Apple refuses it at 10), and `ttl_s` becomes
    `apns-expiration` (aioapns adds the send time to what is left of it)."""
    nid = row["notification_id"]
    return NotificationRequest(
        device_token=row["token"],
        message=apns_payload(row["title"], row["body"], row["data"], rich),
        notification_id=str(uuid.uuid5(_ID_NAMESPACE, row["delivery_id"])),
        time_to_live=rich.ttl_left(row["accepted_at"], now),
        priority=5 if rich.background else PRIORITY[rich.priority_for(row["lane"])],
        collapse_key=rich.collapse_key or nid.encode()[:64].decode("utf-8", "ignore"),
        push_type=PushType.BACKGROUND if rich.background else PushType.ALERT,
    )


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
        """Every row in flight at once (bounded by `apns_concurrency` and the limiter); a
        row whose `rich` is outside the contract is answered failed without a request."""
        frame = conform(pl.from_arrow(batch))
        riches, errors = parse_rich(frame["rich"])
        now = time.time()
        rows = frame.select(*_COLUMNS).iter_rows(named=True)
        answers = await asyncio.gather(
            *[
                self._one(apns_request(row, rich, now)) if error is None else refused(error)
                for row, rich, error in zip(rows, riches, errors, strict=True)
            ]
        )
        return answer_table(frame["delivery_id"].to_arrow(), answers)

    async def _one(self, request: NotificationRequest) -> Answer:
        """One request under the in-flight bound and the rate limiter, its answer sorted."""
        async with self.in_flight, self.limiter:
            try:
                # aioapns waits forever for an answer that never comes (a dropped stream):
                # bound it, and a resend carries the same apns-id.
                async with asyncio.timeout(self.settings.apns.timeout_s):
                    result = await self.client.send_notification(request)
            except (TimeoutError, ApnsConnectionError, MaxAttemptsExceeded, OSError) as e:
                return "retry", type(e).__name__, None, time.time()
        outcome = outcome_of(str(result.status), result.description)
        error = None if outcome == "delivered" else result.description
        return outcome, error, None, time.time()

    async def close(self) -> None:
        """Close aioapns' connection pool."""
        if self.client is not None:
            self.client.pool.close()
