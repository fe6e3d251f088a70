"""price.dropped → targets and deliveries through the campaigns' eligibility and ranker:
the price_alert category and channel preferences, quiet hours (held, not dropped), the
marketing frequency cap (also across several drops in one batch), dedup on redelivery,
ranked order and the per-drop audience limit; wishlists as grouped columns (replace
semantics). Pure unit tests: no Ray, no Redis."""

import json
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from actors.columnar import GroupedTable
from cluster.tables.wishlists import WISHLISTS
from models.ranker import load_ranker
from pipelines.price_drops import VARIANTS, Plan, messages, meta, plan, render, sends
from pipelines.templates import defaults, parse

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()  # Berlin 13:00 (UTC+1)
RANKER = load_ranker()
EN = "Red shoes is now 39.50 EUR (was 49.99 EUR)."  # e1 as it read before templates

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
        "product_id": ["P", "P", "P", "P", "P", "P", "P", "Q"],
        "user_id": ["both", "both", "nodevice", "nopush", "optout", "mute", "pushonly", "both"],
        "push": [True, True, True, False, True, False, True, True],
        "inbox": [True, True, True, True, True, False, False, True],
        "cat_price_alert": [True, True, True, True, False, True, True, True],
        "device_id": ["d-ios", "d-and", None, "d-web", "d-x", "d-m", None, "d-ios"],
        "platform": ["ios", "android", None, "web", "ios", "ios", None, "ios"],
        "token": ["a" * 64, "x:y", None, "w:z", "b" * 64, "c" * 64, None, "a" * 64],
    }
)


def by_notification(frame: pl.DataFrame) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for nid, device, channel in frame.select("notification_id", "device_id", "channel").rows():
        out.setdefault(nid, set()).add((device, channel))
    return out


def run(events=EVENTS, audience=AUDIENCE, **kwargs) -> Plan:
    return plan(events, audience, now=NOW, ranker=kwargs.pop("ranker", RANKER), **kwargs)


def wishers(product: str, users: list[str], **columns) -> pl.DataFrame:
    """Wisher rows of `product`, one iPhone each, every preference at its default unless
    given (a column of values, one per user)."""
    n = len(users)
    base = {
        "product_id": [product] * n,
        "user_id": users,
        "push": [True] * n,
        "inbox": [True] * n,
        "cat_price_alert": [True] * n,
        "cat_marketing": [True] * n,
        "timezone": ["UTC"] * n,
        "quiet_start_min": pl.Series([None] * n, dtype=pl.Int16),
        "quiet_end_min": pl.Series([None] * n, dtype=pl.Int16),
        "max_marketing_per_day": pl.Series([3] * n, dtype=pl.Int32),
        "device_id": [f"d-{u}" for u in users],
        "platform": ["ios"] * n,
        "token": ["a" * 64] * n,
    }
    return pl.DataFrame({**base, **columns})


def drop(event_id: str, product: str, **columns) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [event_id],
            "product_id": [product],
            "old_price": [10.0],
            "new_price": [8.0],
            "currency": [None],
            "title": [None],
            "lane": ["marketing"],
            "accepted_at": [1.0],
            **{k: [v] for k, v in columns.items()},
        },
        schema_overrides={"currency": pl.String, "title": pl.String},
    )


class ByUser:
    """A stand-in model: P(opened) looked up per user, whatever the features say."""

    version = "stub"

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score(self, users, variants, *, category, now):
        return np.array([[self.scores[u]] for u in users["user_id"]], dtype=np.float64)


def test_one_notification_per_event_and_wisher_following_preferences():
    targets, suppressed, counts, _ = run()
    assert by_notification(targets) == {
        "e1:both": {("d-ios", "apns"), ("d-and", "fcm"), ("inbox", "inbox")},
        "e1:nodevice": {("inbox", "inbox")},
        "e1:nopush": {("inbox", "inbox")},
        "e2:both": {("d-ios", "apns"), ("inbox", "inbox")},
    }
    # The campaigns' reasons: push only without an active device is no_reachable_channel.
    assert dict(suppressed.select("notification_id", "reason").rows()) == {
        "e1:optout": "category_opt_out",
        "e1:mute": "channel_opt_out",
        "e1:pushonly": "no_reachable_channel",
    }
    assert counts == {
        "targeted": 7,
        "suppressed:category_opt_out": 1,
        "suppressed:channel_opt_out": 1,
        "suppressed:no_reachable_channel": 1,
        "suppressed:already_sent": 0,
        "suppressed:frequency_cap": 0,
        "eligible": 4,
        "selected": 4,
        "deferred": 0,
    }
    assert set(meta(suppressed)["type"]) == {"price.dropped"}
    assert targets["send_after"].null_count() == targets.height


def test_content_and_ids():
    targets, _, _, _ = run()
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
    recorded = meta(targets, RANKER.version).row(0, named=True)
    assert recorded["model_version"] == RANKER.version and recorded["score"] > 0


def _texts(events=EVENTS.head(1), templates=None, default_locale="en", **columns) -> dict:
    """delivery_id → (title, body, locale, template_version, rich) for `both`'s devices."""
    mine = (pl.col("user_id") == "both") & pl.col("product_id").is_in(events["product_id"])
    targets, _, _, _ = run(events, AUDIENCE.filter(mine).with_columns(**columns))
    rows = render(targets, messages(EVENTS), templates, default_locale)
    named = ("delivery_id", "title", "body", "locale", "template_version", "rich")
    return {r[0]: r[1:] for r in rows.select(named).rows()}


def test_each_device_in_its_language_else_the_profile_else_the_default():
    got = _texts(device_locale=pl.Series(["de-DE", None]), profile_locale=pl.lit("fr"))
    de = ("Preis gesenkt", "Red shoes kostet jetzt 39,50 EUR (vorher 49,99 EUR).", "de", 0, None)
    fr = ("Prix en baisse", "Red shoes passe à 39,50 EUR (au lieu de 49,99 EUR).", "fr", 0, None)
    assert got == {"e1:both|d-ios": de, "e1:both|d-and": fr, "e1:both|inbox": fr}  # profile's
    got = _texts(device_locale=pl.Series([None, "de-AT"]))
    assert got["e1:both|inbox"][2] == "de"  # else the user's device
    assert got["e1:both|d-ios"] == ("Price drop", EN, "en", 0, None)  # else the default
    got = _texts(default_locale="es")["e1:both|d-ios"]
    assert got[1:3] == ("Red shoes ahora cuesta 39,50 EUR (antes 49,99 EUR).", "es")


def test_a_drop_without_name_or_currency_reads_well_in_german_too():
    """(English: `test_content_and_ids`.)"""
    got = _texts(EVENTS.tail(1), device_locale=pl.lit("de-DE"))
    assert got["e2:both|d-ios"][1] == "An item on your wishlist kostet jetzt 7,25 (vorher 10,00)."
    assert got["e2:both|inbox"][1] == "An item on your wishlist kostet jetzt 7,25 (vorher 10,00)."


def _shop(body: str, **variables) -> dict:
    return {**defaults(), "price_drop": parse({
        "template_id": "price_drop", "category": "price_alert", "version": 3,
        "variables": {"title": {"type": "string"}, "new_price": {"type": "money"}, **variables},
        "locales": {"en": {"title": "Cheaper!", "body": body, "subtitle": "Wishlist"},
                    "de": {"title": "Billiger!", "body": "{title}: {new_price}"}},
    })}  # fmt: skip


def test_a_shops_override_changes_the_text_and_one_it_cannot_fill_keeps_english():
    shop = _shop("{title} now {new_price}")
    got = _texts(templates=shop, device_locale=pl.Series(["de-DE", "en-GB"]))
    assert got["e1:both|d-ios"] == ("Billiger!", "Red shoes: 39,50", "de", 3, None)
    assert got["e1:both|d-and"][:4] == ("Cheaper!", "Red shoes now 39.50", "en", 3)
    assert json.loads(got["e1:both|d-and"][4]) == {"subtitle": "Wishlist"}
    # A variable no price drop has: the English text Herald always sent, marked as such.
    broken = _shop("{title} now {new_price}, {discount} off", discount={"type": "string"})
    got = _texts(templates=broken, device_locale=pl.Series(["de-DE", "en-GB"]))
    english = ("Price drop", EN, None, None, None)
    assert got == {"e1:both|d-ios": ("Billiger!", "Red shoes: 39,50", "de", 3, None),
                   "e1:both|d-and": english, "e1:both|inbox": english}  # fmt: skip


def test_targets_render_in_any_chunking():
    targets, _, _, _ = run()
    content = messages(EVENTS)
    whole = render(targets, content)
    pieces = pl.concat([render(c, content) for c in targets.iter_slices(2)])
    assert pieces.sort("delivery_id").equals(whole.sort("delivery_id"))
    assert whole["delivery_id"].n_unique() == whole.height
    assert (
        whole["delivery_id"].to_list()
        == (targets["notification_id"] + "|" + targets["device_id"]).to_list()
    )


def test_no_wishers_is_empty():
    targets, suppressed, counts, _ = run(audience=AUDIENCE.head(0))
    assert targets.height == 0 and suppressed.height == 0
    assert counts["targeted"] == counts["selected"] == 0
    assert render(targets, messages(EVENTS)).height == 0


def test_price_alert_opt_out_is_its_own_category():
    """Opting out of price alerts stops them; opting out of marketing does not."""
    audience = wishers(
        "P",
        ["alerts-off", "marketing-off"],
        cat_price_alert=[False, True],
        cat_marketing=[True, False],
    )
    targets, suppressed, counts, _ = run(drop("e", "P"), audience)
    assert set(targets["user_id"]) == {"marketing-off"}
    assert suppressed.select("user_id", "reason").rows() == [("alerts-off", "category_opt_out")]
    assert counts["suppressed:category_opt_out"] == 1 and counts["selected"] == 1


def test_quiet_hours_hold_until_the_window_ends():
    """Berlin is at 13:00 (UTC+1): a 12:30–14:00 window holds the drop until 14:00 Berlin
    (13:00 UTC), a 22:00–07:00 one lets it through; New York is at 08:00 (on summer time
    since March 8): a 23:00–08:30 window that wraps past midnight holds it until 08:30 New
    York (12:30 UTC)."""
    audience = wishers(
        "P",
        ["berlin-quiet", "berlin-night", "ny-morning", "no-window"],
        timezone=["Europe/Berlin", "Europe/Berlin", "America/New_York", "Asia/Tokyo"],
        quiet_start_min=pl.Series([12 * 60 + 30, 22 * 60, 23 * 60, None], dtype=pl.Int16),
        quiet_end_min=pl.Series([14 * 60, 7 * 60, 8 * 60 + 30, None], dtype=pl.Int16),
    )
    targets, suppressed, counts, _ = run(drop("e", "P"), audience)
    release = dict(targets.unique("user_id").select("user_id", "send_after").rows())
    assert release == {
        "berlin-quiet": NOW + 3600,
        "berlin-night": None,
        "ny-morning": NOW + 1800,
        "no-window": None,
    }
    assert suppressed.height == 0
    assert counts["eligible"] == counts["selected"] == 4 and counts["deferred"] == 2
    # every delivery of a held notification carries the release time
    held = targets.filter(pl.col("user_id") == "berlin-quiet")
    assert sorted(held["channel"]) == ["apns", "inbox"]
    assert set(held["send_after"]) == {NOW + 3600}
    # the local day the frequency count goes to is the user's own: Tokyo is at 21:00
    assert (
        dict(targets.unique("user_id").select("user_id", "local_day").rows())["no-window"]
        == "2026-03-10"
    )


def test_frequency_cap_counts_what_campaigns_sent_today():
    audience = wishers(
        "P",
        ["at-cap", "below-cap", "zero-cap", "fresh"],
        max_marketing_per_day=pl.Series([2, 2, 0, None], dtype=pl.Int32),
    )
    sent_today = pl.DataFrame({"user_id": ["at-cap", "below-cap"], "count": [2, 1]})
    targets, suppressed, counts, _ = run(drop("e", "P"), audience, sent_today=sent_today)
    assert set(targets["user_id"]) == {"below-cap", "fresh"}
    assert dict(suppressed.select("user_id", "reason").rows()) == {
        "at-cap": "frequency_cap",
        "zero-cap": "frequency_cap",
    }
    assert counts["suppressed:frequency_cap"] == 2 and counts["selected"] == 2


def test_frequency_cap_across_drops_in_one_batch_keeps_the_best_scored():
    """A user with room for one more gets the drop the model scores higher; a user with
    room for two gets both; the left-over one is suppressed as frequency_cap."""
    events = pl.concat([drop("e1", "P"), drop("e2", "Q")])
    audience = pl.concat(
        [
            wishers("P", ["one-left", "two-left"]),
            wishers("Q", ["one-left", "two-left"]),
        ]
    )
    sent_today = pl.DataFrame({"user_id": ["one-left", "two-left"], "count": [2, 1]})

    class ByProduct(ByUser):
        def score(self, users, variants, *, category, now):
            return np.array([[0.2 if p == "Q" else 0.1] for p in users["product_id"]])

    ranked = ByProduct({})
    targets, suppressed, counts, _ = run(events, audience, sent_today=sent_today, ranker=ranked)
    assert sorted(targets["notification_id"].unique()) == [
        "e1:two-left",
        "e2:one-left",
        "e2:two-left",
    ]
    assert suppressed.select("notification_id", "reason").rows() == [
        ("e1:one-left", "frequency_cap")
    ]
    assert counts["suppressed:frequency_cap"] == 1
    assert counts["eligible"] == counts["selected"] == 3


def test_redelivery_skips_the_wishers_already_reached_without_recording_them():
    audience = wishers("P", ["a", "b", "c"])
    already = pl.Series(["e:a", "e:c", "other:b"])
    targets, suppressed, counts, _ = run(drop("e", "P"), audience, already_sent=already)
    assert set(targets["user_id"]) == {"b"}
    assert suppressed.height == 0  # their own record says how they were reached
    assert counts["suppressed:already_sent"] == 2 and counts["selected"] == 1


def test_ranked_by_the_models_score_best_first():
    users = ["u1", "u2", "u3", "u4", "u5"]
    scores = {"u1": 0.1, "u2": 0.5, "u3": 0.3, "u4": 0.9, "u5": 0.2}
    targets, _, counts, _ = run(drop("e", "P"), wishers("P", users), ranker=ByUser(scores))
    order = targets.unique("notification_id", maintain_order=True)
    assert order["user_id"].to_list() == ["u4", "u2", "u3", "u5", "u1"]
    assert order["score"].to_list() == [0.9, 0.5, 0.3, 0.2, 0.1]
    # a notification's deliveries stay together
    assert targets["notification_id"].rle_id().max() == len(users) - 1
    assert counts["selected"] == 5


def test_the_shipped_model_ranks_by_the_products_category_affinity():
    """The real ranker, with the event's category as the affinity feature: the wisher who
    likes the category most goes first, and the scores are exactly the model's."""
    affinity = pl.Series([0.1, 0.9, 0.5], dtype=pl.Float32)
    audience = wishers("P", ["low", "high", "mid"], affinity_fashion=affinity)
    events = drop("e", "P", category="fashion")
    targets, _, _, _ = run(events, audience)
    order = targets.unique("notification_id", maintain_order=True)
    assert order["user_id"].to_list() == ["high", "mid", "low"]
    expected = RANKER.score(audience, VARIANTS, category="fashion", now=NOW)[:, 0]
    assert order["score"].to_list() == pytest.approx(list(expected[[1, 2, 0]]), abs=0)
    # without a category the affinity does not count: every score is the same
    flat, _, _, _ = run(drop("e", "P"), audience)
    assert flat["score"].n_unique() == 1


def test_sends_log_the_chosen_wishers_as_scored():
    """The feedback-log rows of a drop: one per selected notification, with the score it
    was ranked by and the affinity it was scored with, under the event's id."""
    affinity = pl.Series([0.1, 0.9, 0.5], dtype=pl.Float32)
    audience = wishers("P", ["low", "high", "mid"], affinity_fashion=affinity)
    _, _, _, chosen = run(drop("e", "P", category="fashion"), audience, audience_limit=2)
    rows = sends(chosen, model_version="m7", now=NOW)
    assert rows["user_id"].to_list() == ["high", "mid"]
    assert rows["notification_id"].to_list() == ["e:high", "e:mid"]
    assert rows["affinity_fashion"].to_list() == pytest.approx([0.9, 0.5])
    expected = RANKER.score(audience, VARIANTS, category="fashion", now=NOW)[:, 0]
    assert rows["score"].to_list() == pytest.approx(list(expected[[1, 2]]), abs=0)
    assert rows.select("campaign_id", "variant_id", "category", "style", "model_version").unique(
    ).rows() == [("e", "price_drop", "fashion", "discount", "m7")]  # fmt: skip
    assert set(rows["sent_at"]) == {NOW} and "timezone" in rows.columns


def test_audience_limit_keeps_each_drops_best_wishers():
    users = ["u1", "u2", "u3", "u4"]
    scores = {"u1": 0.4, "u2": 0.1, "u3": 0.3, "u4": 0.2}
    events = pl.concat([drop("e1", "P"), drop("e2", "Q")])
    audience = pl.concat([wishers("P", users), wishers("Q", users[:1])])
    targets, suppressed, counts, _ = run(events, audience, ranker=ByUser(scores), audience_limit=2)
    order = targets.unique("notification_id", maintain_order=True)["notification_id"]
    assert order.to_list() == ["e1:u1", "e2:u1", "e1:u3"]
    assert suppressed.height == 0  # left out by the limit: counted, not recorded
    assert counts["eligible"] == 5 and counts["selected"] == 3


def test_grouped_table_replaces_a_users_whole_list():
    table = GroupedTable(WISHLISTS, "user_id", compact_parts=3)
    table.replace(pl.DataFrame({"user_id": ["a", "a", "b"], "product_id": ["P", "Q", "P"]}))
    table.replace(pl.DataFrame({"user_id": ["a"], "product_id": ["R"]}))
    assert sorted(table.where_in("product_id", ["P", "R"]).rows()) == [("a", "R"), ("b", "P")]
    table.replace(pl.DataFrame(schema=table._polars_schema), ["b"])  # b empties the list
    assert table.where_in("product_id", ["P", "Q", "R"]).rows() == [("a", "R")]
    assert table.frame().rows() == [("a", "R")]  # compacted after 3 writes
