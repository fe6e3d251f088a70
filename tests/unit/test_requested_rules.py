"""notification.requested → one notification per (event, user): template or inline
content in each device's language, channels and category preferences honoured."""

import json

import polars as pl

from pipelines.requested import notifications, plan
from pipelines.templates import PUSH_FIELDS, defaults, parse

CONTENT = pl.Struct({f: pl.Int64 if f == "badge" else pl.String for f in PUSH_FIELDS})
BACK_IN_STOCK = parse(
    {
        "template_id": "back_in_stock",
        "version": 3,
        "variables": {"product": {"type": "string"}, "price": {"type": "money"}},
        "locales": {
            "en": {"title": "Back in stock", "body": "{product} is back at {price}."},
            "de": {"title": "Wieder da", "body": "{product} ist wieder da, für {price}."},
            "fr": {"title": "De retour", "body": "{product} est de retour à {price}."},
        },
    }
)
TEMPLATES = {**defaults(), "back_in_stock": BACK_IN_STOCK}


def events(**overrides):
    base = {
        "event_id": ["e1"],
        "type": ["notification.requested"],
        "user_ids": [["de", "fr", "plain", "off"]],
        "template_id": ["back_in_stock"],
        "content": [None],
        "variables": ['{"product": "Boots", "price": 59.5}'],
        "category": ["back_in_stock"],
        "channels": [["push", "inbox"]],
        "priority": [None],
        "ttl_s": [None],
        "collapse_key": [None],
        "data": [None],
        "lane": ["transactional"],
        "accepted_at": [1.0],
    }
    base.update(overrides)
    return pl.DataFrame(base, schema_overrides={"content": CONTENT, "ttl_s": pl.Int64})


AUDIENCE = pl.DataFrame(
    {
        "user_id": ["de", "fr", "plain", "off"],
        "push": [True] * 4,
        "inbox": [True] * 4,
        "email": [True] * 4,
        "cat_order": [True] * 4,
        "cat_price_alert": [True] * 4,
        "cat_marketing": [True] * 4,
        "categories_off": [None, [], None, ["back_in_stock"]],
        "profile_locale": [None, "fr-FR", None, None],
        "device_id": ["d-de", "d-fr", "d-plain", "d-off"],
        "platform": ["ios", "android", "ios", "ios"],
        "token": ["a" * 64, "x:y", "b" * 64, "c" * 64],
        "device_locale": ["de-DE", None, None, None],
    }
)


def by_delivery(deliveries):
    return {row["delivery_id"]: row for row in deliveries.iter_rows(named=True)}


def test_one_notification_per_user_from_a_template_in_each_language():
    deliveries, suppressed = plan(events(), AUDIENCE, templates=TEMPLATES)
    got = by_delivery(deliveries)
    assert set(got) == {f"e1:{u}|{d}" for u in ("de", "fr", "plain") for d in (f"d-{u}", "inbox")}
    de, fr, plain = got["e1:de|d-de"], got["e1:fr|d-fr"], got["e1:plain|d-plain"]
    assert (de["title"], de["body"], de["locale"]) == (
        "Wieder da", "Boots ist wieder da, für 59,50.", "de"
    )  # fmt: skip
    assert (fr["body"], fr["locale"], fr["template_version"]) == (
        "Boots est de retour à 59,50.", "fr", 3
    )  # fmt: skip
    assert (plain["body"], plain["locale"]) == ("Boots is back at 59.50.", "en")
    assert json.loads(de["data"]) == {
        "notification_id": "e1:de",
        "type": "notification.requested",
        "event_id": "e1",
        "template_id": "back_in_stock",
    }
    assert dict(suppressed.select("notification_id", "reason").iter_rows()) == {
        "e1:off": "category_opt_out"
    }


def test_inline_content_with_data_and_options():
    inline = {"title": "Hi {name}", "body": "{n} points", "image_url": "https://x/i.png"}
    frame = events(
        template_id=[None],
        content=[inline],
        variables=['{"name": "Ann", "n": 2}'],
        priority=["high"],
        data=['{"ref": "r1"}'],
        channels=[["push"]],
    )
    deliveries, _ = plan(frame, AUDIENCE, templates=TEMPLATES)
    got = by_delivery(deliveries)
    assert set(got) == {"e1:de|d-de", "e1:fr|d-fr", "e1:plain|d-plain"}  # push only
    row = got["e1:de|d-de"]
    assert (row["title"], row["body"]) == ("Hi Ann", "2 points")
    assert row["locale"] is None and row["template_version"] is None
    assert json.loads(row["rich"]) == {"image_url": "https://x/i.png", "priority": "high"}
    data = json.loads(row["data"])
    assert data["ref"] == "r1" and "template_id" not in data


def test_channels_and_fixed_categories():
    frame = events(channels=[["inbox"]], category=["marketing"])
    audience = AUDIENCE.with_columns(cat_marketing=pl.col("user_id") != "fr")
    deliveries, suppressed = plan(frame, audience, templates=TEMPLATES)
    assert set(deliveries["delivery_id"]) == {"e1:de|inbox", "e1:plain|inbox", "e1:off|inbox"}
    assert dict(suppressed.select("notification_id", "reason").iter_rows()) == {
        "e1:fr": "category_opt_out"
    }
    inbox_off = audience.with_columns(inbox=pl.lit(False))  # and the event asks inbox only
    _, suppressed = plan(frame, inbox_off, templates=TEMPLATES)
    assert dict(suppressed.select("notification_id", "reason").iter_rows()) == {
        "e1:de": "channel_opt_out",
        "e1:fr": "category_opt_out",
        "e1:plain": "channel_opt_out",
        "e1:off": "channel_opt_out",
    }


def test_users_without_devices_or_preferences_get_the_inbox():
    frame = events(user_ids=[["stranger"]])
    deliveries, suppressed = plan(frame, AUDIENCE.head(0), templates=TEMPLATES)
    assert deliveries["delivery_id"].to_list() == ["e1:stranger|inbox"]
    assert suppressed.height == 0
    assert notifications(frame)["notification_id"].to_list() == ["e1:stranger"]


def test_logged_event_decodes_into_what_the_rule_reads():
    """The router's decoding of a logged body (`api.events`) feeds `plan` as is."""
    from actors.router import _DROPPED_BY_TYPE, EventRouter
    from api.events import NotificationRequested

    event = NotificationRequested(
        event_id="e9",
        type="notification.requested",
        user_ids=["de", "fr"],
        content={"title": "Hi {name}", "body": "{n} left", "badge": 1},
        variables={"name": "Ann", "n": 3},
        category="back_in_stock",
        collapse_key="k1",
        data={"ref": "r"},
    )
    entries = pl.DataFrame(
        {"entry_id": ["1-0"], "body": [json.dumps(event.logged())], "accepted_at": [5.0]}
    )
    frame = EventRouter._frame(entries, "transactional")
    frame = frame.drop(_DROPPED_BY_TYPE["notification.requested"])
    deliveries, _ = plan(frame, AUDIENCE, templates=TEMPLATES)
    row = by_delivery(deliveries)["e9:de|d-de"]
    assert (row["title"], row["body"], row["accepted_at"]) == ("Hi Ann", "3 left", 5.0)
    assert json.loads(row["rich"]) == {"badge": 1, "collapse_key": "k1"}
    assert json.loads(row["data"])["ref"] == "r"
    assert set(deliveries["channel"]) == {"apns", "fcm", "inbox"}
