"""price.dropped → one notification per (event, user whose wishlist holds the product): a
push to each of the user's active devices and an inbox item, as the user's channel and
`price_alert` category preferences allow — the same rule order updates follow with `order`.

The notification id is `<event_id>:<user_id>`, so `GET /v1/notifications/{id}` answers per
user, and a redelivered event maps onto the same ids (and is deduplicated like any other).

Pure functions over polars frames, in two steps so a large fan-out never holds all of its
content at once: `plan` turns a batch of events and the shards' wisher rows into *targets*
(one row per delivery: who, which device and channel — no content) plus the suppressed
notifications; `render` then makes the DELIVERIES rows of one bounded chunk of targets at a
time, as the router sends it.

Not here yet (later issues): ranking, frequency caps (`max_marketing_per_day`), quiet hours
and per-user dedup across events — every wisher who allows price alerts is notified.
"""

from __future__ import annotations

import polars as pl

from cluster.tables.deliveries import DELIVERIES
from cluster.tables.devices import CHANNEL_OF_PLATFORM

TYPE = "price.dropped"
TITLE = "Price drop"
UNNAMED = "An item on your wishlist"

_CHANNELS = pl.DataFrame(
    {"platform": list(CHANNEL_OF_PLATFORM), "channel": list(CHANNEL_OF_PLATFORM.values())}
)
_DELIVERY_COLUMNS = [field.name for field in DELIVERIES]
TARGET_COLUMNS = [
    "notification_id",
    "event_id",
    "product_id",
    "user_id",
    "device_id",
    "channel",
    "token",
    "lane",
    "accepted_at",
]
EMPTY_DELIVERIES = pl.from_arrow(DELIVERIES.empty_table())


def notification_id(event_id: pl.Expr, user_id: pl.Expr) -> pl.Expr:
    return pl.concat_str([event_id, pl.lit(":"), user_id])


def plan(events: pl.DataFrame, audience: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Targets and suppressed notifications for a batch of price.dropped events.

    `events`: event_id, product_id, lane, accepted_at (more columns are ignored).
    `audience`: the shards' `wishers` rows — product_id, user_id, preferences (defaults
    filled), and device_id/platform/token of each active device (null for none).
    Returns (targets: `TARGET_COLUMNS`, one row per delivery, sorted by notification;
    suppressed: notification_id, user_id, event_id, product_id, accepted_at, reason).
    """
    prefs = ["push", "inbox", "cat_price_alert"]
    rows = (
        events.select("event_id", "product_id", "lane", "accepted_at")
        .join(audience, on="product_id", how="inner")
        .with_columns(
            pl.col(prefs).fill_null(True),
            notification_id=notification_id(pl.col("event_id"), pl.col("user_id")),
        )
    )
    wanted = rows.filter(pl.col("cat_price_alert"))
    pushes = (
        wanted.filter(pl.col("push") & pl.col("device_id").is_not_null())
        .join(_CHANNELS, on="platform", how="inner")
        .select(TARGET_COLUMNS)
    )
    inbox = (
        wanted.filter(pl.col("inbox"))
        .unique(subset="notification_id", keep="first")
        .with_columns(device_id=pl.lit("inbox"), channel=pl.lit("inbox"), token=pl.lit(""))
        .select(TARGET_COLUMNS)
    )
    targets = pl.concat([pushes, inbox]).sort("notification_id", "device_id")
    notifications = rows.unique(subset="notification_id", keep="first")
    reason = (
        pl.when(~pl.col("cat_price_alert"))
        .then(pl.lit("category_opt_out"))
        .when(~pl.col("push") & ~pl.col("inbox"))
        .then(pl.lit("channel_opt_out"))
        .otherwise(pl.lit("no_active_device"))
    )
    suppressed = notifications.join(targets, on="notification_id", how="anti").select(
        "notification_id",
        "user_id",
        "event_id",
        "product_id",
        "accepted_at",
        reason.alias("reason"),
    )
    return targets, suppressed


def _money(column: str) -> pl.Expr:
    cents = (pl.col(column) * 100).round(0).cast(pl.Int64)
    return pl.format("{}.{}", cents // 100, (cents % 100).cast(pl.String).str.zfill(2))


def messages(events: pl.DataFrame) -> pl.DataFrame:
    """Per event: the content every recipient of it gets (event_id → title, body, prices)."""
    currency = pl.col("currency").fill_null("")
    suffix = pl.when(currency == "").then(pl.lit("")).otherwise(pl.lit(" ") + currency)
    return events.select(
        "event_id",
        title=pl.lit(TITLE),
        body=pl.format(
            "{} is now {}{} (was {}{}).",
            pl.col("title").fill_null(UNNAMED),
            _money("new_price"),
            suffix,
            _money("old_price"),
            suffix,
        ),
        old_price=_money("old_price"),
        new_price=_money("new_price"),
        currency=currency,
    )


def render(targets: pl.DataFrame, content: pl.DataFrame) -> pl.DataFrame:
    """DELIVERIES rows for a chunk of targets; `content` is `messages(events)`."""
    return (
        targets.join(content, on="event_id", how="left")
        .with_columns(
            delivery_id=pl.col("notification_id") + "|" + pl.col("device_id"),
            data=pl.struct(
                notification_id=pl.col("notification_id"),
                type=pl.lit(TYPE),
                product_id=pl.col("product_id"),
                old_price=pl.col("old_price"),
                new_price=pl.col("new_price"),
                currency=pl.col("currency"),
            ).struct.json_encode(),
        )
        .select(_DELIVERY_COLUMNS)
    )


def meta(rows: pl.DataFrame) -> pl.DataFrame:
    """The delivery state's meta of each notification in `rows` (targets or suppressed)."""
    return rows.unique(subset="notification_id", keep="first").select(
        "notification_id",
        type=pl.lit(TYPE),
        user_id="user_id",
        accepted_at="accepted_at",
        event_id="event_id",
        product_id="product_id",
    )
