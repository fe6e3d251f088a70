"""Rich push, per provider, exact: delivery batches built here go through the real sender
actors (aioapns and firebase-admin over HTTP/2 + TLS) to the emulators, and what "Apple" and
"Google" received — every `apns-*` header, the whole APNs payload, the whole FCM message —
is compared whole. A row without `rich` must still be exactly the request it always was.

The inbox and the delivery status are checked in the stores behind them (Redis), which
keep what the HTTP answers are shaped from."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import polars as pl
import pyarrow as pa
import pytest
import ray

from actors.senders.apns import _ID_NAMESPACE
from cluster.names import sender_name
from cluster.state.clients import async_client
from cluster.state.deliveries import DeliveryState
from cluster.state.inbox import InboxStore
from cluster.tables.deliveries import DELIVERIES, Rich
from ops.demo import apns_token, fcm_token

IMAGE = "https://cdn.example.com/products/p1.jpg"
TITLE, BODY = "Order shipped", "Your order A1 is on its way."


def deliveries(uid: str, channel: str, riches: list[Rich | None], **columns) -> pa.Table:
    """One row per `riches` entry, each to a fresh token of `channel`; `columns` override
    the rest (the same value for every row)."""
    token = {"apns": apns_token, "fcm": fcm_token}.get(channel, lambda: "")
    nids = [f"rich-{uid}-{i}" for i in range(len(riches))]
    device = channel if channel == "inbox" else "d"
    rows = {
        "delivery_id": [f"{n}|{device}" for n in nids],
        "notification_id": nids,
        "user_id": [f"u-{uid}"] * len(nids),
        "device_id": [device] * len(nids),
        "channel": [channel] * len(nids),
        "token": [token() for _ in nids],
        "title": [TITLE] * len(nids),
        "body": [BODY] * len(nids),
        "data": [json.dumps({"notification_id": n, "order_id": "A1"}) for n in nids],
        "lane": ["transactional"] * len(nids),
        "accepted_at": [time.time()] * len(nids),
        "rich": [None if r is None else r.to_json() for r in riches],
        "locale": [None] * len(nids),
        "template_version": [None] * len(nids),
    }
    rows.update({k: [v] * len(nids) for k, v in columns.items()})
    return pa.table(rows, schema=DELIVERIES)


def send(stack, channel: str, batch: pa.Table, lane: str = "transactional") -> list[str]:
    """Through the lane's real sender actor; the outcome of each row."""
    sender = ray.get_actor(sender_name(channel, lane), namespace=stack.settings.topology.namespace)
    return ray.get(sender.send.remote(batch, 1), timeout=60)["outcome"].to_pylist()


def received(emulator, token: str) -> dict:
    """What the emulator logged for `token`: exactly one request."""
    items = emulator.get("/_emulator/received").json()["received"]
    mine = [i for i in items if i.get("token") == token]
    assert len(mine) == 1, mine
    return mine[0]


def apns_headers(item: dict) -> dict[str, str]:
    """The `apns-*` headers of a logged request (host and the credential are aioapns')."""
    return {k: v for k, v in item["headers"].items() if k.startswith("apns-")}


def expected_apns_headers(stack, batch: pa.Table, i: int, **changes: str) -> dict[str, str]:
    """Today's headers for row `i` — apns-id from the delivery id, the lane's priority, the
    notification id as collapse id, an alert — with `changes` applied."""
    row = batch.slice(i, 1).to_pylist()[0]
    headers = {
        "apns-id": str(uuid.uuid5(_ID_NAMESPACE, row["delivery_id"])),
        "apns-topic": stack.settings.apns.topic,
        "apns-priority": "10",
        "apns-collapse-id": row["notification_id"],
        "apns-push-type": "alert",
    }
    return {**headers, **changes}


def data_of(batch: pa.Table, i: int) -> dict[str, str]:
    """Row `i`'s data keys, which every provider request carries unchanged."""
    return json.loads(batch["data"][i].as_py())


# --- APNs ----------------------------------------------------------------------------------
def test_apns_exact_requests(stack, emulators, uid):
    riches = [
        None,
        Rich(image_url=IMAGE, subtitle="Tracking inside"),
        Rich(push_type="background"),
        Rich(badge=3, thread_id="order-A1", category="ORDER_UPDATE", sound="chime.caf"),
        Rich(deeplink="shop://orders/A1", collapse_key="order-A1", priority="normal"),
    ]
    batch = deliveries(uid, "apns", riches)
    assert send(stack, "apns", batch) == ["delivered"] * len(riches)
    got = [received(emulators["apns"], t) for t in batch["token"].to_pylist()]
    alert = {"title": TITLE, "body": BODY}

    assert apns_headers(got[0]) == expected_apns_headers(stack, batch, 0)
    assert got[0]["payload"] == {"aps": {"alert": alert, "sound": "default"}, **data_of(batch, 0)}

    assert apns_headers(got[1]) == expected_apns_headers(stack, batch, 1)
    assert got[1]["payload"] == {
        "aps": {
            "alert": {"title": TITLE, "subtitle": "Tracking inside", "body": BODY},
            "sound": "default",
            "mutable-content": 1,
        },
        **data_of(batch, 1),
        "image_url": IMAGE,
    }

    assert apns_headers(got[2]) == expected_apns_headers(
        stack, batch, 2, **{"apns-push-type": "background", "apns-priority": "5"}
    )
    assert got[2]["payload"] == {"aps": {"content-available": 1}, **data_of(batch, 2)}

    assert apns_headers(got[3]) == expected_apns_headers(stack, batch, 3)
    assert got[3]["payload"] == {
        "aps": {"alert": alert, "sound": "chime.caf", "badge": 3, "thread-id": "order-A1",
                "category": "ORDER_UPDATE"},
        **data_of(batch, 3),
    }  # fmt: skip

    assert apns_headers(got[4]) == expected_apns_headers(
        stack, batch, 4, **{"apns-collapse-id": "order-A1", "apns-priority": "5"}
    )
    assert got[4]["payload"] == {
        "aps": {"alert": alert, "sound": "default"},
        **data_of(batch, 4),
        "deeplink": "shop://orders/A1",
    }


def test_apns_ttl_is_an_expiration_from_acceptance(stack, emulators, uid):
    accepted_at = time.time() - 600  # the event came in ten minutes ago
    batch = deliveries(uid, "apns", [Rich(ttl_s=3600)], accepted_at=accepted_at)
    assert send(stack, "apns", batch) == ["delivered"]
    headers = apns_headers(received(emulators["apns"], batch["token"][0].as_py()))
    expiration = int(headers.pop("apns-expiration"))
    # Whole seconds twice (what is left, then aioapns' clock), and the send's own moment:
    # ten minutes early would be a TTL counted from the send instead.
    assert accepted_at + 3600 - 2 <= expiration <= accepted_at + 3600 + 5
    assert headers == expected_apns_headers(stack, batch, 0)


def test_marketing_lane_without_rich_is_todays_priority(stack, emulators, uid):
    batch = deliveries(uid, "apns", [None], lane="marketing")
    assert send(stack, "apns", batch, lane="marketing") == ["delivered"]
    item = received(emulators["apns"], batch["token"][0].as_py())
    assert apns_headers(item) == expected_apns_headers(stack, batch, 0, **{"apns-priority": "5"})


# --- FCM -----------------------------------------------------------------------------------
def test_fcm_exact_messages(stack, emulators, uid):
    riches = [
        None,
        Rich(image_url=IMAGE),
        Rich(push_type="background", priority="high"),
        Rich(badge=3, thread_id="order-A1", category="OPEN_ORDER", channel_id="orders"),
        Rich(deeplink="shop://orders/A1", collapse_key="order-A1", priority="normal"),
    ]
    batch = deliveries(uid, "fcm", riches)
    assert send(stack, "fcm", batch) == ["delivered"] * len(riches)
    tokens = batch["token"].to_pylist()
    nids = batch["notification_id"].to_pylist()
    got = [received(emulators["fcm"], t)["message"] for t in tokens]
    notification = {"title": TITLE, "body": BODY}

    def message(i: int, **fields) -> dict:
        base = {
            "token": tokens[i],
            "notification": notification,
            "data": data_of(batch, i),
            "android": {"priority": "high", "collapse_key": nids[i]},
        }
        return {**base, **fields}

    assert got[0] == message(0)
    assert got[1] == message(1, notification={**notification, "image": IMAGE})
    background = message(2)
    del background["notification"]
    assert got[2] == background
    assert got[3] == message(
        3,
        android={
            "priority": "high",
            "collapse_key": nids[3],
            "notification": {"tag": "order-A1", "click_action": "OPEN_ORDER",
                             "channel_id": "orders", "notification_count": 3},
        },
    )  # fmt: skip
    assert got[4] == message(
        4,
        data={**data_of(batch, 4), "deeplink": "shop://orders/A1"},
        android={
            "priority": "normal",
            "collapse_key": "order-A1",
            "notification": {"tag": "order-A1"},
        },
    )


def test_a_rich_outside_the_contract_fails_without_a_request(stack, emulators, uid):
    batch = deliveries(uid, "fcm", [None, None])
    bad = batch.set_column(
        DELIVERIES.get_field_index("rich"),
        DELIVERIES.field("rich"),
        pa.array([None, '{"imageUrl": "https://x/y.png"}'], pa.string()),
    )
    assert send(stack, "fcm", bad) == ["delivered", "failed"]
    items = emulators["fcm"].get("/_emulator/received").json()["received"]
    assert not [i for i in items if i.get("token") == bad["token"][1].as_py()]


# --- inbox and status ----------------------------------------------------------------------
def test_inbox_keeps_what_it_shows_and_refuses_a_silent_push(stack, uid):
    riches = [Rich(subtitle="s", image_url=IMAGE, deeplink="shop://o/A1", badge=2),
              Rich(push_type="background")]  # fmt: skip
    batch = deliveries(uid, "inbox", riches)
    assert send(stack, "inbox", batch) == ["delivered", "failed"]

    async def latest() -> list[dict]:
        client = async_client(stack.settings)
        try:
            return await InboxStore(stack.settings, client).latest(f"u-{uid}", 10)
        finally:
            await client.aclose()

    items = asyncio.run(latest())
    assert len(items) == 1
    assert items[0] == {
        "notification_id": batch["notification_id"][0].as_py(),
        "title": TITLE,
        "body": BODY,
        "created_at": batch["accepted_at"][0].as_py(),
        "data": data_of(batch, 0),
        "subtitle": "s",
        "image_url": IMAGE,
        "deeplink": "shop://o/A1",
    }


@pytest.mark.parametrize("rendered", [True, False])
def test_status_records_what_content_was_rendered_with(stack, uid, rendered):
    """Queued and after its answer, a device's status says what its content was rendered
    with — or, for content no template made, nothing about it."""
    columns = {"locale": "de-DE", "template_version": 4} if rendered else {}
    rows = pl.from_arrow(deliveries(uid, "apns", [None], **columns))
    answered = rows.with_columns(
        outcome=pl.lit("delivered"), error=pl.lit(None, pl.String), acked_at=pl.lit(1.0),
        attempts=pl.lit(1),
    )  # fmt: skip

    async def record() -> tuple[dict, dict]:
        client = async_client(stack.settings)
        try:
            state = DeliveryState(stack.settings, client)
            await state.record_routed(rows, pl.DataFrame(), pl.DataFrame())
            queued = (await state.get(rows["notification_id"][0]))["deliveries"][0]
            pipe = client.pipeline(transaction=True)
            state.record_results(answered, pipe)
            await pipe.execute()
            return queued, (await state.get(rows["notification_id"][0]))["deliveries"][0]
        finally:
            await client.aclose()

    queued, delivered = asyncio.run(record())
    shown = ("status", "locale", "template_version")
    assert {k: queued[k] for k in shown if k in queued} == {"status": "queued", **columns}
    assert {k: delivered[k] for k in shown if k in delivered} == {"status": "delivered", **columns}
