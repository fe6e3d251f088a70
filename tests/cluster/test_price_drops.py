"""Wishlists and price drops through HTTP (and Kafka): limits at the door, a price drop
reaches exactly the users whose wishlist holds the product — as their preferences, quiet
hours and marketing frequency cap allow — and wishlists come back with a restarted shard."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import polars as pl
import pytest
import ray

from cluster.names import shard_name
from cluster.sharding import shard_of
from cluster.state import keys
from cluster.state.clients import sync_client
from cluster.state.dead_letters import list_dead_letters
from ops.demo import apns_token, fcm_token, wait_final
from pipelines import feedback_log
from tests.cluster.test_api import fields_of
from tests.cluster.test_dead_letters import wait_for
from tests.cluster.test_e2e import received_for, register
from tests.cluster.test_kafka import produce


def put_wishlist(api: httpx.Client, user: str, products: list[str]) -> httpx.Response:
    answer = api.put(f"/v1/users/{user}/wishlist", json={"product_ids": products})
    assert answer.status_code == 200, answer.text
    return answer


def price_drop(event_id: str, product_id: str, **overrides) -> dict:
    return {"event_id": event_id, "type": "price.dropped", "product_id": product_id,
            "old_price": 100, "new_price": 79.99, **overrides}  # fmt: skip


def test_wishlist_limits_at_the_door(api):
    answer = api.put("/v1/users/u1/wishlist", json={"product_ids": ["p"] * 1001})
    assert "1000" in fields_of(answer)["product_ids"]
    answer = api.put("/v1/users/u1/wishlist", json={"product_ids": ["ok", "", "x" * 129]})
    reasons = fields_of(answer)
    assert set(reasons) == {"product_ids[1]", "product_ids[2]"}
    assert "at least 1" in reasons["product_ids[1]"] and "128" in reasons["product_ids[2]"]
    assert "product_ids" in fields_of(api.put("/v1/users/u1/wishlist", json={}))
    answer = api.put("/v1/users/u1/wishlist", json={"product_ids": "p1"})
    assert "product_ids" in fields_of(answer)
    answer = api.put("/v1/users/u 1/wishlist", json={"product_ids": []})
    assert "user_id" in fields_of(answer)
    # Duplicates are dropped, order kept; exactly 1,000 is fine.
    answer = put_wishlist(api, "u1", ["b", "a", "b"])
    assert answer.json() == {"user_id": "u1", "product_ids": ["b", "a"]}
    put_wishlist(api, "u1", [f"p{i}" for i in range(1000)])


def test_price_drop_events_are_validated(api):
    def reasons(**overrides) -> dict[str, str]:
        event = {**price_drop("pd-bad", "p1"), **overrides}
        return fields_of(api.post("/v1/events", json={"events": [event]}))

    assert "lower than old_price" in reasons(new_price=100)["events[0].new_price"]
    assert "lower than old_price" in reasons(new_price=120)["events[0].new_price"]
    assert "greater than 0" in reasons(old_price=0)["events[0].old_price"]
    assert "events[0].new_price" in reasons(new_price=-5)
    assert "events[0].new_price" in reasons(new_price="cheap")
    assert "events[0].currency" in reasons(currency="euro")
    assert "events[0].product_id" in reasons(product_id="")
    # the ranker knows these categories only; another would silently score as affinity 0
    assert "home" in reasons(category="gadgets")["events[0].category"]
    missing = price_drop("pd-bad", "p1")
    del missing["old_price"]
    assert "events[0].old_price" in fields_of(api.post("/v1/events", json={"events": [missing]}))


@pytest.mark.eventlog
def test_price_drop_reaches_exactly_the_wishers(stack, api, emulators, uid):
    product, other = f"P-{uid}", f"X-{uid}"
    u = {name: f"{name}-{uid}" for name in "abcdefgh"}
    tokens = {"a_ios": apns_token(), "a_and": fcm_token(), "b_web": fcm_token(),
              "c_ios": apns_token(), "d_ios": apns_token(), "f_ios": apns_token(),
              "g_ios": apns_token(), "h_ios": apns_token()}  # fmt: skip
    for key, token in tokens.items():
        platform = {"ios": "ios", "and": "android", "web": "web"}[key.split("_")[1]]
        register(api, u[key[0]], platform, token)
    put_wishlist(api, u["a"], [product, other])  # two devices + inbox
    put_wishlist(api, u["b"], [product])  # web push + inbox
    put_wishlist(api, u["c"], [product])  # opted out of price alerts
    api.put(f"/v1/users/{u['c']}/preferences", json={"categories": {"price_alert": False}})
    put_wishlist(api, u["d"], [other])  # wishes for something else
    put_wishlist(api, u["e"], [product])  # no device: inbox only
    put_wishlist(api, u["f"], [product])
    put_wishlist(api, u["f"], [f"Y-{uid}"])  # replaced: no longer wishes for it
    put_wishlist(api, u["g"], [product])  # push off: inbox only
    api.put(f"/v1/users/{u['g']}/preferences", json={"channels": {"push": False}})
    put_wishlist(api, u["h"], [product, product])  # orders off does not matter here
    api.put(f"/v1/users/{u['h']}/preferences", json={"categories": {"order": False}})

    event = price_drop(
        f"pd-{uid}", product, currency="USD", title="Headphones", category="electronics"
    )
    answer = api.post("/v1/events", json={"events": [event]})
    assert answer.status_code == 202 and answer.json()["accepted"] == [f"pd-{uid}"]

    nid = {name: f"pd-{uid}:{user}" for name, user in u.items()}
    statuses = wait_final(api, [nid[n] for n in "abcegh"])
    channels = {n: sorted(d["channel"] for d in statuses[nid[n]]["deliveries"]) for n in "abegh"}
    assert channels == {"a": ["apns", "fcm", "inbox"], "b": ["fcm", "inbox"], "e": ["inbox"],
                        "g": ["inbox"], "h": ["apns", "inbox"]}  # fmt: skip
    assert {statuses[nid[n]]["state"] for n in "abegh"} == {"delivered"}
    assert statuses[nid["a"]]["type"] == "price.dropped"
    assert statuses[nid["a"]]["user_id"] == u["a"]
    assert statuses[nid["c"]]["state"] == "suppressed"
    assert statuses[nid["c"]]["suppressed_reason"] == "category_opt_out"
    for n in "df":
        assert api.get(f"/v1/notifications/{nid[n]}").status_code == 404

    apns = received_for(emulators["apns"], {t for k, t in tokens.items() if k.endswith("ios")})
    assert sorted(i["token"] for i in apns) == sorted([tokens["a_ios"], tokens["h_ios"]])
    push = next(i for i in apns if i["token"] == tokens["a_ios"])
    assert push["payload"]["aps"]["alert"] == {
        "title": "Price drop",
        "body": "Headphones is now 79.99 USD (was 100.00 USD).",
    }
    assert push["payload"]["product_id"] == product
    assert push["payload"]["notification_id"] == nid["a"]
    assert push["headers"]["apns-priority"] == "5"  # marketing: not urgent
    fcm = received_for(emulators["fcm"], {tokens["a_and"], tokens["b_web"]})
    assert sorted(i["token"] for i in fcm) == sorted([tokens["a_and"], tokens["b_web"]])
    assert {i["message"]["data"]["new_price"] for i in fcm} == {"79.99"}

    for n in "abcdefgh":
        items = api.get(f"/v1/users/{u[n]}/inbox").json()["items"]
        expected = [nid[n]] if n in "abegh" else []
        assert [i["notification_id"] for i in items] == expected, n
    item = api.get(f"/v1/users/{u['e']}/inbox").json()["items"][0]
    assert item["data"]["old_price"] == "100.00" and item["data"]["currency"] == "USD"

    # The sends are in the feedback log as they were scored, and an open joins them: the
    # next model learns from price drops too.
    opened = {"notification_id": nid["a"], "user_id": u["a"], "action": "opened"}
    assert api.post("/v1/feedback", json=opened).json()["counted"] is True

    def logged() -> list[pl.DataFrame]:
        rows = feedback_log.training_rows(stack.settings.feedback_root)
        rows = rows.filter(pl.col("campaign_id") == f"pd-{uid}") if rows.height else rows
        return [rows] if rows.height and rows["opened"].any() else []

    [logged] = wait_for(logged, timeout_s=30)
    assert sorted(logged["notification_id"]) == sorted(nid[n] for n in "abegh")
    assert logged.filter(pl.col("opened"))["user_id"].to_list() == [u["a"]]
    assert set(logged["style"]) == {"discount"} and set(logged["category"]) == {"electronics"}
    assert logged["score"].is_between(0, 1).all() and "affinity_electronics" in logged.columns
    assert set(logged["model_version"]) == {api.get("/v1/models").json()["current"]}

    # The same event again is a duplicate and sends nothing new.
    again = api.post("/v1/events", json={"events": [event]}).json()
    assert again == {"accepted": [], "duplicate": [f"pd-{uid}"]}
    time.sleep(1.0)
    assert len(received_for(emulators["apns"], {tokens["a_ios"], tokens["h_ios"]})) == 2


def test_wishlists_come_back_with_a_restarted_shard(stack, api, uid):
    users = [f"w-{uid}-{i}" for i in range(30)]
    on_shard0 = [
        u
        for u, s in zip(users, shard_of(users, stack.settings.topology.shards), strict=True)
        if s == 0
    ]
    assert len(on_shard0) >= 3
    for i, user in enumerate(on_shard0):
        put_wishlist(api, user, [f"W-{uid}", f"W-{uid}-{i}"])
    put_wishlist(api, on_shard0[0], [])  # emptied: must stay empty
    shard = ray.get_actor(shard_name(0), namespace=stack.settings.topology.namespace)
    ray.kill(shard, no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            wishers = ray.get(shard.wishers.remote([f"W-{uid}"]), timeout=10)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            assert time.monotonic() < deadline, "the shard did not come back"
            time.sleep(0.5)
    assert sorted(set(wishers.column("user_id").to_pylist())) == sorted(on_shard0[1:])
    assert ray.get(shard.wishlist.remote(on_shard0[1])) == [f"W-{uid}", f"W-{uid}-1"]
    assert ray.get(shard.wishlist.remote(on_shard0[0])) == []

    # and a price drop after the restart reaches them (inbox only: no devices)
    event = price_drop(f"pdr-{uid}", f"W-{uid}")
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    ids = [f"pdr-{uid}:{user}" for user in on_shard0[1:]]
    statuses = wait_final(api, ids)
    assert {s["state"] for s in statuses.values()} == {"delivered"}


def test_price_drops_from_kafka(stack, api, kafka, uid):
    user = f"k-{uid}"
    put_wishlist(api, user, [f"K-{uid}"])
    good = price_drop(f"kpd-{uid}", f"K-{uid}", title="Lamp")
    bad = price_drop(f"kpd-bad-{uid}", f"K-{uid}", new_price=150)
    values = [json.dumps(good).encode(), json.dumps(bad).encode()]
    asyncio.run(produce(kafka.bootstrap, stack.settings.kafka.topic, values))
    status = wait_final(api, [f"kpd-{uid}:{user}"], timeout_s=60)[f"kpd-{uid}:{user}"]
    assert status["state"] == "delivered", status
    inbox = api.get(f"/v1/users/{user}/inbox").json()["items"]
    assert [i["body"] for i in inbox] == ["Lamp is now 79.99 (was 100.00)."]
    deadline = time.monotonic() + 30
    while True:
        dead = [d for d in list_dead_letters(stack.settings, 10_000) if d["kind"] == "kafka"]
        mine = [d for d in dead if f"kpd-bad-{uid}" in d["body"]["raw"]]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine and "new_price" in mine[0]["reason"]


def _hhmm(minute: int) -> str:
    return f"{minute % 1440 // 60:02d}:{minute % 60:02d}"


@pytest.mark.eventlog
def test_price_drop_goes_through_campaign_eligibility(stack, api, emulators, uid):
    """The wishers of one drop: one in quiet hours in her own zone (held in the marketing
    retry set until the window's end, then delivered), one at the marketing frequency cap
    campaigns count in (suppressed, by reason), one who opted out of price alerts, and one
    whose drop then counts towards the shared cap so that a second drop the same day is
    suppressed for him."""
    client = sync_client(stack.settings)
    product, second = f"Q-{uid}", f"Q2-{uid}"
    u = {name: f"{name}-{uid}" for name in ("quiet", "capped", "optout", "fresh")}
    tokens = {name: apns_token() for name in u}
    for name, user in u.items():
        register(api, user, "ios", tokens[name])
        put_wishlist(api, user, [product, second] if name == "fresh" else [product])
    # quiet from an hour ago to two hours from now, in Kolkata (UTC+5:30, no DST)
    now_min = int(time.time() // 60)
    local = now_min + 330
    answer = api.put(f"/v1/users/{u['quiet']}", json={"timezone": "Asia/Kolkata"})
    assert answer.status_code == 200, answer.text
    window = {"start": _hhmm(local - 60), "end": _hhmm(local + 120)}
    api.put(f"/v1/users/{u['quiet']}/preferences", json={"quiet_hours": window})
    release = (now_min + 120) * 60.0
    # at the cap: one marketing push a day, and a campaign already sent one today (UTC)
    api.put(f"/v1/users/{u['capped']}/preferences", json={"max_marketing_per_day": 1})
    today = time.strftime("%Y-%m-%d", time.gmtime())
    client.hset(keys.frequency(stack.settings, today), u["capped"], 1)
    api.put(f"/v1/users/{u['optout']}/preferences", json={"categories": {"price_alert": False}})
    api.put(f"/v1/users/{u['fresh']}/preferences", json={"max_marketing_per_day": 1})

    event = price_drop(f"pde-{uid}", product, title="Kettle")
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    nid = {name: f"pde-{uid}:{user}" for name, user in u.items()}
    statuses = wait_final(api, [nid[n] for n in ("capped", "optout", "fresh")])
    assert statuses[nid["fresh"]]["state"] == "delivered"
    assert statuses[nid["capped"]]["state"] == "suppressed"
    assert statuses[nid["capped"]]["suppressed_reason"] == "frequency_cap"
    assert statuses[nid["optout"]]["suppressed_reason"] == "category_opt_out"
    # the drop counts in the counter campaigns read (right after the send): "fresh" is at
    # his cap now
    deadline = time.monotonic() + 10
    while client.hget(keys.frequency(stack.settings, today), u["fresh"]) != b"1":
        assert time.monotonic() < deadline, "the price drop was not counted"
        time.sleep(0.1)
    assert client.hget(keys.frequency(stack.settings, today), u["capped"]) == b"1"

    # held, not dropped: queued, in the marketing retry set due at the window's end
    key = keys.retries(stack.settings, "marketing")
    held = {
        m: due
        for m, due in client.zrange(key, 0, -1, withscores=True)
        if json.loads(m)["notification_id"] == nid["quiet"]
    }
    assert sorted(json.loads(m)["channel"] for m in held) == ["apns", "inbox"]
    assert set(held.values()) == {release}
    quiet = api.get(f"/v1/notifications/{nid['quiet']}").json()
    assert quiet["state"] == "in_progress"
    assert {d["status"] for d in quiet["deliveries"]} == {"queued"}
    assert received_for(emulators["apns"], {tokens["quiet"]}) == []
    record = json.loads(client.hget(keys.notification(stack.settings, nid["quiet"]), "meta"))
    assert record["send_after"] == release and record["score"] > 0 and record["model_version"]

    # the window ends (fast-forwarded here): delivered, once
    client.zadd(key, {m: time.time() for m in held})
    quiet = wait_final(api, [nid["quiet"]])[nid["quiet"]]
    assert quiet["state"] == "delivered", quiet
    assert len(received_for(emulators["apns"], {tokens["quiet"]})) == 1
    assert [
        i["notification_id"] for i in api.get(f"/v1/users/{u['quiet']}/inbox").json()["items"]
    ] == [nid["quiet"]]

    # a second drop the same day: "fresh" is at his cap; nothing more reaches him
    again = price_drop(f"pde2-{uid}", second)
    assert api.post("/v1/events", json={"events": [again]}).status_code == 202
    status = wait_final(api, [f"pde2-{uid}:{u['fresh']}"])[f"pde2-{uid}:{u['fresh']}"]
    assert status["state"] == "suppressed" and status["suppressed_reason"] == "frequency_cap"
    assert len(received_for(emulators["apns"], {tokens["fresh"]})) == 1


@pytest.mark.eventlog
def test_price_drop_in_each_devices_language_then_in_the_shops_words(stack, api, emulators, uid):
    """The shipped `price_drop` in the device's language, else the profile's; a shop's
    override (PUT /v1/templates/price_drop) changes the words of the next drop."""
    product, de, fr = f"L-{uid}", f"lde-{uid}", f"lfr-{uid}"
    tokens = {de: apns_token(), fr: apns_token()}
    device = {"user_id": de, "platform": "ios", "token": tokens[de], "locale": "de-DE"}
    assert api.post("/v1/devices", json=device).status_code == 201
    register(api, fr, "ios", tokens[fr])
    assert api.put(f"/v1/users/{fr}", json={"locale": "fr-FR"}).status_code == 200
    for user in (de, fr):
        put_wishlist(api, user, [product])

    def drop_reads(event_id: str) -> dict[str, tuple]:
        event = price_drop(event_id, product, currency="EUR", title="Lampe")
        assert api.post("/v1/events", json={"events": [event]}).status_code == 202
        statuses = wait_final(api, [f"{event_id}:{user}" for user in (de, fr)])
        shown = {}
        for user in (de, fr):
            push = next(
                i
                for i in received_for(emulators["apns"], {tokens[user]})
                if i["payload"]["notification_id"] == f"{event_id}:{user}"
            )
            deliveries = statuses[f"{event_id}:{user}"]["deliveries"]
            recorded = {(d["locale"], d["template_version"]) for d in deliveries}
            shown[user] = (push["payload"]["aps"]["alert"]["body"], recorded)
        return shown

    assert drop_reads(f"pdl-{uid}") == {
        de: ("Lampe kostet jetzt 79,99 EUR (vorher 100,00 EUR).", {("de", 0)}),
        fr: ("Lampe passe à 79,99 EUR (au lieu de 100,00 EUR).", {("fr", 0)}),
    }
    shipped = api.get("/v1/templates/price_drop").json()
    shop = {k: v for k, v in shipped.items() if k not in ("version", "source")}
    shop["locales"] = {
        "en": {"title": "Deal", "body": "{title}: now {new_price} {currency}"},
        "de": {"title": "Angebot", "body": "{title}: nur {new_price} {currency}"},
    }
    answer = api.put("/v1/templates/price_drop", json=shop)
    assert answer.status_code == 201, answer.text
    version = answer.json()["version"]
    try:
        time.sleep(1.5)  # the routers' template caches look again every second
        assert drop_reads(f"pdl2-{uid}") == {
            de: ("Lampe: nur 79,99 EUR", {("de", version)}),
            fr: ("Lampe: now 79.99 EUR", {("en", version)}),  # no French: the default
        }
    finally:
        assert api.delete("/v1/templates/price_drop").status_code == 204
