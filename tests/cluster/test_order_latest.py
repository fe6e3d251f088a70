"""Latest status wins: an order update older than the order's newest one routed is recorded
`superseded` and never reaches a phone, whether it came in a later batch or the same one;
a redelivered or duplicate event is not its own rival; an order's pushes share one
collapse id and thread, so the phone replaces the order's previous notification."""

from __future__ import annotations

import asyncio
import time

import polars as pl
import redis.asyncio as aioredis

from cluster.state import keys
from cluster.state.orders import OrderLatest
from ops.demo import apns_token, wait_final
from tests.cluster.test_e2e import received_for, register

T = 1_700_000_000.0


def update(uid: str, name: str, status: str, **extra) -> dict:
    return {
        "event_id": f"{name}-{uid}",
        "type": "order.updated",
        "user_id": f"u-{uid}",
        "order_id": f"O-{uid}",
        "status": status,
        **extra,
    }


def post(api, *events: dict) -> None:
    answer = api.post("/v1/events", json={"events": list(events)})
    assert answer.status_code == 202, answer.text


def statuses_of(api, uid: str, *names: str) -> dict[str, dict]:
    got = wait_final(api, [f"{n}-{uid}" for n in names])
    return {n: got[f"{n}-{uid}"] for n in names}


def apns_statuses(emulators, token: str) -> list[str]:
    return [i["payload"]["status"] for i in received_for(emulators["apns"], {token})]


def test_an_older_update_after_a_newer_one_is_superseded(api, emulators, uid):
    token = apns_token()
    register(api, f"u-{uid}", "ios", token)
    post(api, update(uid, "delivered", "delivered", occurred_at=T + 10))
    assert statuses_of(api, uid, "delivered")["delivered"]["state"] == "delivered"
    post(api, update(uid, "shipped", "shipped", occurred_at=T))
    shipped = statuses_of(api, uid, "shipped")["shipped"]
    assert shipped["state"] == "suppressed", shipped
    assert shipped["suppressed_reason"] == "superseded"
    time.sleep(0.5)
    assert apns_statuses(emulators, token) == ["delivered"]


def test_in_one_batch_only_the_newest_is_sent(api, emulators, uid):
    token = apns_token()
    register(api, f"u-{uid}", "ios", token)
    post(
        api,
        update(uid, "shipped", "shipped", occurred_at=T),  # accepted first, happened first
        update(uid, "delivered", "delivered", occurred_at=T + 10),
    )
    got = statuses_of(api, uid, "shipped", "delivered")
    assert got["delivered"]["state"] == "delivered", got
    assert (got["shipped"]["state"], got["shipped"]["suppressed_reason"]) == (
        "suppressed",
        "superseded",
    )
    time.sleep(0.5)
    assert apns_statuses(emulators, token) == ["delivered"]


def test_sequence_is_compared_before_occurred_at(api, emulators, uid):
    token = apns_token()
    register(api, f"u-{uid}", "ios", token)
    post(api, update(uid, "paid", "paid", sequence=2, occurred_at=T))
    assert statuses_of(api, uid, "paid")["paid"]["state"] == "delivered"
    post(api, update(uid, "placed", "placed", sequence=1, occurred_at=T + 100))
    assert statuses_of(api, uid, "placed")["placed"]["suppressed_reason"] == "superseded"
    assert apns_statuses(emulators, token) == ["paid"]


def test_a_duplicate_is_not_superseded_and_pushes_collapse_per_order(api, emulators, uid):
    token = apns_token()
    register(api, f"u-{uid}", "ios", token)
    first = update(uid, "shipped", "shipped", occurred_at=T)
    post(api, first)
    assert statuses_of(api, uid, "shipped")["shipped"]["state"] == "delivered"
    again = api.post("/v1/events", json={"events": [first]}).json()
    assert again == {"accepted": [], "duplicate": [f"shipped-{uid}"]}
    post(api, update(uid, "delivered", "delivered", occurred_at=T + 10))
    got = statuses_of(api, uid, "shipped", "delivered")
    assert [got[n]["state"] for n in ("shipped", "delivered")] == ["delivered", "delivered"]
    assert got["shipped"].get("suppressed_reason") is None
    pushes = received_for(emulators["apns"], {token})
    assert [p["payload"]["status"] for p in pushes] == ["shipped", "delivered"]
    for push in pushes:  # one notification on the phone, replaced by the newer
        assert push["headers"]["apns-collapse-id"] == f"order:O-{uid}"
        assert push["payload"]["aps"]["thread-id"] == f"order:O-{uid}"


def test_the_store_spares_redelivery_and_agrees_under_a_race(stack, uid):
    async def run() -> None:
        client = aioredis.Redis.from_url(stack.settings.state.redis_url)
        store = OrderLatest(stack.settings, client)
        order = f"race-{uid}"

        def rows(*events: tuple[str, int | None, float | None]) -> pl.DataFrame:
            return pl.DataFrame(
                {
                    "event_id": [e[0] for e in events],
                    "order_id": [order] * len(events),
                    "sequence": [e[1] for e in events],
                    "occurred_at": [e[2] for e in events],
                    "accepted_at": [float(i) for i in range(len(events))],
                },
                schema_overrides={"sequence": pl.Int64, "occurred_at": pl.Float64},
            )

        try:
            assert (await store.stale(rows(("a", 5, None)))).to_list() == [False]
            # redelivered: the stored one is not its own rival; an untimed one never stale
            batch = rows(("a", 5, None), ("x", None, None), ("old", 4, None))
            assert (await store.stale(batch)).to_list() == [False, False, True]
            # routers racing: the newest always wins, and is what stays stored
            seqs = [17, 11, 29, 23, 13]
            answers = await asyncio.gather(*(store.stale(rows((f"r{q}", q, None))) for q in seqs))
            assert answers[seqs.index(29)].to_list() == [False]
            stored = await client.hget(keys.order_latest(stack.settings, order), "sequence")
            assert stored == b"29"
            late = await store.stale(rows(*((f"r{q}", q, None) for q in seqs)))
            assert late.to_list() == [q != 29 for q in seqs]
            key = keys.order_latest(stack.settings, order)
            assert 0 < await client.ttl(key) <= stack.settings.state.notification_ttl_s
            assert key.endswith("{o:" + order + "}:latest")
        finally:
            await client.aclose()

    asyncio.run(run())
