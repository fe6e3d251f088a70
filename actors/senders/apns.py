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

The auth key rotates without a restart (`actors.senders.credentials`): a changed
`HERALD_APNS_KEY_FILE` makes a new aioapns client — new connections, new provider tokens —
for the sends that follow, while the old one finishes what it has in flight. The key id
goes with the file: a key file named as Apple names it, `AuthKey_<KEYID>.p8` (where the
configured path points, when it is a symlink), carries its key id; any other name keeps
`HERALD_APNS_KEY_ID`. So a rotation is: put the new `AuthKey_<NEW>.p8` beside the old one
and re-point the configured path (a symlink) at it, or copy it over a file named so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from aioapns.exceptions import MaxAttemptsExceeded
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from actors.senders.base import Answer, RateLimitedClient, answer_table, refused
from actors.senders.credentials import CredentialFile, Generations
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
log = logging.getLogger("herald.sender")
APPLE_KEY_FILE = re.compile(r"^AuthKey_([A-Za-z0-9]+)\.p8$")
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


def key_id_of(key_file: Path, configured: str | None) -> str | None:
    """The key id of a key file: Apple's file name says it (`AuthKey_<KEYID>.p8`, the name
    where a symlink points), else the configured `HERALD_APNS_KEY_ID`."""
    match = APPLE_KEY_FILE.match(Path(key_file).resolve().name)
    return match.group(1) if match else configured


def _checked_key(content: bytes) -> str:
    """The key as text, once it parses as the EC private key APNs wants (a file caught
    half-written must not replace a working key)."""
    key = serialization.load_pem_private_key(content, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC (ES256) private key")
    return content.decode()


def _protocol_for(host: str, port: int) -> type[APNsProductionClientProtocol]:
    return type(
        "HeraldApnsProtocol",
        (APNsProductionClientProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": port},
    )


class ApnsClient(RateLimitedClient):
    """`PushClient` for APNs."""

    channel = "apns"
    clients: Generations[APNs] | None = None

    async def start(self) -> None:
        """Inside the actor's loop: aioapns binds its pool to the running loop."""
        s = self.settings.apns
        if s.key_file is None:
            raise RuntimeError("HERALD_APNS_KEY_FILE is not set: cannot authenticate to APNs")
        self.key_file = CredentialFile(s.key_file, self.settings.protection.credentials_check_s)
        self.key_id = key_id_of(s.key_file, s.key_id)
        if self.key_id != s.key_id:
            log.warning(
                "apns: key file %s names key id %s, not HERALD_APNS_KEY_ID", s.key_file, self.key_id
            )
        context = ssl.create_default_context()
        if s.ca_file is not None:
            context.load_verify_locations(cafile=str(s.ca_file))
        context.set_alpn_protocols(["h2"])
        self.ssl_context = context
        client = self._client(_checked_key(self.key_file.read()), self.key_id)
        self.clients = Generations(client, _close, grace_s=2 * s.timeout_s)
        self.share_rate(1)
        self.in_flight = asyncio.Semaphore(s.concurrency)

    def _client(self, key: str, key_id: str | None) -> APNs:
        s = self.settings.apns
        client = APNs(
            key=key,
            key_id=key_id,
            team_id=s.team_id,
            topic=s.topic,
            max_connections=s.connections,
            ssl_context=self.ssl_context,
            err_func=self._quiet,
        )
        client.pool.protocol_class = _protocol_for(s.host, s.port)
        return client

    def reload_credentials(self, force: bool = False) -> dict[str, Any]:
        """Take a changed key file (looked at every `credentials_check_s`, or now with
        `force`): new requests use a client with the new key. What is in use, after."""
        content = self.key_file.changed(force)
        reloaded = False
        if content is not None:
            key_id = key_id_of(self.settings.apns.key_file, self.settings.apns.key_id)
            try:
                client = self._client(_checked_key(content), key_id)
            except ValueError as error:
                log.error(
                    "apns: the new key file does not load, keeping key %s: %s", self.key_id, error
                )
            else:
                self.key_file.accept(content)
                self.clients.replace(client)
                log.info("apns: now signing with key %s (was %s)", key_id, self.key_id)
                self.key_id, reloaded = key_id, True
        return {
            "credential": self.key_id,
            "fingerprint": self.key_file.fingerprint,
            "reloaded": reloaded,
        }

    async def _quiet(self, request: NotificationRequest, result: object) -> None:
        """Errors are outcomes we record, not log lines per notification."""

    async def send(self, batch: pa.Table) -> pa.Table:
        """Every row in flight at once (bounded by `apns_concurrency` and the limiter); a
        row whose `rich` is outside the contract is answered failed without a request."""
        self.reload_credentials()
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
                    with self.clients.use() as client:
                        result = await client.send_notification(request)
            except (TimeoutError, ApnsConnectionError, MaxAttemptsExceeded, OSError) as e:
                return "retry", type(e).__name__, None, time.time()
        outcome = outcome_of(str(result.status), result.description)
        error = None if outcome == "delivered" else result.description
        return outcome, error, None, time.time()

    async def close(self) -> None:
        """Close aioapns' connection pools (a replaced client's once it is idle)."""
        if self.clients is not None:
            await self.clients.close_all()


async def _close(client: APNs) -> None:
    client.pool.close()
