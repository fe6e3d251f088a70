"""order.updated → deliveries, honouring channel and category preferences."""

import json

import polars as pl
import pytest
from pydantic import ValidationError

from api.events import OrderUpdated
from cluster.state.orders import script_args
from cluster.tables.deliveries import Rich
from pipelines.order_updates import TEMPLATES, ordering, superseded
from pipelines.order_updates import plan as plan_with
from pipelines.templates import defaults, parse

# What every push of order o1 carries unless the event gives a collapse key.
ORDER_THREAD = {"collapse_key": "order:o1", "thread_id": "order:o1"}
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


def plan(events, audience, fallback=False, templates=None, default_locale="en"):
    """The rule with the shipped templates unless a test hands others."""
    return plan_with(
        events,
        audience,
        fallback,
        templates=defaults() if templates is None else templates,
        default_locale=default_locale,
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


LOCALIZED = EVENTS.head(1).with_columns(user_id=pl.lit("u"))


def _audience(device_locales, profile_locale=None):
    n = len(device_locales)
    return pl.DataFrame(
        {
            "user_id": ["u"] * n,
            "push": [True] * n,
            "inbox": [True] * n,
            "email": [True] * n,
            "cat_order": [True] * n,
            "device_id": [f"d{i}" for i in range(n)],
            "platform": ["ios"] * n,
            "token": ["a" * 64] * n,
            "device_locale": pl.Series(device_locales, dtype=pl.String),
            "profile_locale": pl.Series([profile_locale] * n, dtype=pl.String),
        }
    )


def _texts(deliveries):
    return {
        row["device_id"]: (row["title"], row["body"], row["locale"], row["template_version"])
        for row in deliveries.iter_rows(named=True)
    }


def test_each_device_in_its_language_else_the_profile_else_the_default():
    deliveries, _ = plan(LOCALIZED, _audience(["de-DE", None], profile_locale="fr"))
    got = _texts(deliveries)
    assert got["d0"] == ("Bestellung versandt", "Ihre Bestellung o1 ist unterwegs.", "de", 0)
    assert got["d1"] == ("Commande expédiée", "Votre commande o1 est en route.", "fr", 0)
    assert got["inbox"][2] == "fr"  # the inbox follows the profile
    deliveries, _ = plan(LOCALIZED, _audience([None, "de-AT"]))
    assert _texts(deliveries)["inbox"][2] == "de"  # else the user's device
    deliveries, _ = plan(LOCALIZED, _audience([None]), default_locale="es")
    assert _texts(deliveries)["d0"][:3] == ("Pedido enviado", "Tu pedido o1 está en camino.", "es")


def test_english_stays_as_it_was_and_carries_only_the_order_thread():
    deliveries, _ = plan(LOCALIZED, _audience(["en-US"]))
    row = deliveries.filter(pl.col("device_id") == "d0").row(0, named=True)
    assert (row["title"], row["body"]) == ("Order shipped", "Your order o1 is on its way.")
    assert json.loads(row["rich"]) == ORDER_THREAD and row["locale"] == "en"


def test_regional_locale_falls_back_to_its_language_and_shop_override_wins():
    shop = parse(
        {
            "template_id": "order.shipped",
            "category": "order",
            "version": 7,
            "variables": {"order_id": {"type": "string"}},
            "locales": {
                "en": {"title": "On its way", "body": "Order {order_id} left us."},
                "pt": {
                    "title": "Pedido enviado",
                    "body": "O pedido {order_id} saiu.",
                    "sound": "x",
                },
            },
        }
    )
    templates = {**defaults(), "order.shipped": shop}
    deliveries, _ = plan(LOCALIZED, _audience(["pt-BR", "en"]), templates=templates)
    got = _texts(deliveries)
    assert got["d0"] == ("Pedido enviado", "O pedido o1 saiu.", "pt", 7)
    assert got["d1"] == ("On its way", "Order o1 left us.", "en", 7)
    rich = deliveries.filter(pl.col("device_id") == "d0")["rich"][0]
    assert json.loads(rich) == {"sound": "x", **ORDER_THREAD}


def test_event_template_and_delivery_options():
    events = LOCALIZED.with_columns(
        template_id=pl.lit("order.delayed"),
        priority=pl.lit("high"),
        ttl_s=pl.lit(600, dtype=pl.Int64),
        collapse_key=pl.lit("o1"),
        body=pl.lit('{"order_id": "o1", "status": "shipped"}'),
    )
    deliveries, _ = plan(events, _audience(["en"]))
    row = deliveries.filter(pl.col("device_id") == "d0").row(0, named=True)
    assert row["title"] == "Order delayed"
    assert json.loads(row["rich"]) == {
        "priority": "high",
        "ttl_s": 600,
        "collapse_key": "o1",
        "thread_id": "o1",  # the event's collapse key threads the order too
    }


def test_an_orders_pushes_share_one_collapse_id_and_thread():
    events = EVENTS.head(1).vstack(
        EVENTS.head(1).with_columns(notification_id=pl.lit("n1b"), status=pl.lit("delivered"))
    )
    deliveries, _ = plan(events, AUDIENCE)
    riches = {Rich.parse(r) for r in deliveries["rich"]}
    assert riches == {Rich(collapse_key="order:o1", thread_id="order:o1")}
    assert deliveries["notification_id"].unique().len() == 2


def test_a_long_order_id_gets_a_digest_within_the_collapse_limit():
    long_id = "o" * 128
    deliveries, _ = plan(EVENTS.head(1).with_columns(order_id=pl.lit(long_id)), AUDIENCE)
    keys = {Rich.parse(r).collapse_key for r in deliveries["rich"]}
    (key,) = keys
    assert key.startswith("order:") and len(key.encode()) <= 64 and key != "order:" + long_id


def test_ordering_reads_the_log_body_and_leaves_unset_null():
    events = EVENTS.head(3).with_columns(
        event_id=pl.col("notification_id"),
        body=pl.Series(
            [
                '{"order_id": "o1", "sequence": 7, "occurred_at": 1700000000.5}',
                '{"order_id": "o2", "occurred_at": 1700000001}',
                '{"order_id": "o3"}',
            ]
        ),
    )
    got = ordering(events)
    assert got.columns == ["event_id", "order_id", "sequence", "occurred_at", "accepted_at"]
    assert got["sequence"].to_list() == [7, None, None]
    assert got["occurred_at"].to_list() == [1700000000.5, 1700000001.0, None]
    assert ordering(EVENTS)["sequence"].null_count() == EVENTS.height  # no body: unset


def test_superseded_updates_are_suppressed_with_their_reason():
    rows = superseded(EVENTS.head(2))
    assert rows.rows() == [("n1", "both", "superseded"), ("n2", "nodevice", "superseded")]


def test_script_args_spell_unset_as_empty_and_times_exactly():
    frame = pl.DataFrame(
        {
            "event_id": ["a", "b"],
            "sequence": [2**62, None],
            "occurred_at": [None, 1700000000.123456],
            "accepted_at": [1.5, 2.0],
        }
    )
    assert script_args(frame) == ["a", str(2**62), "", "1.5", "b", "", "1700000000.123456", "2.0"]


def test_sequence_is_an_optional_non_negative_field_logged_only_when_given():
    base = {"event_id": "e", "type": "order.updated", "user_id": "u", "order_id": "o"}
    update = OrderUpdated(**base, status="shipped")
    assert update.sequence is None and "sequence" not in update.logged()
    assert OrderUpdated(**base, status="shipped", sequence=3).logged()["sequence"] == 3
    with pytest.raises(ValidationError):
        OrderUpdated(**base, status="shipped", sequence=-1)
