"""Herald's metrics reach Ray's Prometheus endpoint with the names the docs promise: what
an operator's scrape of a node would show after an order update went through."""

from __future__ import annotations

import re
import time

import httpx

from ops.demo import apns_token, wait_final
from tests.cluster.test_e2e import register


def scrape(url: str) -> dict[str, float]:
    """`name{labels}` → value, Herald's series only; Ray's own labels dropped."""
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if not line.startswith("ray_herald_"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        mine = sorted(
            f"{k}={v}"
            for k, v in re.findall(r'(\w+)="([^"]*)"', labels)
            if k
            in (
                "type",
                "lane",
                "result",
                "channel",
                "outcome",
                "kind",
                "le",
                "shard",
                "table",
                "reason",
            )  # fmt: skip
        )
        key = f"{name}{{{','.join(mine)}}}"
        out[key] = out.get(key, 0.0) + float(value)
    return out


def test_order_update_shows_up_in_metrics(stack, api, uid):
    user = f"m-{uid}"
    register(api, user, "ios", apns_token())
    events = [{"event_id": f"m-{uid}-{i}", "type": "order.updated", "user_id": user,
               "order_id": f"o{i}", "status": "shipped"} for i in range(3)]  # fmt: skip
    assert api.post("/v1/events", json={"events": events}).status_code == 202
    assert api.post("/v1/events", json={"events": events[:1]}).json()["duplicate"]
    statuses = wait_final(api, [e["event_id"] for e in events], timeout_s=60)
    assert {s["state"] for s in statuses.values()} == {"delivered"}

    delivered = "ray_herald_notifications_total{channel=apns,lane=transactional,outcome=delivered}"
    accepted = (
        "ray_herald_events_ingested_total{lane=transactional,result=accepted,type=order.updated}"
    )
    duplicate = accepted.replace("result=accepted", "result=duplicate")
    latency_count = "ray_herald_delivery_latency_seconds_count{channel=apns,lane=transactional}"
    deadline = time.monotonic() + 60  # Ray pushes metrics to the exporter every few seconds
    while True:
        seen = scrape(stack.metrics_url)
        # Each process (router, senders, every ingress replica) exports on its own clock.
        if (
            seen.get(delivered, 0) >= 3
            and seen.get(latency_count, 0) >= 3
            and seen.get(accepted, 0) >= 3
            and seen.get(duplicate, 0) >= 1
        ):
            break
        assert time.monotonic() < deadline, sorted(seen)[:20]
        time.sleep(2)
    assert seen[accepted] >= 3
    assert seen[duplicate] >= 1
    assert (
        seen.get(
            "ray_herald_notifications_total{channel=inbox,lane=transactional,outcome=delivered}", 0
        )
        >= 3
    )


def test_shard_sizes_are_gauges(stack, api, uid):
    """Each shard reports its rows per table; a registration shows up in the device count
    the next time sizes are published (admin stats publishes them at once)."""
    before = api.get("/v1/admin/stats").json()
    register(api, f"ms-{uid}", "ios", apns_token())
    after = api.get("/v1/admin/stats").json()
    key = "ray_herald_shard_rows{shard=%d,table=devices}"
    total_before = sum(s["devices"] for s in before["shards"])
    total_after = sum(s["devices"] for s in after["shards"])
    assert total_after == total_before + 1
    deadline = time.monotonic() + 60
    while True:
        seen = scrape(stack.metrics_url)
        shown = [seen.get(key % s["shard"]) for s in after["shards"]]
        if shown == [s["devices"] for s in after["shards"]]:
            break
        assert time.monotonic() < deadline, (shown, after["shards"])
        time.sleep(2)


def test_suppressed_notifications_are_counted_by_reason(stack, api, uid):
    """An order update for a user with no device (and no inbox), and one whose pushes and
    inbox are off: each is suppressed, and the operator sees why."""
    lonely, quiet = f"nodev-{uid}", f"off-{uid}"
    register(api, quiet, "ios", apns_token())
    prefs = {"channels": {"push": False, "inbox": False, "email": False}}
    assert api.put(f"/v1/users/{quiet}/preferences", json=prefs).status_code == 200
    prefs = {"channels": {"push": True, "inbox": False, "email": False}}
    assert api.put(f"/v1/users/{lonely}/preferences", json=prefs).status_code == 200
    key = "ray_herald_notifications_suppressed_total{{lane=transactional,reason={}}}"
    before = scrape(stack.metrics_url)
    events = [{"event_id": f"sup-{uid}-{u}", "type": "order.updated", "user_id": u,
               "order_id": "o1", "status": "shipped"} for u in (lonely, quiet)]  # fmt: skip
    assert api.post("/v1/events", json={"events": events}).status_code == 202
    statuses = wait_final(api, [e["event_id"] for e in events], timeout_s=60)
    reasons = {s["suppressed_reason"] for s in statuses.values()}
    assert reasons == {"no_active_device", "channel_opt_out"}
    deadline = time.monotonic() + 60
    while True:
        seen = scrape(stack.metrics_url)
        grown = {
            reason: seen.get(key.format(reason), 0) - before.get(key.format(reason), 0)
            for reason in reasons
        }
        if all(n >= 1 for n in grown.values()):
            break
        assert time.monotonic() < deadline, grown
