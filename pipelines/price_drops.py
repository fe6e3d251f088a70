"""price.dropped → one notification per (event, user whose wishlist holds the product), gone
through the same eligibility and ranking as a campaign: a push to each of the user's active
devices and an inbox item, as the user's channel and `price_alert` category preferences
allow, within their marketing frequency cap, held until their quiet hours end, best-ranked
wishers first.

The notification id is `<event_id>:<user_id>`, so `GET /v1/notifications/{id}` answers per
user, and a redelivered event maps onto the same ids (and is deduplicated like any other).

Pure functions over polars frames, in two steps so a large fan-out never holds all of its
content at once: `plan` turns a batch of events and the shards' wisher rows into *targets*
(one row per delivery: who, which device and channel, when — no content), the suppressed
notifications and the counts by stage; `render` then makes the DELIVERIES rows of one
bounded chunk of targets at a time, as the router sends it, each in its device's language:
the template `price_drop` (the shop's, else the shipped one), filled with the event's
fields, through `pipelines.localized` — one pass per chunk, never per notification.

What `plan` does, all in columns (no Python loop over users; only over the few distinct
categories of a batch's events, one ranker call each):

1. **Eligibility** — `pipelines.eligibility.split`, the campaigns' own rules, one row per
   (event, wisher): the `price_alert` category opt-out; `already_sent` (the router's record
   of whom this event already reached, on a redelivery); no allowed channel; no reachable
   channel (push only, no active device); the per-user marketing frequency cap
   (`max_marketing_per_day`, today's count in the user's own local day, shared with
   campaigns). Quiet hours (in the user's zone, DST-correct) do not suppress: the
   notification gets `send_after`, the end of the window, and the router holds it in the
   marketing retry set until then, as it does a campaign's.
2. **Ranking** — the ranker (the registry's current model) scores P(opened) per wisher, as
   for one campaign variant of style `STYLE` ("discount": what a price drop is), with the
   event's `category` (an optional event field, one of `cluster.vocabulary.CATEGORIES`, checked
   at the door) as the affinity feature; a missing category → affinity 0.
3. **Frequency cap inside the batch** — a user who wishes for several of the products that
   dropped in one batch counts each notification against the cap, best-scored first
   (`eligibility.over_cap_in_batch`): at count c with cap m they get at most m − c of them.
4. **Audience limit** — `audience_limit` (setting `price_drop_audience_limit`) keeps the
   best-scored wishers of each event; None: every eligible wisher. Those left out are
   counted (`eligible` − `selected`) but not recorded per user: bounding the work per drop
   is what the limit is for. Targets come out best score first, so with or without a limit
   the ranked order decides who is sent (and who hears of the drop) first.

`sends` turns the selected notifications into feedback-log rows (`pipelines.feedback_log`),
the features as scored, so the next model also learns from price drops (campaign id: the
event id; variant `price_drop`).

Suppressed notifications are recorded with their reason (`GET /v1/notifications/{id}`
answers `suppressed`), except `already_sent` ones, whose record is the one that reached the
user. Counts: `targeted` (notifications), `suppressed:<reason>` for every reason of
`eligibility.REASONS`, `eligible`, `selected`, `deferred` — as a campaign's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import polars as pl

from cluster.tables.deliveries import DELIVERIES, NO_EXTRAS
from cluster.vocabulary import CHANNEL_OF_PLATFORM
from models.ranker import Ranker
from pipelines import eligibility, feedback_log
from pipelines.localized import localized, with_locale_columns
from pipelines.template_model import Template
from pipelines.templates import defaults

TYPE = "price.dropped"
TEMPLATE_ID = "price_drop"  # what a drop says: the shop's template of this id, or Herald's
TITLE = "Price drop"
UNNAMED = "An item on your wishlist"
STYLE = "discount"  # the variant style a price drop is scored as
VARIANTS = pl.DataFrame({"variant_id": ["price_drop"], "style": [STYLE]})
CHANNELS = ("push", "inbox")
CATEGORY = "price_alert"  # the preference category (cat_price_alert) price drops obey

_CHANNELS = pl.DataFrame(
    {"platform": list(CHANNEL_OF_PLATFORM), "channel": list(CHANNEL_OF_PLATFORM.values())}
)
_DELIVERY_COLUMNS = [field.name for field in DELIVERIES]
# What the router needs of a delivery beyond DELIVERIES: its event and product, when to send
# it (null: now), the local day its user's frequency count goes to, the score it ranked by.
RECORD_COLUMNS = ["event_id", "product_id", "send_after", "local_day", "score"]
# `device_locale` of an inbox row: the profile's, else one of the user's devices'.
TARGET_COLUMNS = [
    "notification_id", "user_id", "device_id", "channel", "token", "device_locale",
    "profile_locale", "lane", "accepted_at", *RECORD_COLUMNS,
]  # fmt: skip
SUPPRESSED_COLUMNS = ["notification_id", "user_id", "event_id", "product_id", "accepted_at"]
EMPTY_DELIVERIES = pl.from_arrow(DELIVERIES.empty_table())
# Columns eligibility reads that a wisher row may lack (no profile, no preferences row).
_OPTIONAL = {
    "timezone": pl.String, "quiet_start_min": pl.Int16, "quiet_end_min": pl.Int16,
    "max_marketing_per_day": pl.Int32, "category": pl.String,
}  # fmt: skip
_DEVICE_COLUMNS = ["device_id", "platform", "token", "device_locale"]


class Plan(NamedTuple):
    """`targets`: `TARGET_COLUMNS`, one row per delivery, best-scored notification first,
    a notification's rows adjacent. `suppressed`: `SUPPRESSED_COLUMNS` + reason, one row
    per notification to record as suppressed. `counts`: by stage, see the module doc.
    `chosen`: one row per selected notification with its score and the ranker's inputs
    (for `sends`)."""

    targets: pl.DataFrame
    suppressed: pl.DataFrame
    counts: dict[str, int]
    chosen: pl.DataFrame


def notification_id(event_id: pl.Expr, user_id: pl.Expr) -> pl.Expr:
    return pl.concat_str([event_id, pl.lit(":"), user_id])


def candidates(events: pl.DataFrame, audience: pl.DataFrame) -> pl.DataFrame:
    """One row per (event, wisher) delivery candidate — the wisher rows of each event's
    product — with `notification_id` and the columns eligibility needs filled in."""
    keep = ["event_id", "product_id", "lane", "accepted_at"]
    keep += ["category"] if "category" in events.columns else []
    rows = events.select(keep).join(with_locale_columns(audience), on="product_id", how="inner")
    missing = {c: t for c, t in _OPTIONAL.items() if c not in rows.columns}
    missing |= {c: pl.String for c in _DEVICE_COLUMNS if c not in rows.columns}
    return rows.with_columns(
        *[pl.lit(None, dtype=t).alias(c) for c, t in missing.items()],
        notification_id=notification_id(pl.col("event_id"), pl.col("user_id")),
    )


def plan(
    events: pl.DataFrame,
    audience: pl.DataFrame,
    *,
    now: float,
    ranker: Ranker,
    sent_today: pl.DataFrame | None = None,
    already_sent: pl.Series | None = None,
    audience_limit: int | None = None,
) -> Plan:
    """Targets, suppressed notifications and counts for a batch of price.dropped events.

    `events`: event_id, product_id, lane, accepted_at, and optionally category (more
    columns are ignored). `audience`: the wisher rows — product_id, user_id, preferences
    (push, inbox, cat_price_alert, quiet_start_min, quiet_end_min, max_marketing_per_day;
    null → default), device_id/platform/token of each active device (null for none), and
    the ranker's user columns when known (timezone, country, attributes, last_active_at,
    platforms, affinity_<category>...). `sent_today` (user_id, count): marketing already
    sent in each user's local day. `already_sent`: notification ids this batch's events
    already delivered or hold (a redelivery). `now`: epoch s of the plan."""
    rows = candidates(events, audience)
    users = _notifications(rows)
    repeat = (
        users["notification_id"].is_in(already_sent.implode()) if already_sent is not None else None
    )
    kept, suppressed, reasons = eligibility.split(
        users,
        now=now,
        channels=CHANNELS,
        respect_quiet_hours=True,
        sent_today=sent_today,
        category=CATEGORY,
        repeat=repeat,
    )
    kept = kept.with_columns(score=_scores(kept, ranker, now))
    over = eligibility.over_cap_in_batch(kept, sent_today, order="score")
    capped = kept.filter(over).with_columns(reason=pl.lit("frequency_cap"))
    kept = kept.filter(~over)
    reasons["frequency_cap"] += capped.height
    eligible = kept.height
    kept = _best_first(kept, events, audience_limit, now)
    counts = {
        "targeted": users.height,
        **{f"suppressed:{reason}": n for reason, n in reasons.items()},
        "eligible": eligible,
        "selected": kept.height,
        "deferred": int(kept["send_after"].is_not_null().sum()),
    }
    return Plan(_targets(kept, rows), _recorded(suppressed, capped), counts, _chosen(kept))


def _notifications(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per notification (event, wisher) of the candidate rows (one per device),
    with `has_push_device`: eligibility decides per notification, devices come back in
    `_targets` — and `_inbox_locale`, what the inbox item reads in: it has no device of its
    own, so the profile's locale, else the user's first device's (by id) that has one."""
    first_device = pl.col("device_locale").sort_by("device_id").drop_nulls().first()
    return (
        rows.with_columns(
            has_push_device=pl.col("device_id").is_not_null().any().over("notification_id"),
            _inbox_locale=pl.coalesce("profile_locale", first_device.over("notification_id")),
        )
        .unique("notification_id", keep="first", maintain_order=True)
        .drop(_DEVICE_COLUMNS)
    )


def _best_first(
    kept: pl.DataFrame, events: pl.DataFrame, audience_limit: int | None, now: float
) -> pl.DataFrame:
    """The eligible notifications within each event's `audience_limit` (its best-scored;
    ties: row order), sorted best score first — ties by event order in the batch, then user
    id, so a plan is deterministic — with each user's `local_day` for the frequency count
    and `_order`, the position `_targets` keeps a notification's deliveries at."""
    if audience_limit is not None:
        best_first = pl.col("score").rank("ordinal", descending=True).over("event_id")
        kept = kept.filter(best_first <= audience_limit)
    order = events.select("event_id").unique(maintain_order=True).with_row_index("_event")
    kept = (
        kept.join(order, on="event_id", how="left")
        .sort(["score", "_event", "user_id"], descending=[True, False, False])
        .drop("_event")
    )
    return kept.with_columns(local_day=eligibility.local_day(kept, now)).with_row_index("_order")


def _targets(kept: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """`TARGET_COLUMNS`: a push per active device (its provider's channel) of the
    notifications that may push, an inbox row for those that may use the inbox; in the
    notifications' ranked order, a notification's rows adjacent."""
    devices = rows.filter(pl.col("device_id").is_not_null()).select(
        "notification_id", *_DEVICE_COLUMNS
    )
    base = [c for c in TARGET_COLUMNS if c not in ("device_id", "channel", *_DEVICE_COLUMNS)]
    pushes = (
        kept.filter(pl.col("send_push"))
        .select("_order", *base)
        .join(devices, on="notification_id", how="inner")
        .join(_CHANNELS, on="platform", how="inner")
    )
    inbox = (
        kept.filter(pl.col("send_inbox"))
        .select("_order", *base, device_locale="_inbox_locale")
        .with_columns(device_id=pl.lit("inbox"), channel=pl.lit("inbox"), token=pl.lit(""))
    )
    return (
        pl.concat(
            [pushes.select("_order", *TARGET_COLUMNS), inbox.select("_order", *TARGET_COLUMNS)]
        )
        .sort("_order", "device_id")
        .drop("_order")
    )


def _recorded(suppressed: pl.DataFrame, capped: pl.DataFrame) -> pl.DataFrame:
    """The suppressed notifications to record with their reason: those eligibility refused
    and those over the cap within the batch, but not `already_sent` ones, whose record is
    the one that reached the user."""
    return pl.concat(
        [
            suppressed.filter(pl.col("reason") != "already_sent").select(
                *SUPPRESSED_COLUMNS, "reason"
            ),
            capped.select(*SUPPRESSED_COLUMNS, "reason"),
        ]
    )


def _chosen(kept: pl.DataFrame) -> pl.DataFrame:
    """The selected notifications with their score and the feature inputs as scored, for
    the feedback log (`sends`)."""
    inputs = [c for c in kept.columns if c in feedback_log.FEATURE_INPUTS]
    inputs += [c for c in kept.columns if c.startswith("affinity_")]
    return kept.select("notification_id", "user_id", "event_id", "category", "score", *inputs)


def sends(chosen: pl.DataFrame, *, model_version: str, now: float) -> pl.DataFrame:
    """Feedback-log rows of a plan's `chosen` notifications, as a campaign's are logged."""
    return chosen.select(
        pl.exclude("event_id"),
        campaign_id=pl.col("event_id"),
        variant_id=pl.lit("price_drop"),
        style=pl.lit(STYLE),
        **feedback_log.deterministic(),  # one variant, a ranked audience: propensity 1.0
        model_version=pl.lit(model_version),
        sent_at=pl.lit(now, dtype=pl.Float64),
    )


def _scores(kept: pl.DataFrame, ranker: Ranker, now: float) -> pl.Series:
    """P(opened) per row, one ranker call per distinct category among the rows' events."""
    out = np.zeros(kept.height, dtype=np.float64)
    if kept.height:
        indexed = kept.with_row_index("_row")
        for (category,), part in indexed.partition_by("category", as_dict=True).items():
            scores = ranker.score(part, VARIANTS, category=category, now=now)
            out[part["_row"].to_numpy()] = scores[:, 0]
    return pl.Series("score", out, dtype=pl.Float64)


def _money(column: str) -> pl.Expr:
    cents = (pl.col(column) * 100).round(0).cast(pl.Int64)
    return pl.format("{}.{}", cents // 100, (cents % 100).cast(pl.String).str.zfill(2))


def messages(events: pl.DataFrame) -> pl.DataFrame:
    """Per event, what its recipients' content is made of: `variables`, the template's
    (today's fallbacks for a missing product name or currency, so it always fills); `_data`,
    the apps' JSON after the notification id (once per event, not per row); `title`/`body`,
    the English text from before templates — what the shipped `en` renders byte for byte,
    and what a row gets when the shop's `price_drop` cannot be filled (`render`)."""
    title = pl.col("title").fill_null(UNNAMED)
    currency = pl.col("currency").fill_null("")
    suffix = pl.when(currency == "").then(pl.lit("")).otherwise(pl.lit(" ") + currency)
    return events.select(
        "event_id",
        title=pl.lit(TITLE),
        body=pl.format(
            "{} is now {}{} (was {}{}).",
            title,
            _money("new_price"),
            suffix,
            _money("old_price"),
            suffix,
        ),
        variables=pl.struct(title, "new_price", "old_price", currency),
        _data=pl.struct(
            old_price=_money("old_price"),
            new_price=_money("new_price"),
            currency=currency,
        )
        .struct.json_encode()
        .str.slice(1),
    )


def render(
    targets: pl.DataFrame,
    content: pl.DataFrame,
    templates: Mapping[str, Template] | None = None,
    default_locale: str = "en",
) -> pl.DataFrame:
    """DELIVERIES rows for a chunk of targets, plus `RECORD_COLUMNS`, in the targets' order;
    `content` is `messages(events)`, `templates` the router's snapshot (None: the shipped
    ones). Each row is `price_drop` in its locale (device, profile, `default_locale`), with
    its `locale`, `template_version` and `rich` (a shop's extra push fields). A row the
    shop's template cannot fill (it declares a variable a price drop has no value for)
    keeps the English text, with no locale or version: a shop's mistake must not silence
    a drop. `data`: ids are pattern-checked at the door, so they need no escaping."""
    rows = (
        with_locale_columns(targets)
        .join(content, on="event_id", how="left", maintain_order="left")
        .with_row_index("_row")
    )
    done, failed = localized(
        rows.with_columns(template_id=pl.lit(TEMPLATE_ID)),
        defaults() if templates is None else templates,
        default_locale,
    )
    english = rows.join(failed.select("_row"), on="_row", how="semi").with_columns(*NO_EXTRAS)
    return (
        pl.concat(
            [done.with_columns(_gaps_closed("title"), _gaps_closed("body")), english],
            how="diagonal_relaxed",
        )
        .sort("_row")
        .with_columns(
            delivery_id=pl.col("notification_id") + "|" + pl.col("device_id"),
            data=pl.concat_str(
                pl.lit('{"notification_id":"'),
                "notification_id",
                pl.lit(f'","type":"{TYPE}","product_id":"'),
                "product_id",
                pl.lit('",'),
                "_data",
            ),
        )
        .select(*_DELIVERY_COLUMNS, *RECORD_COLUMNS)
    )


def _gaps_closed(field: str) -> pl.Expr:
    """`field` of a drop without a currency as it always read: a blank `{currency}` leaves
    gaps (`7.25  (was 10.00 ).`), closed here — runs of spaces to one, none before `)`, `.`
    or `,`, none at the ends. Rows with a currency are left as rendered."""
    closed = pl.col(field).str.replace_all(r" {2,}", " ").str.replace_all(r" ([).,])", "$1")
    blank = pl.col("variables").struct.field("currency") == ""
    return pl.when(blank).then(closed.str.strip_chars(" ")).otherwise(pl.col(field)).alias(field)


def meta(rows: pl.DataFrame, model_version: str | None = None) -> pl.DataFrame:
    """The delivery state's meta of each notification in `rows` (targets or suppressed):
    targets also carry the score they were ranked by, the model version, and `send_after`
    (when quiet hours held them)."""
    extra = {}
    if "score" in rows.columns:
        extra = {
            "score": pl.col("score"),
            "model_version": pl.lit(model_version, dtype=pl.String),
            "send_after": pl.col("send_after"),
        }
    return rows.unique(subset="notification_id", keep="first", maintain_order=True).select(
        "notification_id",
        type=pl.lit(TYPE),
        user_id="user_id",
        accepted_at="accepted_at",
        event_id="event_id",
        product_id="product_id",
        **extra,
    )
