"""Push senders grow with a lane's backlog and shrink after it is gone, on the test stack:
at most 2 replicas per push channel and lane (an FCM replica counted as 250 pushes/s, so the
marketing lane's 500/s ceiling allows 2), one per 1,500 rows of backlog, removed 5 s after
the backlog is gone (tests/conftest.py)."""

from __future__ import annotations

import json
import time

import pytest
import ray
import redis
import redis.asyncio as aioredis

from actors.sender_pool import SenderPool
from cluster.names import router_name, sender_name
from cluster.state import keys
from tests.cluster.test_campaigns import campaign_body, import_cohort, wait_campaign
from tests.cluster.test_dead_letters import wait_for
from tests.cluster.test_metrics import scrape

pytestmark = pytest.mark.slow

USERS = 6_000


def _pings(stack, lane: str) -> dict[str, dict]:
    """The push senders of a lane that exist now, by name, with their counters."""
    out = {}
    for channel in ("apns", "fcm"):
        for replica in range(stack.settings.senders.replicas_max):
            name = sender_name(channel, lane, replica)
            try:
                actor = ray.get_actor(name, namespace=stack.settings.topology.namespace)
                out[name] = ray.get(actor.ping.remote(), timeout=30)
            except (ValueError, ray.exceptions.RayError):
                continue
    return out


def test_wanted_replicas_follow_the_backlog_under_the_lanes_ceiling(stack):
    def pool(**overrides) -> SenderPool:
        settings = stack.settings.with_overrides(**overrides)
        return SenderPool(settings, aioredis.Redis.from_url(settings.state.redis_url), None)

    per = stack.settings.senders.backlog_per_replica
    for lane in ("transactional", "marketing"):  # the test stack: FCM replicas of 250/s
        wanted = [pool().wanted(lane, n) for n in (0, 1, per, per + 1, 100 * per)]
        assert wanted == [1, 1, 1, 2, 2], lane
    # Default capacities: one replica per channel covers the marketing lane's 1,000 APNs +
    # 500 FCM pushes/s, so a campaign's backlog never grows it; order updates (20k / 10k
    # per s) may use every replica allowed.
    defaults = pool(sender_replicas_max=4, sender_apns_capacity_per_s=2_500,
                    sender_fcm_capacity_per_s=600)  # fmt: skip
    assert defaults.ceiling("marketing") == 1 and defaults.wanted("marketing", 10**6) == 1
    assert defaults.ceiling("transactional") == 4
    assert defaults.wanted("transactional", 10**6) == 4
    # A raised marketing ceiling lets the lane grow to what the rate needs: 1,500/600 → 3.
    raised = pool(sender_replicas_max=4, sender_fcm_capacity_per_s=600,
                  marketing_fcm_rate_per_s=1_500)  # fmt: skip
    assert raised.ceiling("marketing") == 3


def test_senders_grow_for_a_campaign_and_shrink_after(stack, api, emulators, tmp_path, uid):
    for emulator in emulators.values():
        emulator.post("/_emulator/reset").raise_for_status()
    cohort = f"sp{uid}"
    import_cohort(stack, cohort, USERS, 11, tmp_path)
    store = redis.Redis.from_url(stack.settings.state.redis_url)
    campaign_id = f"grow-{uid}"
    body = campaign_body(cohort, campaign_id, respect_quiet_hours=False)
    api.post("/v1/campaigns", json=body).raise_for_status()

    # While it sends: the marketing lane's size reaches 2 and the grown replicas send.
    sizes, seen = _sizes_while_running(stack, api, store, campaign_id)
    status = wait_campaign(api, campaign_id)
    assert 2 in sizes, f"the marketing senders never grew: sizes seen {sizes}"
    for channel in ("apns", "fcm"):
        grown = seen.get(sender_name(channel, "marketing", 1))
        assert grown is not None and grown["sent"] > 0, f"{channel} replica 1: {grown}"

    # Every selected user's pushes arrived once, however the batches were split.
    pushes = _pushes_received(emulators, campaign_id)
    sent_keys = [key for rows in pushes.values() for key, _ in rows]
    assert len(sent_keys) == len(set(sent_keys)), "a push reached a device twice"
    push_records = _push_records(stack, store, campaign_id)
    assert push_records and all(r["status"] == "delivered" for r in push_records)
    assert len(sent_keys) == len(push_records)
    assert status["failed"] == 0

    # Split across replicas, FCM still keeps to the lane's ceiling (each replica takes its
    # share): n messages at `rate`/s, allowing each limiter's initial burst.
    rate = stack.settings.marketing.fcm_rate_per_s
    fcm = sorted(at for _, at in pushes["fcm"])
    bursts = rate * (1 + 2 * 0.5)  # the first limiter, then each replica's half-size one
    assert fcm[-1] - fcm[0] >= (len(fcm) - bursts) / rate - 0.5

    # Once the backlog is gone the lane shrinks back to one sender per channel.
    def shrunk():
        names = set(_pings(stack, "marketing"))
        return _marketing_size(stack, store) == 1 and names == {
            sender_name("apns", "marketing"),
            sender_name("fcm", "marketing"),
        }

    wait_for(shrunk, timeout_s=60)
    gauge = "ray_herald_sender_replicas{lane=marketing}"
    wait_for(lambda: scrape(stack.metrics_url).get(gauge) == 1.0, timeout_s=60)

    # …and grows again for the next campaign: the routers reach the restarted replicas
    # rather than the removed ones (no sender call fails, nothing is retried for it).
    failed_before = _failed_sender_calls(stack)
    again = f"again-{uid}"
    api.post("/v1/campaigns", json=campaign_body(cohort, again)).raise_for_status()
    sizes, _ = _sizes_while_running(stack, api, store, again, pings=False)
    after = wait_campaign(api, again)
    assert 2 in sizes, f"the marketing senders did not grow again: sizes seen {sizes}"
    assert after["delivered"] == after["sent"] > 0 and after["failed"] == 0
    assert _failed_sender_calls(stack) == failed_before


def _marketing_size(stack, store: redis.Redis) -> int:
    return int(store.hget(keys.sender_pool(stack.settings), "marketing:size") or 1)


def _sizes_while_running(
    stack, api, store: redis.Redis, campaign_id: str, pings: bool = True
) -> tuple[set[int], dict[str, dict]]:
    """The marketing lane's sizes seen until the campaign is done, and (with `pings`) the
    last answer of every marketing sender replica seen meanwhile."""
    sizes: set[int] = set()
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 240
    while api.get(f"/v1/campaigns/{campaign_id}").json()["state"] != "done":
        sizes.add(_marketing_size(stack, store))
        if pings:
            seen.update(_pings(stack, "marketing"))
        assert time.monotonic() < deadline, f"the campaign {campaign_id} did not finish"
        time.sleep(0.5)
    return sizes, seen


def _pushes_received(emulators, campaign_id: str) -> dict[str, list]:
    """Per provider: ((notification id, token), received_at) of the campaign's accepted pushes."""
    pushes: dict[str, list] = {}
    for kind, emulator in emulators.items():
        for item in emulator.get("/_emulator/received").json()["received"]:
            data = item["payload"] if kind == "apns" else item["message"].get("data", {})
            nid = data.get("notification_id", "")
            if nid.startswith(f"{campaign_id}") and item["status"] == 200:
                key = (nid, item["token"])
                pushes.setdefault(kind, []).append((key, item["received_at"]))
    return pushes


def _push_records(stack, store: redis.Redis, campaign_id: str) -> list[dict]:
    """The delivery state's push records of every user the campaign reached."""
    users = [
        m.decode() for m in store.smembers(keys.campaign(stack.settings, campaign_id, "users"))
    ]
    pipe = store.pipeline(transaction=False)
    for user in users:
        pipe.hgetall(keys.notification(stack.settings, f"{campaign_id}~{user}"))
    records = [
        json.loads(value)
        for fields in pipe.execute()
        for name, value in fields.items()
        if name.startswith(b"d:")
    ]
    return [r for r in records if r["channel"] in ("apns", "fcm")]


def _failed_sender_calls(stack) -> int:
    """Sender calls that failed as a whole, summed over the routers."""
    total = 0
    for index in range(stack.settings.topology.routers):
        router = ray.get_actor(router_name(index), namespace=stack.settings.topology.namespace)
        total += ray.get(router.ping.remote(), timeout=30).get("sender_call_failed", 0)
    return total
