"""Rich push, per provider, without a cluster: the `rich` contract (`Rich.parse`) and the
pure functions that turn a delivery row into each provider's exact request — APNs payload
and header fields, FCM's message as firebase-admin puts it on the wire, the inbox item,
the webhook body — and the delivery status JSON that records what content was rendered."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from aioapns import PushType
from firebase_admin import messaging

from actors.senders.apns import apns_payload, apns_request
from actors.senders.fcm import fcm_message
from actors.senders.inbox import BACKGROUND_REFUSED, inbox_items, refusals
from actors.senders.webhook import webhook_body
from cluster.state.deliveries import _status_json
from cluster.tables.deliveries import (
    DELIVERIES,
    NO_RICH,
    InvalidRich,
    Rich,
    conform,
    parse_rich,
    with_present,
)

NOW = 1_700_000_000.0
DATA = {"notification_id": "n1", "type": "order.updated", "order_id": "A1"}
IMAGE = "https://cdn.example.com/p/1.jpg"


def row(lane: str = "transactional", **fields) -> dict:
    return {
        "delivery_id": "n1|d1",
        "notification_id": "n1",
        "user_id": "u1",
        "device_id": "d1",
        "channel": "apns",
        "token": "ab" * 32,
        "title": "Order shipped",
        "body": "Your order A1 is on its way.",
        "data": json.dumps(DATA),
        "lane": lane,
        "accepted_at": NOW,
        "rich": None,
        **fields,
    }


def fcm_json(rich: Rich, lane: str = "transactional", now: float = NOW) -> dict:
    """The message object exactly as firebase-admin sends it."""
    return messaging._MessagingService.encode_message(fcm_message(row(lane), rich, now))


# --- the contract ------------------------------------------------------------------------
def test_null_rich_is_no_extras():
    assert Rich.parse(None) is NO_RICH
    assert Rich.parse("{}") == NO_RICH
    assert Rich.parse('{"badge": null}') == NO_RICH  # null is absent


def test_a_full_rich_round_trips():
    rich = Rich(subtitle="s", image_url=IMAGE, deeplink="shop://o/1", sound="ping", badge=2,
                thread_id="t", category="ORDER", collapse_key="c", priority="normal",
                ttl_s=60, channel_id="orders")  # fmt: skip
    assert Rich.parse(rich.to_json()) == rich
    assert "push_type" not in rich.present()  # the default is not spelled out


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"imageUrl": "https://x/y"}', "unknown keys ['imageUrl']"),
        ('{"badge": "3"}', "badge must be an integer"),
        ('{"badge": true}', "badge must be an integer"),
        ('{"badge": -1}', "badge must be an integer"),
        ('{"ttl_s": 2419201}', "ttl_s must be an integer from 0 to 2419200"),
        ('{"push_type": "voip"}', "push_type must be one of"),
        ('{"priority": "urgent"}', "priority must be one of"),
        ('{"sound": ""}', "sound must be a non-empty string"),
        ('{"image_url": "ftp://x/y.png"}', "image_url must be an http(s) URL"),
        ('{"image_url": "/relative.png"}', "image_url must be an http(s) URL"),
        ('{"collapse_key": "' + "é" * 33 + '"}', "at most 64 bytes"),
        ('{"push_type": "background", "badge": 1}', "background push shows nothing"),
    ],
)
def test_outside_the_contract_is_refused(raw, says):
    with pytest.raises(InvalidRich, match=re.escape(says)):
        Rich.parse(raw)


def test_parse_rich_answers_per_row():
    riches, errors = parse_rich(pl.Series([None, '{"badge": 1}', '{"badge": "x"}']))
    assert riches == [NO_RICH, Rich(badge=1), NO_RICH]
    assert errors[:2] == [None, None] and errors[2].startswith("InvalidRich: badge")
    riches, errors = parse_rich(pl.Series([None, None], dtype=pl.String))
    assert riches == [NO_RICH, NO_RICH] and errors == [None, None]


def test_ttl_counts_from_acceptance_and_never_goes_negative():
    rich = Rich(ttl_s=600)
    assert rich.ttl_left(NOW, NOW) == 600
    assert rich.ttl_left(NOW, NOW + 100) == 500  # a retry does not extend it
    assert rich.ttl_left(NOW, NOW + 900) == 0
    assert NO_RICH.ttl_left(NOW, NOW) is None


def test_priority_defaults_to_the_lane():
    assert NO_RICH.priority_for("transactional") == "high"
    assert NO_RICH.priority_for("marketing") == "normal"
    assert Rich(priority="high").priority_for("marketing") == "high"


# --- APNs ----------------------------------------------------------------------------------
def test_apns_without_rich_is_todays_request():
    request = apns_request(row(), NO_RICH, NOW)
    assert request.message == {
        "aps": {"alert": {"title": "Order shipped", "body": "Your order A1 is on its way."},
                "sound": "default"},
        **DATA,
    }  # fmt: skip
    assert (request.priority, request.collapse_key, request.push_type) == (10, "n1", PushType.ALERT)
    assert request.time_to_live is None
    assert apns_request(row("marketing"), NO_RICH, NOW).priority == 5
    # The same delivery is the same apns-id on every resend.
    assert request.notification_id == apns_request(row(), NO_RICH, NOW + 5).notification_id


def test_apns_image_subtitle_badge_thread_category():
    rich = Rich(subtitle="Tracking inside", image_url=IMAGE, badge=3, thread_id="order-A1",
                category="ORDER_UPDATE", sound="chime.caf")  # fmt: skip
    assert apns_payload("T", "B", json.dumps(DATA), rich) == {
        "aps": {
            "alert": {"title": "T", "subtitle": "Tracking inside", "body": "B"},
            "sound": "chime.caf",
            "badge": 3,
            "thread-id": "order-A1",
            "category": "ORDER_UPDATE",
            "mutable-content": 1,
        },
        **DATA,
        "image_url": IMAGE,
    }


def test_apns_background_is_silent_at_priority_5():
    rich = Rich(push_type="background", priority="high", deeplink="shop://sync")
    request = apns_request(row(), rich, NOW)
    assert request.message == {"aps": {"content-available": 1}, **DATA, "deeplink": "shop://sync"}
    assert (request.push_type, request.priority) == (PushType.BACKGROUND, 5)


def test_apns_headers_from_rich():
    rich = Rich(collapse_key="order-A1", priority="normal", ttl_s=3600, deeplink="shop://o/A1")
    request = apns_request(row(), rich, NOW + 600)
    assert (request.collapse_key, request.priority, request.time_to_live) == ("order-A1", 5, 3000)
    assert request.message["deeplink"] == "shop://o/A1"
    assert request.message["aps"] == {
        "alert": {"title": "Order shipped", "body": "Your order A1 is on its way."},
        "sound": "default",
    }


def test_apns_default_collapse_id_is_cut_to_64_bytes():
    long_id = "é" * 40  # 80 bytes
    request = apns_request(row(notification_id=long_id), NO_RICH, NOW)
    assert request.collapse_key == "é" * 32


# --- FCM -----------------------------------------------------------------------------------
def test_fcm_without_rich_is_todays_message():
    assert fcm_json(NO_RICH) == {
        "token": "ab" * 32,
        "notification": {"title": "Order shipped", "body": "Your order A1 is on its way."},
        "data": DATA,
        "android": {"priority": "high", "collapse_key": "n1"},
    }
    assert fcm_json(NO_RICH, "marketing")["android"] == {"priority": "normal", "collapse_key": "n1"}


def test_fcm_image_badge_thread_category_channel():
    rich = Rich(subtitle="ignored on Android", image_url=IMAGE, badge=3, thread_id="order-A1",
                category="OPEN_ORDER", sound="chime", channel_id="orders", ttl_s=120,
                collapse_key="order-A1", priority="normal")  # fmt: skip
    assert fcm_json(rich, now=NOW + 20) == {
        "token": "ab" * 32,
        "notification": {"title": "Order shipped", "body": "Your order A1 is on its way.",
                         "image": IMAGE},
        "data": DATA,
        "android": {
            "priority": "normal",
            "ttl": "100s",
            "collapse_key": "order-A1",
            "notification": {"sound": "chime", "tag": "order-A1", "click_action": "OPEN_ORDER",
                             "channel_id": "orders", "notification_count": 3},
        },
    }  # fmt: skip


def test_fcm_background_is_data_only():
    rich = Rich(push_type="background", deeplink="shop://sync", ttl_s=0)
    assert fcm_json(rich, "marketing") == {
        "token": "ab" * 32,
        "data": {**DATA, "deeplink": "shop://sync"},
        "android": {"priority": "normal", "ttl": "0s", "collapse_key": "n1"},
    }


def test_fcm_collapse_key_tags_when_there_is_no_thread():
    android = fcm_json(Rich(collapse_key="price-P1"))["android"]
    assert android["collapse_key"] == "price-P1"
    assert android["notification"] == {"tag": "price-P1"}


# --- inbox, webhook, status ----------------------------------------------------------------
def frame(*riches: str | None) -> pl.DataFrame:
    rows = [row(notification_id=f"n{i}", rich=r) for i, r in enumerate(riches)]
    return conform(pl.DataFrame(rows))


def test_inbox_item_without_rich_is_unchanged():
    item = json.loads(inbox_items(frame(None))["item"][0])
    assert item == {
        "notification_id": "n0",
        "title": "Order shipped",
        "body": "Your order A1 is on its way.",
        "created_at": NOW,
        "data": DATA,
    }


def test_inbox_item_keeps_what_an_inbox_shows():
    raw = Rich(subtitle="s", image_url=IMAGE, deeplink="shop://o", badge=4).to_json()
    rows = frame(raw, None)
    riches, errors = parse_rich(rows["rich"])
    items = [json.loads(i) for i in inbox_items(rows, riches)["item"]]
    assert items[0] == {"notification_id": "n0", "title": "Order shipped",
                        "body": "Your order A1 is on its way.", "created_at": NOW, "data": DATA,
                        "subtitle": "s", "image_url": IMAGE, "deeplink": "shop://o"}  # fmt: skip
    assert "subtitle" not in items[1] and "deeplink" not in items[1]


def test_inbox_refuses_silent_and_invalid_rows():
    rows = frame('{"push_type": "background"}', '{"badge": "x"}', None)
    refused = refusals(*parse_rich(rows["rich"]))
    assert refused[0] == BACKGROUND_REFUSED
    assert refused[1].startswith("InvalidRich:") and refused[2] is None


def test_webhook_passes_rich_through():
    rich = Rich(image_url=IMAGE, deeplink="shop://o")
    body = webhook_body(row(rich=rich.to_json()), rich)
    assert body["rich"] == {"image_url": IMAGE, "deeplink": "shop://o"}
    assert "rich" not in webhook_body(row(), NO_RICH)


def test_status_records_locale_and_template_version_when_present():
    rows = frame(None, None).with_columns(
        locale=pl.Series(["de-DE", None]), template_version=pl.Series([7, None])
    )
    values = rows.select(_status_json(rows, channel="channel", status=pl.lit("queued")))
    assert [json.loads(v) for v in values["value"]] == [
        {"channel": "apns", "status": "queued", "locale": "de-DE", "template_version": 7},
        {"channel": "apns", "status": "queued"},
    ]
    # Rows without the columns at all (written before they existed) still encode.
    bare = rows.drop("locale", "template_version")
    assert bare.select(_status_json(bare, channel="channel"))["value"][0] == '{"channel":"apns"}'


def test_conform_types_rows_read_back_from_json():
    rows = pl.DataFrame([{"delivery_id": "x", "rich": None, "template_version": None}])
    assert rows.schema["rich"] == pl.Null
    typed = conform(rows)
    assert typed.schema["rich"] == pl.String and typed.schema["template_version"] == pl.Int64
    assert typed.schema["locale"] == pl.String
    full = conform(pl.DataFrame({name: [] for name in DELIVERIES.names}))
    assert full.columns == DELIVERIES.names


def test_with_present_leaves_absent_keys_out():
    rows = pl.DataFrame({"a": ["x", "y"], "k": ['he said "}"', None]})
    encoded = rows.select(with_present(pl.struct("a").struct.json_encode(), ["k"]))
    assert [json.loads(v) for v in encoded.to_series()] == [{"a": "x", "k": 'he said "}"'},
                                                             {"a": "y"}]  # fmt: skip
