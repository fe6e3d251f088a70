"""Provider limits from settings hold: the send rate (aiolimiter) and the requests in flight,
per provider and per lane, checked from what the emulators received and when.

Only lower bounds on time are asserted (a limit makes sending slower than it could be), so
a slow machine cannot fail these; a limit that is not applied sends everything at once."""

from __future__ import annotations

import asyncio
import json
import time

import pyarrow as pa
import pytest

from actors.sender import provider_client
from cluster.tables.deliveries import DELIVERIES
from ops.demo import apns_token, fcm_token

pytestmark = pytest.mark.slow


def batch(uid: str, channel: str, n: int, lane: str) -> pa.Table:
    token = apns_token if channel == "apns" else fcm_token
    ids = [f"lim-{uid}-{i}" for i in range(n)]
    return pa.table(
        {
            "delivery_id": [f"{i}|d" for i in ids],
            "notification_id": ids,
            "user_id": ["u"] * n,
            "device_id": ["d"] * n,
            "channel": [channel] * n,
            "token": [token() for _ in ids],
            "title": ["Limits"] * n,
            "body": ["under the quota"] * n,
            "data": [json.dumps({"notification_id": i}) for i in ids],
            "lane": [lane] * n,
            "accepted_at": [time.time()] * n,
            "rich": [None] * n,
            "locale": [None] * n,
            "template_version": [None] * n,
        },
        schema=DELIVERIES,
    )


async def send(settings, channel: str, rows: pa.Table, lane: str) -> pa.Table:
    client = provider_client(settings, channel, lane)
    await client.start()
    try:
        return await client.send(rows)
    finally:
        await client.close()


def arrivals(emulator, uid: str) -> list[float]:
    items = emulator.get("/_emulator/received").json()["received"]
    return sorted(i["received_at"] for i in items if f"lim-{uid}-" in json.dumps(i))


@pytest.fixture
def clean(emulators):
    for emulator in emulators.values():
        emulator.post("/_emulator/reset").raise_for_status()
    yield emulators
    for emulator in emulators.values():
        emulator.post("/_emulator/reset").raise_for_status()


@pytest.mark.parametrize(
    ("channel", "overrides", "lane"),
    [
        ("fcm", {"fcm_rate_per_s": 100, "fcm_concurrency": 100}, "transactional"),
        ("apns", {"marketing_apns_rate_per_s": 100}, "marketing"),
    ],
)
def test_send_rate_ceiling(stack, clean, uid, channel, overrides, lane):
    """300 sends at 100/s: the first second's worth may burst, the rest waits ≥ ~2 s."""
    settings = stack.settings.with_overrides(**overrides)
    rows = batch(uid, channel, 300, lane)
    # Measured from the moment sending starts, not from the first arrival: a slow first
    # request (connection set-up on a busy box) would otherwise eat into the window and
    # a working limiter could look too fast.
    started = time.time()
    results = asyncio.run(send(settings, channel, rows, lane))
    assert set(results["outcome"].to_pylist()) == {"delivered"}
    got = arrivals(clean[channel], uid)
    assert len(got) == 300
    # 100 may burst at once; the other 200 need 2 s at 100/s.
    took = got[-1] - started
    assert took >= 1.95, f"300 sends took {took:.2f} s at 100/s"


def test_the_transactional_lane_keeps_the_full_apns_rate(stack, clean, uid):
    """The marketing ceiling does not apply to order updates: 300 go out well within 1 s
    of the emulator's own pace (here the rate is not what limits)."""
    settings = stack.settings.with_overrides(marketing_apns_rate_per_s=10)
    rows = batch(uid, "apns", 300, "transactional")
    results = asyncio.run(send(settings, "apns", rows, "transactional"))
    assert set(results["outcome"].to_pylist()) == {"delivered"}
    got = arrivals(clean["apns"], uid)
    # at 10/s this would take 29 s
    assert got[-1] - got[0] < 20


def test_requests_in_flight_are_bounded(stack, clean, uid):
    """4 in flight and 200 ms per answer: 40 sends need at least 10 rounds (≥ ~2 s)."""
    clean["apns"].post("/_emulator/faults", json={"latency_ms": 200}).raise_for_status()
    settings = stack.settings.with_overrides(apns_concurrency=4)
    started = time.monotonic()
    results = asyncio.run(send(settings, "apns", batch(uid, "apns", 40, "transactional"),
                               "transactional"))  # fmt: skip
    took = time.monotonic() - started
    assert set(results["outcome"].to_pylist()) == {"delivered"}
    assert took >= 1.9, f"40 sends with 4 in flight took {took:.2f} s"
