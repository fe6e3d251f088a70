"""Slow clients do not keep connections open: 50 connections that send a request body a
byte every 2 s are answered 408 and closed within HERALD_HTTP_READ_TIMEOUT_S (+ margin),
and the API keeps answering meanwhile. 50 connections that drip their *headers* are
answered 408 and closed the same way, by the header deadline the ingress installs in
Serve's proxy (`api.header_timeout`)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httpx
import pytest

CONNECTIONS = 50
DRIP_S = 2.0
MARGIN_S = 10.0

pytestmark = pytest.mark.timeout(180)


async def _slow_client(host: str, port: int, head: bytes, drip: bytes) -> tuple[float, bytes]:
    """Send `head`, then one byte of `drip` every DRIP_S until the server closes; the
    seconds the connection stayed open and what the server answered."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    writer.write(head)
    await writer.drain()
    answer = b""

    async def read_all() -> None:
        nonlocal answer
        while chunk := await reader.read(4096):
            answer += chunk

    reading = asyncio.ensure_future(read_all())
    try:
        for byte in drip:
            done, _ = await asyncio.wait({reading}, timeout=DRIP_S)
            if done:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
        await asyncio.wait_for(reading, timeout=DRIP_S)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        reading.cancel()
        writer.close()
    return time.monotonic() - started, answer


async def _slow_clients(url: str, head: bytes, drip: bytes) -> list[tuple[float, bytes]]:
    parts = urlsplit(url)
    return await asyncio.gather(
        *[_slow_client(parts.hostname, parts.port, head, drip) for _ in range(CONNECTIONS)]
    )


def _limit(stack) -> float:
    return stack.settings.protection.http_read_timeout_s + MARGIN_S


async def test_slow_bodies_are_answered_408_and_closed(stack):
    body_length = 2_000  # the drip below never gets there: 40 bytes in 80 s
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer test-admin\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_length}\r\n\r\n"
    ).encode()
    drip = b'{"events": [' + b" " * 28
    started = time.monotonic()
    clients = asyncio.ensure_future(_slow_clients(stack.api_url, head, drip))
    # Meanwhile the API answers others at once.
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as api:
        await asyncio.sleep(1)
        assert (await api.get("/healthz")).status_code == 200
    results = await clients
    elapsed = time.monotonic() - started
    open_for = sorted(seconds for seconds, _ in results)
    assert open_for[-1] < _limit(stack), f"longest open {open_for[-1]:.1f} s (all: {open_for})"
    assert elapsed < _limit(stack) + 5
    for _, answer in results:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer and b"connection: close" in answer.lower()


async def test_slow_headers_are_answered_408_and_closed(stack):
    """`api.header_timeout`, installed in Serve's proxy by the ingress replica."""
    head = b"POST /v1/events HTTP/1.1\r\nHost: herald\r\n"
    drip = b"X-Slow: " + b"a" * 4  # 12 bytes: 24 s, past the limit
    results = await _slow_clients(stack.api_url, head, drip)
    open_for = max(seconds for seconds, _ in results)
    assert open_for < _limit(stack), f"slow headers stayed open {open_for:.1f} s"
    for _, answer in results:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer and b"connection: close" in answer.lower()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as api:
        assert (await api.get("/healthz")).status_code == 200
