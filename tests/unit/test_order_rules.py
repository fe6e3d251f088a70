"""order.updated → deliveries, honouring channel and category preferences."""

import json

import polars as pl

from pipelines.order_updates import TEMPLATES, plan

EVENTS = pl.DataFrame(
    {
        "notification_id": ["n1", "n2", "n3", "n4", "n5"],
        "user_id": ["both", "nodevice", "nopush", "optout", "pushonly"],
        "order_id": ["o1", "o2", "o3", "o4", "o5"],
        "status": ["shipped", "paid", "delivered", "placed", "refunded"],
        "lane": ["transactional"] * 5,
        "accepted_at": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
)
AUDIENCE = pl.DataFrame(
    {
        "user_id": ["both", "both", "nodevice", "nopush", "optout", "pushonly"],
        "push": [True, True, True, False, True, True],
        "inbox": [True, True, True, True, True, False],
        "email": [True, True, True, False, True, True],
        "cat_order": [True, True, True, True, False, True],
        "device_id": ["d-ios", "d-and", None, "d-web", "d-x", "d-web2"],
        "platform": ["ios", "android", None, "web", "ios", "web"],
        "token": ["a" * 64, "x:y", None, "w:z", "b" * 64, "q:r"],
    }
)


def by_notification(deliveries: pl.DataFrame) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for nid, device, channel in deliveries.select(
        "notification_id", "device_id", "channel"
    ).iter_rows():
        out.setdefault(nid, set()).add((device, channel))
    return out


def test_channels_follow_platform_and_preferences():
    deliveries, suppressed = plan(EVENTS, AUDIENCE)
    got = by_notification(deliveries)
    assert got["n1"] == {("d-ios", "apns"), ("d-and", "fcm"), ("inbox", "inbox")}
    assert got["n2"] == {("inbox", "inbox")}  # no device: inbox only
    assert got["n3"] == {("inbox", "inbox")}  # push turned off
    assert "n4" not in got  # order category turned off
    assert got["n5"] == {("d-web2", "fcm")}  # web push goes through FCM
    assert dict(suppressed.select("notification_id", "reason").iter_rows()) == {
        "n4": "category_opt_out"
    }


def test_content_is_rendered_per_status():
    deliveries, _ = plan(EVENTS, AUDIENCE)
    row = deliveries.filter(pl.col("delivery_id") == "n1|d-ios").row(0, named=True)
    assert row["title"] == TEMPLATES["shipped"][0]
    assert row["body"] == "Your order o1 is on its way."
    assert json.loads(row["data"]) == {
        "notification_id": "n1",
        "type": "order.updated",
        "order_id": "o1",
        "status": "shipped",
    }
    assert row["token"] == "a" * 64 and row["accepted_at"] == 1.0


def test_unknown_user_gets_inbox_with_default_preferences():
    events = EVENTS.head(1).with_columns(user_id=pl.lit("stranger"))
    deliveries, suppressed = plan(events, AUDIENCE.head(0))
    assert by_notification(deliveries) == {"n1": {("inbox", "inbox")}}
    assert suppressed.height == 0


def test_fallback_reaches_users_no_push_can_reach_who_allow_email():
    deliveries, _ = plan(EVENTS, AUDIENCE, fallback=True)
    webhooks = {
        nid for nid, got in by_notification(deliveries).items() if ("webhook", "webhook") in got
    }
    # n2 has no device; n3 turned push off but also email; n4 opted out of orders.
    assert webhooks == {"n2"}
