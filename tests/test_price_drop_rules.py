"""price.dropped → targets and deliveries, honouring the price_alert category and channel
preferences; wishlists as grouped columns (replace semantics)."""

import json

import polars as pl

from actors.columnar import GroupedTable
from cluster.tables.wishlists import WISHLISTS
from pipelines.price_drops import messages, meta, plan, render

EVENTS = pl.DataFrame(
    {
        "event_id": ["e1", "e2"],
        "product_id": ["P", "Q"],
        "old_price": [49.99, 10.0],
        "new_price": [39.5, 7.25],
        "currency": ["EUR", None],
        "title": ["Red shoes", None],
        "lane": ["marketing"] * 2,
        "accepted_at": [1.0, 2.0],
    }
)
# One row per (product, user, active device); null device columns for a user without one.
AUDIENCE = pl.DataFrame(
    {
        "product_id": ["P", "P", "P", "P", "P", "P", "Q"],
        "user_id": ["both", "both", "nodevice", "nopush", "optout", "mute", "both"],
        "push": [True, True, True, False, True, False, True],
        "inbox": [True, True, True, True, True, False, True],
        "cat_price_alert": [True, True, True, True, False, True, True],
        "device_id": ["d-ios", "d-and", None, "d-web", "d-x", "d-m", "d-ios"],
        "platform": ["ios", "android", None, "web", "ios", "ios", "ios"],
        "token": ["a" * 64, "x:y", None, "w:z", "b" * 64, "c" * 64, "a" * 64],
    }
)


def by_notification(frame: pl.DataFrame) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for nid, device, channel in frame.select("notification_id", "device_id", "channel").rows():
        out.setdefault(nid, set()).add((device, channel))
    return out


def test_one_notification_per_event_and_wisher_following_preferences():
    targets, suppressed = plan(EVENTS, AUDIENCE)
    assert by_notification(targets) == {
        "e1:both": {("d-ios", "apns"), ("d-and", "fcm"), ("inbox", "inbox")},
        "e1:nodevice": {("inbox", "inbox")},
        "e1:nopush": {("inbox", "inbox")},
        "e2:both": {("d-ios", "apns"), ("inbox", "inbox")},
    }
    assert dict(suppressed.select("notification_id", "reason").rows()) == {
        "e1:optout": "category_opt_out",
        "e1:mute": "channel_opt_out",
    }
    assert set(meta(suppressed)["type"]) == {"price.dropped"}


def test_content_and_ids():
    targets, _ = plan(EVENTS, AUDIENCE)
    deliveries = render(targets, messages(EVENTS))
    row = deliveries.filter(pl.col("delivery_id") == "e1:both|d-ios").row(0, named=True)
    assert row["title"] == "Price drop"
    assert row["body"] == "Red shoes is now 39.50 EUR (was 49.99 EUR)."
    assert row["lane"] == "marketing" and row["accepted_at"] == 1.0
    assert json.loads(row["data"]) == {
        "notification_id": "e1:both",
        "type": "price.dropped",
        "product_id": "P",
        "old_price": "49.99",
        "new_price": "39.50",
        "currency": "EUR",
    }
    other = deliveries.filter(pl.col("delivery_id") == "e2:both|inbox").row(0, named=True)
    assert other["body"] == "An item on your wishlist is now 7.25 (was 10.00)."


def test_targets_render_in_any_chunking():
    targets, _ = plan(EVENTS, AUDIENCE)
    content = messages(EVENTS)
    whole = render(targets, content)
    pieces = pl.concat([render(c, content) for c in targets.iter_slices(2)])
    assert pieces.sort("delivery_id").equals(whole.sort("delivery_id"))
    assert whole["delivery_id"].n_unique() == whole.height


def test_no_wishers_is_empty():
    targets, suppressed = plan(EVENTS, AUDIENCE.head(0))
    assert targets.height == 0 and suppressed.height == 0
    assert render(targets, messages(EVENTS)).height == 0


def test_grouped_table_replaces_a_users_whole_list():
    table = GroupedTable(WISHLISTS, "user_id", compact_parts=3)
    table.replace(pl.DataFrame({"user_id": ["a", "a", "b"], "product_id": ["P", "Q", "P"]}))
    table.replace(pl.DataFrame({"user_id": ["a"], "product_id": ["R"]}))
    assert sorted(table.where_in("product_id", ["P", "R"]).rows()) == [("a", "R"), ("b", "P")]
    table.replace(pl.DataFrame(schema=table._polars_schema), ["b"])  # b empties the list
    assert table.where_in("product_id", ["P", "Q", "R"]).rows() == [("a", "R")]
    assert table.frame().rows() == [("a", "R")]  # compacted after 3 writes
