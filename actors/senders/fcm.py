"""FCM through `firebase-admin`'s async path (`send_each_async`, ≤ 500 messages a call,
one HTTP/2 request per message over httpx), every exception sorted once into an outcome.

The FCM URL is fixed inside firebase-admin's messaging service; this module — and only
this one — points it elsewhere (the emulator in tests). When an extra CA is configured it
is trusted by both HTTP clients firebase-admin uses: the httpx client that sends (given a
verifying SSL context here) and google-auth's `requests` session that fetches OAuth
tokens (through `REQUESTS_CA_BUNDLE`, set for this sender process to certifi's bundle
plus the extra CA).

firebase-admin's own retry transport is switched off (`max_retries=0`): it never closes the
503/429 responses it retries, so each leaks an HTTP/2 stream until the connection stalls
(firebase-admin 7.x), and Herald's retry schedule — persistent, honouring Retry-After — is
the one retry loop anyway. Every retryable answer comes back as `retry`.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import tempfile
import time
import uuid
from pathlib import Path

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

from actors.senders.base import RateLimitedClient
from cluster.tables.deliveries import RESULTS

BATCH = 500  # send_each_async refuses more
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


def outcome_of(error: Exception | None) -> str:
    if error is None:
        return "delivered"
    if isinstance(error, exceptions.InvalidArgumentError) and "registration token" in str(error):
        return "dead_token"
    for kind, outcome in OUTCOME_OF_ERROR:
        if isinstance(error, kind):
            return outcome
    return "failed"


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
    app: firebase_admin.App | None = None

    async def start(self) -> None:
        """Its own firebase app (a unique name per client), pointed at the configured
        endpoint, with our httpx client (`_own_http_client`)."""
        s = self.settings.fcm
        if s.credentials_file is None:
            raise RuntimeError("HERALD_FCM_CREDENTIALS_FILE is not set: cannot authenticate")
        credential = credentials.Certificate(str(s.credentials_file))
        self.app = firebase_admin.initialize_app(
            credential, options={"projectId": s.project_id}, name=f"herald-{uuid.uuid4()}"
        )
        service = messaging._get_messaging_service(self.app)
        service._fcm_url = f"{s.endpoint.rstrip('/')}/v1/projects/{s.project_id}/messages:send"
        self._own_http_client(service, s.ca_file)
        self.share_rate(1)
        # send_each_async puts a whole chunk in flight: chunk size is the concurrency bound.
        self.chunk = min(BATCH, s.concurrency)
        self.in_flight = asyncio.Semaphore(max(1, s.concurrency // self.chunk))

    def _own_http_client(self, service: messaging._MessagingService, ca_file: Path | None) -> None:
        """Replace firebase-admin's httpx client: no inner retries, and the extra CA trusted
        when one is configured."""
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            bundle = Path(tempfile.gettempdir()) / f"herald-fcm-ca-{os.getpid()}.pem"
            bundle.write_text(Path(certifi.where()).read_text() + "\n" + ca_file.read_text())
            os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
            verify = ssl.create_default_context(cafile=str(bundle))
        wrapper = service._async_client
        wrapper._async_client = httpx.AsyncClient(
            http2=True,
            timeout=wrapper._timeout,
            headers=wrapper._headers,
            auth=GoogleAuthCredentialFlow(service._credential),
            mounts={
                "https://": HttpxRetryTransport(retry=HttpxRetry(max_retries=0), verify=verify)
            },
        )

    def _message(self, token: str, nid: str, title: str, body: str, data: str, lane: str):
        return messaging.Message(
            token=token,
            notification=messaging.Notification(title=title, body=body),
            data=json.loads(data),
            android=messaging.AndroidConfig(
                priority="high" if lane == "transactional" else "normal", collapse_key=nid
            ),
        )

    async def send(self, batch: pa.Table) -> pa.Table:
        """Chunks of at most `BATCH` messages (`send_each_async`'s limit) in flight at once."""
        frame = pl.from_arrow(batch)
        messages = [
            self._message(*row)
            for row in frame.select("token", "notification_id", "title", "body", "data",
                                    "lane").iter_rows()
        ]  # fmt: skip
        chunks = [messages[i : i + self.chunk] for i in range(0, len(messages), self.chunk)]
        answers = await asyncio.gather(*[self._chunk(chunk) for chunk in chunks])
        flat = [a for chunk in answers for a in chunk]
        return pa.table(
            {
                "delivery_id": frame["delivery_id"].to_arrow(),
                "outcome": [a[0] for a in flat],
                "error": [a[1] for a in flat],
                "retry_after_s": pa.array([a[2] for a in flat], pa.float64()),
                "acked_at": [a[3] for a in flat],
            },
            schema=RESULTS,
        )

    async def _chunk(self, chunk: list) -> list[tuple[str, str | None, float | None, float]]:
        async with self.in_flight:
            await self.limiter.acquire(min(len(chunk), self.limiter.max_rate))
            try:
                response = await messaging.send_each_async(chunk, app=self.app)
            except (exceptions.FirebaseError, httpx.HTTPError, OSError) as exc:
                now = time.time()
                return [("retry", type(exc).__name__, None, now)] * len(chunk)
        now = time.time()
        out = []
        for r in response.responses:
            outcome = outcome_of(r.exception)
            error = None if r.exception is None else _reason(r.exception)
            out.append((outcome, error, retry_after(r.exception), now))
        return out

    async def close(self) -> None:
        """firebase-admin closes its async client with `asyncio.run`, which cannot run inside
        our loop: close it here, then let `delete_app` do the rest from a thread."""
        if self.app is not None:
            service = messaging._get_messaging_service(self.app)
            await service._async_client.aclose()
            await asyncio.to_thread(firebase_admin.delete_app, self.app)
            self.app = None


def _reason(error: Exception) -> str:
    code = getattr(error, "code", None)
    return f"{type(error).__name__}: {code}" if code else type(error).__name__
