"""Two lanes: an order update posted in the middle of a large marketing fan-out (a price
drop for a product thousands of users wish for) is delivered within the transactional
latency goal while the fan-out is still running; then the fan-out completes, nothing lost.

The goal is p99 ≤ 1 s from accepted to delivered. This 2-core box runs Redis, Ray, Serve,
both emulators, the fan-out and the test itself, so the test allows 2 s.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pyarrow as pa
import pytest

from ops.demo import apns_token, wait_final
from ops.importer import import_devices, import_wishlists

N_USERS = 4_000
GOAL_S = 2.0


def _populate(stack, users: list[str], tokens: list[str], product: str) -> None:
    """One iPhone and a one-item wishlist per user, through the bulk import path (the API
    has no batch registration; 8,000 single requests take over a minute on a busy 2-core
    box). It writes through the same shard methods the HTTP handlers call."""
    devices = pa.table({"user_id": users, "platform": ["ios"] * len(users), "token": tokens})
    assert import_devices(stack.settings, devices) == len(users)
    wishlists = pa.table({"user_id": users, "product_id": [product] * len(users)})
    assert import_wishlists(stack.settings, wishlists) == len(users)


class Received:
    """What the APNs emulator acknowledged for a set of tokens, read incrementally."""

    def __init__(self, emulator: httpx.Client, tokens: set[str]) -> None:
        self.emulator, self.tokens = emulator, tokens
        self.since = emulator.get("/_emulator/stats").json()["total"]
        self.counts: Counter[str] = Counter()
        self.apns_ids: dict[str, set[str]] = {}
        self.times: dict[str, list[float]] = {}

    def poll(self) -> int:
        body = self.emulator.get("/_emulator/received", params={"since": self.since}).json()
        self.since = body["next"]
        for item in body["received"]:
            if item["token"] in self.tokens and item["status"] == 200:
                self.counts[item["token"]] += 1
                self.apns_ids.setdefault(item["token"], set()).add(item["headers"]["apns-id"])
                self.times.setdefault(item["token"], []).append(item["received_at"])
        return len(self.counts)


@pytest.mark.slow
@pytest.mark.eventlog
def test_order_update_is_not_delayed_by_a_marketing_fan_out(stack, api, emulators, uid):
    product = f"hot-{uid}"
    users = [f"fan-{uid}-{i}" for i in range(N_USERS)]
    tokens = [apns_token() for _ in users]
    started = time.monotonic()
    _populate(stack, users, tokens, product)
    buyer, buyer_token = f"buyer-{uid}", apns_token()
    api.post("/v1/devices", json={"user_id": buyer, "platform": "ios", "token": buyer_token})
    print(f"\nregistered {N_USERS} users in {time.monotonic() - started:.1f} s")
    # A running system has its provider connections open: one order update first.
    order = {"event_id": f"warm-{uid}", "type": "order.updated", "user_id": buyer,
             "order_id": f"A-{uid}", "status": "paid"}  # fmt: skip
    api.post("/v1/events", json={"events": [order]})
    assert wait_final(api, [f"warm-{uid}"])[f"warm-{uid}"]["state"] == "delivered"

    marketing = Received(emulators["apns"], set(tokens))
    drop = {"event_id": f"drop-{uid}", "type": "price.dropped", "product_id": product,
            "old_price": 20, "new_price": 15, "title": "Hot item"}  # fmt: skip
    assert api.post("/v1/events", json={"events": [drop]}).status_code == 202
    fan_out_started = time.monotonic()

    # Wait until the fan-out is visibly under way: some pushes are at "Apple", not all.
    deadline = time.monotonic() + 30
    while (seen := marketing.poll()) < N_USERS // 20:
        assert time.monotonic() < deadline, f"the fan-out did not start ({seen} received)"
        time.sleep(0.05)
    assert seen < N_USERS, "the fan-out finished before the order update could be posted"

    _order_update_meanwhile(api, buyer, uid, marketing)

    # The fan-out completes: every wisher's phone got it exactly once, nothing lost.
    deadline = time.monotonic() + 90
    while marketing.poll() < N_USERS:
        assert time.monotonic() < deadline, f"only {len(marketing.counts)} of {N_USERS} got it"
        time.sleep(0.2)
    took = time.monotonic() - fan_out_started
    print(f"price drop reached all {N_USERS} phones in {took:.1f} s ({N_USERS / took:.0f}/s)")
    _assert_shown_once(marketing)
    _assert_wishers_notified(api, uid, users[:: N_USERS // 20])


def _order_update_meanwhile(api, buyer: str, uid: str, marketing: Received) -> None:
    """An order update posted while the fan-out runs is delivered within the goal, and
    the fan-out is still running when it is."""
    order = {"event_id": f"ord-{uid}", "type": "order.updated", "user_id": buyer,
             "order_id": f"A-{uid}", "status": "shipped"}  # fmt: skip
    posted = time.monotonic()
    assert api.post("/v1/events", json={"events": [order]}).status_code == 202
    while (status := api.get(f"/v1/notifications/ord-{uid}").json()).get("state") != "delivered":
        assert time.monotonic() - posted < 30, status
        time.sleep(0.02)
    latency = time.monotonic() - posted
    seen_then = marketing.poll()
    server_side = max(d["acked_at"] for d in status["deliveries"]) - status["accepted_at"]
    print(
        f"order update delivered {latency * 1000:.0f} ms after the POST "
        f"({server_side * 1000:.0f} ms accepted → last provider ack), while the price drop "
        f"had reached {seen_then} of {N_USERS} phones"
    )
    assert {d["channel"] for d in status["deliveries"]} == {"apns", "inbox"}
    assert seen_then < N_USERS, "no overlap: the fan-out was over before the order arrived"
    assert latency <= GOAL_S, f"order update took {latency:.2f} s under a marketing fan-out"


def _assert_shown_once(marketing: Received) -> None:
    """Shown once on every phone: a resend (at-least-once: an answer lost to a dropped
    stream, seen once on a loaded CI box) carries the same apns-id, which the phone
    collapses; more than one apns-id for a token would be a real double notification."""
    resent = sum(n - 1 for n in marketing.counts.values())
    print(f"pushes re-sent with the same apns-id: {resent}")
    if resent:
        twice = [t for t, n in marketing.counts.items() if n > 1][:3]
        first = min(min(v) for v in marketing.times.values())
        print(
            "first re-sent:",
            [
                (
                    t[:8],
                    min(marketing.times[t]) - first,
                    [round(x - min(marketing.times[t]), 3) for x in marketing.times[t]],
                )
                for t in twice
            ],
        )
    assert {len(ids) for ids in marketing.apns_ids.values()} == {1}
    assert resent <= N_USERS // 100


def _assert_wishers_notified(api, uid: str, sample: list[str]) -> None:
    """Each sampled wisher's price-drop notification is delivered and in their inbox, once."""
    for user in sample:
        status = api.get(f"/v1/notifications/drop-{uid}:{user}").json()
        deadline = time.monotonic() + 30
        while status["state"] != "delivered":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
            status = api.get(f"/v1/notifications/drop-{uid}:{user}").json()
        items = api.get(f"/v1/users/{user}/inbox").json()["items"]
        assert [i["notification_id"] for i in items] == [f"drop-{uid}:{user}"]
