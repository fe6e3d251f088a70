"""FCM through `firebase-admin`'s async path (`send_each_async`, ≤ 500 messages a call,
one HTTP/2 request per message over httpx), every exception sorted once into an outcome.

The FCM URL is fixed inside firebase-admin's messaging service; this module — and only
this one — points it elsewhere (the emulator in tests). When an extra CA is configured it
is trusted by both HTTP clients firebase-admin uses: the httpx client that sends (given a
verifying SSL context here) and google-auth's `requests` session that fetches OAuth
tokens (through `REQUESTS_CA_BUNDLE`, set for this sender process to certifi's bundle
plus the extra CA).

The client ignores proxy variables (`trust_env=False`): with `NO_PROXY` naming the FCM host,
httpx would route that host through a transport of its own, without the extra CA, and
every send would fail verification. A certificate that does not verify is not retried: it
is a configuration error, answered `failed` at once (and logged as an error) instead of
ten retries ending in the dead-letter stream. The CA bundle written for the extra CA is
the sender's own temporary file, removed when the sender closes.

firebase-admin's own retry transport is switched off (`max_retries=0`): it never closes the
503/429 responses it retries, so each leaks an HTTP/2 stream until the connection stalls
(firebase-admin 7.x), and Herald's retry schedule — persistent, honouring Retry-After — is
the one retry loop anyway. Every retryable answer comes back as `retry`.

What a message carries is decided by the pure `fcm_message`, from the row and its `rich`
extras (`cluster.tables.deliveries.Rich`); a row without extras is today's message:
notification title and body, the row's data, Android priority by lane and the
notification id as collapse key.

The service account rotates without a restart (`actors.senders.credentials`): a changed
`HERALD_FCM_CREDENTIALS_FILE` (a new key of the account, or another account of the
project) makes a new firebase app — its own OAuth token, its own HTTP/2 connections — for
the sends that follow; the old app finishes what it has in flight and is then deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import certifi
import firebase_admin
import httpx
import polars as pl
import pyarrow as pa
from firebase_admin import credentials, exceptions, messaging
from firebase_admin._http_client import GoogleAuthCredentialFlow
from firebase_admin._retry import HttpxRetry, HttpxRetryTransport
from firebase_admin.messaging import (
    QuotaExceededError,
    SenderIdMismatchError,
    ThirdPartyAuthError,
    UnregisteredError,
)

from actors.senders.base import Answer, RateLimitedClient, answer_table
from actors.senders.credentials import CredentialFile, Generations
from cluster.tables.deliveries import Rich, conform, parse_rich

log = logging.getLogger("herald.sender")

BATCH = 500  # send_each_async refuses more
# What a message is built from, per delivery row.
_COLUMNS = ("notification_id", "token", "title", "body", "data", "lane", "accepted_at")
# Exception class → outcome, most specific first; the first match wins.
OUTCOME_OF_ERROR: tuple[tuple[type[Exception], str], ...] = (
    (UnregisteredError, "dead_token"),
    (SenderIdMismatchError, "dead_token"),
    (ThirdPartyAuthError, "failed"),
    (QuotaExceededError, "retry"),
    (exceptions.ResourceExhaustedError, "retry"),
    (exceptions.UnavailableError, "retry"),
    (exceptions.InternalError, "retry"),
    (exceptions.DeadlineExceededError, "retry"),
    (exceptions.UnknownError, "retry"),
    (exceptions.InvalidArgumentError, "failed"),  # see outcome_of: a bad token is dead
    (exceptions.UnauthenticatedError, "failed"),
    (exceptions.PermissionDeniedError, "failed"),
)


def tls_refused(error: BaseException | None) -> bool:
    """Whether the error is (or was caused by) a certificate that did not verify: the
    sender's trust configuration, not the provider's state — retrying cannot help."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            error
        ):
            return True
        error = error.__cause__ or error.__context__ or getattr(error, "cause", None)
        seen += 1
    return False


def outcome_of(error: Exception | None) -> str:
    if error is None:
        return "delivered"
    if tls_refused(error):
        return "failed"
    if isinstance(error, exceptions.InvalidArgumentError) and "registration token" in str(error):
        return "dead_token"
    for kind, outcome in OUTCOME_OF_ERROR:
        if isinstance(error, kind):
            return outcome
    return "failed"


def fcm_message(row: dict[str, Any], rich: Rich, now: float) -> messaging.Message:
    """One delivery row (`_COLUMNS`) as firebase-admin's message, `rich` mapped as `Rich`
    says: the notification with its image, the row's data (string values, the deeplink
    among them) and Android's delivery options — priority, what is left of the TTL, the
    collapse key (the notification id unless `rich` has one). A silent push is data only:
    no `notification` and no `android.notification`. Herald sends iOS through APNs, so the
    `apns` and `webpush` blocks stay empty."""
    data = json.loads(row["data"])
    if rich.deeplink is not None:
        data["deeplink"] = rich.deeplink
    notification = None
    if not rich.background:
        notification = messaging.Notification(
            title=row["title"], body=row["body"], image=rich.image_url
        )
    return messaging.Message(
        token=row["token"],
        notification=notification,
        data=data,
        android=messaging.AndroidConfig(
            priority=rich.priority_for(row["lane"]),
            ttl=rich.ttl_left(row["accepted_at"], now),
            collapse_key=rich.collapse_key or row["notification_id"],
            notification=None if rich.background else android_notification(rich),
        ),
    )


def android_notification(rich: Rich) -> messaging.AndroidNotification | None:
    """Android's own display options, None when `rich` asks for none (a row without
    extras sends no `android.notification`, as before rich push). The tag groups like
    APNs' thread id, else replaces like the collapse key."""
    options = {
        "sound": rich.sound,
        "tag": rich.thread_id or rich.collapse_key,
        "click_action": rich.category,
        "channel_id": rich.channel_id,
        "notification_count": rich.badge,
    }
    given = {k: v for k, v in options.items() if v is not None}
    return messaging.AndroidNotification(**given) if given else None


def retry_after(error: Exception | None) -> float | None:
    response = getattr(error, "http_response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class FcmClient(RateLimitedClient):
    """`PushClient` for FCM."""

    channel = "fcm"
    apps: Generations[firebase_admin.App] | None = None
    ca_bundle: Path | None = None

    async def start(self) -> None:
        """Its own firebase app (a unique name per app), pointed at the configured
        endpoint, with our httpx client (`_own_http_client`)."""
        s = self.settings.fcm
        if s.credentials_file is None:
            raise RuntimeError("HERALD_FCM_CREDENTIALS_FILE is not set: cannot authenticate")
        check_s = self.settings.protection.credentials_check_s
        self.account_file = CredentialFile(s.credentials_file, check_s)
        self.verify = self._verify(s.ca_file)
        app, self.key_id = self._app(self.account_file.read())
        self.apps = Generations(app, _delete_app, grace_s=60.0)
        self.share_rate(1)
        # send_each_async puts a whole chunk in flight: chunk size is the concurrency bound.
        self.chunk = min(BATCH, s.concurrency)
        self.in_flight = asyncio.Semaphore(max(1, s.concurrency // self.chunk))

    def _app(self, content: bytes) -> tuple[firebase_admin.App, str | None]:
        """A firebase app of the service account `content` (raises ValueError when it is
        not one) and the account key's id."""
        s = self.settings.fcm
        account = json.loads(content)
        credential = credentials.Certificate(account)
        app = firebase_admin.initialize_app(
            credential, options={"projectId": s.project_id}, name=f"herald-{uuid.uuid4()}"
        )
        service = messaging._get_messaging_service(app)
        service._fcm_url = f"{s.endpoint.rstrip('/')}/v1/projects/{s.project_id}/messages:send"
        self._own_http_client(service)
        return app, account.get("private_key_id")

    def reload_credentials(self, force: bool = False) -> dict[str, Any]:
        """Take a changed service-account file (looked at every `credentials_check_s`, or
        now with `force`): new sends use an app with it. What is in use, after."""
        content = self.account_file.changed(force)
        reloaded = False
        if content is not None:
            try:
                app, key_id = self._app(content)
            except (ValueError, KeyError, TypeError) as error:  # not a service account
                log.error(
                    "fcm: the new service account does not load, keeping %s: %s", self.key_id, error
                )
            else:
                self.account_file.accept(content)
                self.apps.replace(app)
                log.info("fcm: now authenticating with key %s (was %s)", key_id, self.key_id)
                self.key_id, reloaded = key_id, True
        return {
            "credential": self.key_id,
            "fingerprint": self.account_file.fingerprint,
            "reloaded": reloaded,
        }

    def _verify(self, ca_file: Path | None) -> ssl.SSLContext | bool:
        """What the httpx clients verify with: the default roots, or — with an extra CA —
        a bundle of certifi's roots plus it, which google-auth's `requests` session (OAuth
        tokens) reads through REQUESTS_CA_BUNDLE; the file is removed at close."""
        if ca_file is None:
            return True
        fd, name = tempfile.mkstemp(prefix="herald-fcm-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as bundle:
            bundle.write(Path(certifi.where()).read_text() + "\n" + ca_file.read_text())
        self.ca_bundle = Path(name)
        os.environ["REQUESTS_CA_BUNDLE"] = name
        return ssl.create_default_context(cafile=name)

    def _own_http_client(self, service: messaging._MessagingService) -> None:
        """Replace firebase-admin's httpx client: no inner retries, and the extra CA trusted
        when one is configured."""
        wrapper = service._async_client
        wrapper._async_client = httpx.AsyncClient(
            http2=True,
            timeout=wrapper._timeout,
            headers=wrapper._headers,
            auth=GoogleAuthCredentialFlow(service._credential),
            transport=HttpxRetryTransport(retry=HttpxRetry(max_retries=0), verify=self.verify),
            trust_env=False,
        )

    async def send(self, batch: pa.Table) -> pa.Table:
        """Chunks of at most `BATCH` messages (`send_each_async`'s limit) in flight at once;
        a row whose `rich` is outside the contract is answered failed and not sent."""
        self.reload_credentials()
        frame = conform(pl.from_arrow(batch))
        riches, errors = parse_rich(frame["rich"])
        now = time.time()
        rows = frame.select(*_COLUMNS).iter_rows(named=True)
        built = [
            fcm_message(row, rich, now) if error is None else None
            for row, rich, error in zip(rows, riches, errors, strict=True)
        ]
        messages = [m for m in built if m is not None]
        chunks = [messages[i : i + self.chunk] for i in range(0, len(messages), self.chunk)]
        answers = await asyncio.gather(*[self._chunk(chunk) for chunk in chunks])
        sent = iter([a for chunk in answers for a in chunk])
        merged = [
            next(sent) if m is not None else ("failed", error, None, now)
            for m, error in zip(built, errors, strict=True)
        ]
        return answer_table(frame["delivery_id"].to_arrow(), merged)

    async def _chunk(self, chunk: list[messaging.Message]) -> list[Answer]:
        async with self.in_flight:
            await self.limiter.acquire(min(len(chunk), self.limiter.max_rate))
            try:
                with self.apps.use() as app:
                    response = await messaging.send_each_async(chunk, app=app)
            except (exceptions.FirebaseError, httpx.HTTPError, OSError) as exc:
                now = time.time()
                if tls_refused(exc):
                    log.error("fcm: the endpoint's certificate does not verify: %s", exc)
                    return [("failed", "TLS certificate not trusted", None, now)] * len(chunk)
                return [("retry", type(exc).__name__, None, now)] * len(chunk)
        now = time.time()
        out = []
        for r in response.responses:
            outcome = outcome_of(r.exception)
            if outcome == "failed" and tls_refused(r.exception):
                log.error("fcm: the endpoint's certificate does not verify: %s", r.exception)
            error = None if r.exception is None else _reason(r.exception)
            out.append((outcome, error, retry_after(r.exception), now))
        return out

    async def close(self) -> None:
        """Delete the apps (a replaced one's once it is idle), then the CA bundle."""
        if self.apps is not None:
            await self.apps.close_all()
            self.apps = None
        if self.ca_bundle is not None:
            self.ca_bundle.unlink(missing_ok=True)
            self.ca_bundle = None


async def _delete_app(app: firebase_admin.App) -> None:
    """firebase-admin closes its async client with `asyncio.run`, which cannot run inside
    our loop: close it here, then let `delete_app` do the rest from a thread."""
    service = messaging._get_messaging_service(app)
    await service._async_client.aclose()
    await asyncio.to_thread(firebase_admin.delete_app, app)


def _reason(error: Exception) -> str:
    code = getattr(error, "code", None)
    return f"{type(error).__name__}: {code}" if code else type(error).__name__
