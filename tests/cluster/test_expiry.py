"""A push has a deadline: past its `ttl_s` a retry or a quiet-hours hold is dropped as
`expired` — never sent late, never dead-lettered; a retried order update that a newer one
overtook is `superseded`; pushes over a user's limit a minute go to the inbox only.

Checked as a user would: what the emulators received and when, the notification's status,
the dead-letter stream."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from cluster.state.clients import async_client
from cluster.state.dead_letters import list_dead_letters
from ops.demo import apns_token, fcm_token, wait_final
from tests.cluster.test_e2e import register

pytestmark = pytest.mark.slow

TTL = 6  # s: long enough for a few attempts at the test stack's 0.2 s base backoff


@pytest.fixture
def fcm(emulators):
    fcm = emulators["fcm"]
    fcm.post("/_emulator/reset").raise_for_status()
    yield fcm
    fcm.post("/_emulator/faults", json={}).raise_for_status()
    fcm.post("/_emulator/reset").raise_for_status()


def tries(fcm, token: str) -> list[dict]:
    return [i for i in fcm.get("/_emulator/received").json()["received"] if i["token"] == token]


def push_status(api, nid: str, channel: str) -> dict:
    status = api.get(f"/v1/notifications/{nid}").json()
    return next((d for d in status.get("deliveries", []) if d["channel"] == channel), {})


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_push_failing_past_its_ttl_expires(stack, api, fcm, uid):
    """FCM answers 503 for longer than the TTL: retried until the deadline, then expired —
    no attempt after it, no dead letter; the inbox item is there all the same."""
    fcm.post("/_emulator/faults", json={"error_rate": {"503": 1.0}}).raise_for_status()
    user, token = f"ttl-{uid}", fcm_token()
    register(api, user, "android", token)
    event = {"event_id": f"ttl-{uid}", "type": "order.updated", "user_id": user,
             "order_id": f"o-{uid}", "status": "shipped", "ttl_s": TTL}  # fmt: skip
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202

    push = wait_for(
        lambda: (d := push_status(api, event["event_id"], "fcm")).get("status") == "expired" and d,
        30,
        "the push to expire",
    )
    accepted_at = api.get(f"/v1/notifications/{event['event_id']}").json()["accepted_at"]
    seen = tries(fcm, token)
    assert seen, "never tried before the deadline"
    assert all(t["status"] == 503 for t in seen)
    # the check runs before each send: nothing may reach the provider after the deadline
    # (one already handed to the sender at the deadline may land a moment later)
    late = [
        t["received_at"] - accepted_at for t in seen if t["received_at"] > accepted_at + TTL + 1.0
    ]
    assert late == [], f"sent {late} s after acceptance with ttl_s {TTL}"
    assert push["attempts"] == len(seen)
    assert push_status(api, event["event_id"], "inbox")["status"] == "delivered"
    # still nothing a while later, and nothing in the dead-letter stream
    time.sleep(2)
    assert len(tries(fcm, token)) == len(seen)
    dead = [d for d in list_dead_letters(stack.settings, 10_000) if uid in json.dumps(d)]
    assert dead == []
    # the provider was told the same deadline: what is left of the TTL when it was sent
    left = TTL - (seen[0]["received_at"] - accepted_at)
    first = int(seen[0]["message"]["android"]["ttl"][:-1])
    assert abs(first - left) <= 1, (first, left)


def test_default_ttl_reaches_the_provider(stack, api, emulators, uid):
    """An order update without ttl_s lives HERALD_ORDER_UPDATE_TTL_S (a day): APNs gets an
    apns-expiration a day after acceptance."""
    apns = emulators["apns"]
    user, token = f"dttl-{uid}", apns_token()
    register(api, user, "ios", token)
    event = {"event_id": f"dttl-{uid}", "type": "order.updated", "user_id": user,
             "order_id": f"o-{uid}", "status": "shipped"}  # fmt: skip
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    assert wait_final(api, [event["event_id"]])[event["event_id"]]["state"] == "delivered"
    got = [i for i in apns.get("/_emulator/received").json()["received"] if i["token"] == token]
    accepted_at = api.get(f"/v1/notifications/{event['event_id']}").json()["accepted_at"]
    expiration = int(got[0]["headers"]["apns-expiration"])
    ttl = stack.settings.delivery.order_update_ttl_s
    assert abs(expiration - (accepted_at + ttl)) <= 2, (expiration, accepted_at)


def test_a_retried_update_overtaken_by_a_newer_one_is_superseded(stack, api, fcm, uid):
    """`shipped` fails and waits for its retry; `delivered` comes in meanwhile. When the
    provider is back, the phone gets `delivered` only: the old retry is superseded."""
    fcm.post("/_emulator/faults", json={"error_rate": {"503": 1.0}}).raise_for_status()
    user, token, order = f"sup-{uid}", fcm_token(), f"o-{uid}"
    register(api, user, "android", token)
    now = time.time()
    shipped = {"event_id": f"s-{uid}", "type": "order.updated", "user_id": user,
               "order_id": order, "status": "shipped", "occurred_at": now}  # fmt: skip
    delivered = {**shipped, "event_id": f"d-{uid}", "status": "delivered",
                 "occurred_at": now + 60}  # fmt: skip
    assert api.post("/v1/events", json={"events": [shipped]}).status_code == 202
    wait_for(lambda: tries(fcm, token), 30, "shipped to be tried")
    assert api.post("/v1/events", json={"events": [delivered]}).status_code == 202
    wait_for(
        lambda: push_status(api, delivered["event_id"], "fcm").get("status") == "retrying",
        30,
        "delivered to be tried",
    )
    fcm.post("/_emulator/faults", json={}).raise_for_status()
    final = wait_final(api, [shipped["event_id"], delivered["event_id"]], timeout_s=60)
    assert push_status(api, shipped["event_id"], "fcm")["status"] == "superseded"
    assert final[delivered["event_id"]]["state"] == "delivered"
    sent = [t for t in tries(fcm, token) if t["status"] == 200]
    assert [t["message"]["data"]["notification_id"] for t in sent] == [delivered["event_id"]]


def test_a_hold_that_outlives_the_campaign_expires(stack, api, emulators, uid):
    """A user in quiet hours for the next two hours, a campaign ending in one: the push is
    expired at once instead of held, and never sent."""
    user, token = f"qh-{uid}", apns_token()
    register(api, user, "ios", token)
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=30), now + timedelta(hours=2)
    profile = {"timezone": "UTC", "attributes": {"cohort": f"qh-{uid}"}}
    assert api.put(f"/v1/users/{user}", json=profile).status_code == 200
    prefs = {"quiet_hours": {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}}
    assert api.put(f"/v1/users/{user}/preferences", json=prefs).status_code == 200
    campaign = {
        "campaign_id": f"qh-{uid}",
        "segment": {"attr": {"name": "cohort", "op": "eq", "value": f"qh-{uid}"}},
        "variants": [{"variant_id": "a", "title": "Sale", "body": "Today only"}],
        "channels": ["push"],
        "exploration": 0.0,
        "ends_at": time.time() + 3600,
    }
    assert api.post("/v1/campaigns", json=campaign).status_code == 202
    nid = f"qh-{uid}~{user}"
    push = wait_for(
        lambda: (d := push_status(api, nid, "apns")).get("status") in ("expired", "queued") and d,
        60,
        "the campaign to reach the user",
    )
    push = wait_for(
        lambda: (d := push_status(api, nid, "apns")).get("status") == "expired" and d,
        30,
        "the hold to expire",
    )
    assert push["status"] == "expired"
    got = [i for i in emulators["apns"].get("/_emulator/received").json()["received"]]
    assert [i for i in got if i["token"] == token] == []


def test_campaign_ends_at_must_follow_send_at(api, uid):
    body = {
        "campaign_id": f"bad-{uid}",
        "segment": {"attr": {"name": "cohort", "op": "eq", "value": "x"}},
        "variants": [{"variant_id": "a", "title": "t", "body": "b"}],
        "send_at": time.time() + 600,
        "ends_at": time.time() + 60,
    }
    answer = api.post("/v1/campaigns", json=body)
    assert answer.status_code == 422
    assert "ends_at" in answer.text


def test_pushes_over_the_user_limit_go_to_the_inbox_only(stack, uid):
    """HERALD_USER_PUSH_LIMIT_PER_MIN=3: of five notifications in two batches, the first
    three keep their push, the rest only their inbox row; another user is not affected."""
    from actors.flows.limits import Limits
    from cluster.state.deliveries import DeliveryState

    settings = stack.settings.with_overrides(user_push_limit_per_min=3)

    def batch(first: int, n: int, user: str) -> pl.DataFrame:
        ids = [f"lim-{uid}-{user}-{i}" for i in range(first, first + n)]
        rows = [(i, c) for i in ids for c in ("apns", "inbox")]
        return pl.DataFrame(
            {
                "notification_id": [i for i, _ in rows],
                "delivery_id": [f"{i}|{c}" for i, c in rows],
                "user_id": [f"{user}-{uid}"] * len(rows),
                "channel": [c for _, c in rows],
                "lane": ["transactional"] * len(rows),
            }
        )

    async def run() -> list[tuple[pl.DataFrame, pl.DataFrame]]:
        client = async_client(settings)
        limits = Limits(settings, counts={}, redis=client, state=DeliveryState(settings, client))
        try:
            return [
                await limits.over_limit(batch(0, 2, "a")),
                await limits.over_limit(pl.concat([batch(2, 3, "a"), batch(0, 1, "b")])),
            ]
        finally:
            await client.aclose()

    (kept1, over1), (kept2, over2) = asyncio.run(run())
    assert over1.height == 0 and kept1.height == 4
    assert sorted(over2["delivery_id"]) == [f"lim-{uid}-a-{i}|apns" for i in (3, 4)]
    assert set(over2["channel"]) == {"apns"}
    kept_pushes = kept2.filter(pl.col("channel") == "apns")["delivery_id"].to_list()
    assert kept_pushes == [f"lim-{uid}-a-2|apns", f"lim-{uid}-b-0|apns"]
    assert kept2.filter(pl.col("channel") == "inbox").height == 4


def test_a_template_ttl_is_the_default_of_its_pushes(stack, api, fcm, uid):
    """A template with `ttl_s: 600`: a `notification.requested` without its own ttl_s
    goes out with android.ttl of (about) 600 s; one with its own keeps that."""
    template = {
        "template_id": f"restock.{uid}",
        "locales": {"en": {"title": "Back", "body": "It is back"}},
        "ttl_s": 600,
    }
    assert api.put(f"/v1/templates/restock.{uid}", json=template).status_code == 201
    user, token = f"tt-{uid}", fcm_token()
    register(api, user, "android", token)
    events = [
        {"event_id": f"tt-{uid}-{i}", "type": "notification.requested", "user_ids": [user],
         "template_id": f"restock.{uid}", "category": "restock", **extra}
        for i, extra in enumerate([{}, {"ttl_s": 60}])
    ]  # fmt: skip
    assert api.post("/v1/events", json={"events": events}).status_code == 202
    ids = [f"tt-{uid}-{i}:{user}" for i in range(2)]
    assert {s["state"] for s in wait_final(api, ids).values()} == {"delivered"}
    accepted = {nid: api.get(f"/v1/notifications/{nid}").json()["accepted_at"] for nid in ids}
    # what is left of each TTL when the push reached the provider (a busy box may take a
    # few seconds): the template's 600 s, the event's own 60 s
    left = {
        t["message"]["data"]["notification_id"]: (
            int(t["message"]["android"]["ttl"][:-1]) + t["received_at"] - accepted[nid]
        )
        for t in tries(fcm, token)
        if (nid := t["message"]["data"]["notification_id"])
    }
    assert abs(left[ids[0]] - 600) <= 1.5 and abs(left[ids[1]] - 60) <= 1.5, left
