"""`notification.requested` end to end: one event to 1,000 users (imported in bulk) in
German and French through the real APNs/FCM emulators and the inbox, each push in its
device's language with the status naming locale and template version; a shop category
turned off suppresses; a template edited while events flow never half-renders."""

from __future__ import annotations

import time

import httpx
import polars as pl
import pytest

from ops.demo import apns_token, fcm_token, wait_final
from ops.importer import import_devices, import_users
from tests.cluster.test_e2e import received_for

USERS = 1000
COPY = {
    "en": ("Back in stock", "{product} is back for {price}."),
    "de": ("Wieder da", "{product} ist wieder da, für {price}."),
    "fr": ("De retour", "{product} est de retour pour {price}."),
}


def template(copy: dict[str, tuple[str, str]] = COPY) -> dict:
    return {
        "variables": {"product": {"type": "string"}, "price": {"type": "money"}},
        "locales": {tag: {"title": t, "body": b} for tag, (t, b) in copy.items()},
    }


def put_template(api: httpx.Client, template_id: str, body: dict) -> int:
    answer = api.put(f"/v1/templates/{template_id}", json=body)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["version"]


def requested(event_id: str, users: list[str], template_id: str, **fields) -> dict:
    return {
        "event_id": event_id,
        "type": "notification.requested",
        "user_ids": users,
        "template_id": template_id,
        "variables": {"product": "Boots", "price": 59.5},
        "category": "restock",
        **fields,
    }


def import_population(stack, uid: str, n: int) -> pl.DataFrame:
    """`n` users: even ones German by their device (no profile locale), odd ones French by
    their profile (device without a locale); iOS and Android alternating by pairs."""
    platforms = ["ios" if k % 4 < 2 else "android" for k in range(n)]
    users = pl.DataFrame(
        {
            "user_id": [f"nr-{uid}-{k}" for k in range(n)],
            "lang": ["de" if k % 2 == 0 else "fr" for k in range(n)],
            "platform": platforms,
            "token": [apns_token() if p == "ios" else fcm_token() for p in platforms],
        }
    )
    german = pl.col("lang") == "de"
    import_users(
        stack.settings,
        users.select("user_id", locale=pl.when(~german).then(pl.lit("fr"))).to_arrow(),
    )
    import_devices(
        stack.settings,
        users.select(
            "user_id", "platform", "token", locale=pl.when(german).then(pl.lit("de-DE"))
        ).to_arrow(),
    )
    return users


def pushes_of(emulators: dict[str, httpx.Client], tokens: set[str]) -> dict[str, tuple]:
    """token → (notification_id, title, body) of what APNs and FCM received for them."""
    got = {}
    for item in received_for(emulators["apns"], tokens):
        payload = item["payload"]
        alert = payload["aps"]["alert"]
        got[item["token"]] = (payload["notification_id"], alert["title"], alert["body"])
    for item in received_for(emulators["fcm"], tokens):
        message = item["message"]
        note = message["notification"]
        got[item["token"]] = (message["data"]["notification_id"], note["title"], note["body"])
    return got


def wait_pushes(emulators, tokens: set[str], count: int, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        got = pushes_of(emulators, tokens)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


@pytest.mark.eventlog
def test_thousand_users_each_in_their_language(stack, api, emulators, uid):
    users = import_population(stack, uid, USERS)
    version = put_template(api, f"restock.{uid}", template())
    off = users["user_id"][7]  # French; turns the shop's category off
    prefs = {"categories": {"restock": False, "order": True}}
    assert api.put(f"/v1/users/{off}/preferences", json=prefs).status_code == 200
    event = requested(f"req-{uid}", users["user_id"].to_list(), f"restock.{uid}")
    event["data"] = {"ref": "r-1"}
    answer = api.post("/v1/events", json={"events": [event]})
    assert answer.status_code == 202, answer.text
    assert len(answer.json()["accepted"]) == 1

    reached = users.filter(pl.col("user_id") != off)
    got = wait_pushes(emulators, set(reached["token"]), reached.height)
    assert len(got) == reached.height
    texts = {
        "de": ("Wieder da", "Boots ist wieder da, für 59,50."),
        "fr": ("De retour", "Boots est de retour pour 59,50."),
    }
    for user_id, lang, token in reached.select("user_id", "lang", "token").iter_rows():
        assert got[token] == (f"req-{uid}:{user_id}", *texts[lang]), user_id

    sample = [*users["user_id"][:6], off]
    statuses = wait_final(api, [f"req-{uid}:{u}" for u in sample])
    for user_id, lang in users.head(6).select("user_id", "lang").iter_rows():
        status = statuses[f"req-{uid}:{user_id}"]
        assert status["state"] == "delivered", status
        assert len(status["deliveries"]) == 2  # its device and the inbox
        assert {(d["locale"], d["template_version"]) for d in status["deliveries"]} == {
            (lang, version)
        }
        inbox = api.get(f"/v1/users/{user_id}/inbox").json()["items"]
        assert [(i["title"], i["body"]) for i in inbox] == [texts[lang]]
        assert inbox[0]["data"]["ref"] == "r-1"
    assert statuses[f"req-{uid}:{off}"]["suppressed_reason"] == "category_opt_out"


@pytest.mark.eventlog
def test_template_edited_while_events_flow(stack, api, emulators, uid):
    users = import_population(stack, uid, 8)
    template_id = f"restock.{uid}"
    v1 = put_template(api, template_id, template())
    edited = {tag: (f"{t}!", f"{b} (v2)") for tag, (t, b) in COPY.items()}
    user_ids = users["user_id"].to_list()
    events = [requested(f"tv-{uid}-{n}", user_ids, template_id) for n in range(12)]
    for event in events[:4]:
        assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    wait_final(api, [f"{events[0]['event_id']}:{u}" for u in user_ids])  # routed with v1
    v2 = put_template(api, template_id, template(edited))
    for event in events[4:8]:
        assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    time.sleep(1.5)  # the routers' template cache sees a put within a second
    for event in events[8:]:
        assert api.post("/v1/events", json={"events": [event]}).status_code == 202

    ids = [f"{e['event_id']}:{u}" for e in events for u in user_ids]
    statuses = wait_final(api, ids, timeout_s=60)
    version_of = {}
    for nid, status in statuses.items():
        assert status["state"] == "delivered", status
        versions = {d["template_version"] for d in status["deliveries"]}
        assert len(versions) == 1 and versions <= {v1, v2}, status  # one version per event
        version_of[nid] = versions.pop()
    assert all(version_of[f"{e['event_id']}:{u}"] == v2 for e in events[8:] for u in user_ids)
    assert all(version_of[f"{e['event_id']}:{u}"] == v1 for e in events[:1] for u in user_ids)

    lang_of = dict(users.select("user_id", "lang").iter_rows())
    rendered = {
        version: {
            lang: (title, body.format(product="Boots", price="59,50"))
            for lang, (title, body) in copy.items()
        }
        for version, copy in ((v1, COPY), (v2, edited))
    }
    seen = received_for(emulators["apns"], set(users["token"]))
    seen += received_for(emulators["fcm"], set(users["token"]))
    assert len(seen) == len(ids)
    for item in seen:
        payload = item.get("payload") or item["message"]
        nid = payload.get("notification_id") or payload["data"]["notification_id"]
        alert = payload["aps"]["alert"] if "aps" in payload else payload["notification"]
        user_id = nid.split(":", 1)[1]
        expected = rendered[version_of[nid]][lang_of[user_id]]
        assert (alert["title"], alert["body"]) == expected, (nid, alert)
