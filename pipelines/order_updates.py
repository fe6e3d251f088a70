"""order.updated → one notification for the user: a push to each active device and an
inbox item, as the user's channel and category preferences allow.

Pure functions over polars frames, so the rule is tested without a cluster and runs on a
whole batch of events at once.
"""

from __future__ import annotations

import polars as pl

from cluster.tables.deliveries import DELIVERIES, NO_EXTRAS
from cluster.vocabulary import CHANNEL_OF_PLATFORM

ORDER_STATUSES = (
    "placed",
    "confirmed",
    "paid",
    "packed",
    "shipped",
    "out_for_delivery",
    "delivered",
    "delayed",
    "cancelled",
    "returned",
    "refunded",
)

# status → (title, body); "{order_id}" is replaced per event.
TEMPLATES: dict[str, tuple[str, str]] = {
    "placed": ("Order received", "We got your order {order_id}."),
    "confirmed": ("Order confirmed", "Your order {order_id} is confirmed."),
    "paid": ("Payment received", "Payment for order {order_id} went through."),
    "packed": ("Order packed", "Your order {order_id} is packed and ready to ship."),
    "shipped": ("Order shipped", "Your order {order_id} is on its way."),
    "out_for_delivery": ("Out for delivery", "Your order {order_id} arrives today."),
    "delivered": ("Order delivered", "Your order {order_id} was delivered."),
    "delayed": ("Order delayed", "Your order {order_id} is delayed. We're on it."),
    "cancelled": ("Order cancelled", "Your order {order_id} was cancelled."),
    "returned": ("Return received", "We received the return of order {order_id}."),
    "refunded": ("Refund issued", "The refund for order {order_id} is on its way."),
}

_TEMPLATES = pl.DataFrame(
    {
        "status": list(TEMPLATES),
        "title": [t for t, _ in TEMPLATES.values()],
        "body_template": [b for _, b in TEMPLATES.values()],
    }
)
_CHANNELS = pl.DataFrame(
    {"platform": list(CHANNEL_OF_PLATFORM), "channel": list(CHANNEL_OF_PLATFORM.values())}
)
_DELIVERY_COLUMNS = [field.name for field in DELIVERIES]


def plan(
    events: pl.DataFrame, audience: pl.DataFrame, fallback: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deliveries for a batch of order.updated events.

    `events`: notification_id, user_id, order_id, status, lane, accepted_at.
    `audience`: the shards' lookup rows (user × active device, preferences filled).
    `fallback`: a webhook channel is configured; users no push can reach (no active device,
    or push turned off) who allow email get a webhook delivery.
    Returns (deliveries in the DELIVERIES layout, suppressed notifications with a reason).
    """
    prefs = audience.select("user_id", "push", "inbox", "email", "cat_order").unique(
        subset="user_id"
    )
    devices = audience.filter(pl.col("device_id").is_not_null()).select(
        "user_id", "device_id", "platform", "token"
    )
    with_prefs = (
        _messages(events)
        .join(prefs, on="user_id", how="left")
        .with_columns(pl.col("push", "inbox", "email", "cat_order").fill_null(True))
    )
    deliveries = _deliveries(with_prefs.filter(pl.col("cat_order")), devices, fallback)
    return deliveries, _suppressed(with_prefs, deliveries)


def _messages(events: pl.DataFrame) -> pl.DataFrame:
    """Each event with its notification's content: the status's title, the body with the
    order id filled in, and the JSON `data` the apps route on."""
    return events.join(_TEMPLATES, on="status", how="left").with_columns(
        body=pl.col("body_template").str.replace_all(
            "{order_id}", pl.col("order_id"), literal=True
        ),
        data=pl.struct(
            notification_id=pl.col("notification_id"),
            type=pl.lit("order.updated"),
            order_id=pl.col("order_id"),
            status=pl.col("status"),
        ).struct.json_encode(),
    )


def _deliveries(wanted: pl.DataFrame, devices: pl.DataFrame, fallback: bool) -> pl.DataFrame:
    """The DELIVERIES rows of the messages users want: a push per active device where push
    is allowed, an inbox item where the inbox is, and (with `fallback`) a webhook for those
    no push reaches who allow email."""
    pushes = (
        wanted.filter(pl.col("push"))
        .join(devices, on="user_id", how="inner")
        .join(_CHANNELS, on="platform", how="inner")
    )
    inbox = wanted.filter(pl.col("inbox")).with_columns(
        device_id=pl.lit("inbox"), channel=pl.lit("inbox"), token=pl.lit("")
    )
    parts = [pushes, inbox]
    if fallback:
        unreachable = wanted.filter(pl.col("email")).join(pushes, on="notification_id", how="anti")
        parts.append(as_fallback(unreachable))
    return pl.concat(
        [
            part.with_columns(
                *NO_EXTRAS, delivery_id=pl.col("notification_id") + "|" + pl.col("device_id")
            ).select(_DELIVERY_COLUMNS)
            for part in parts
        ]
    )


def _suppressed(with_prefs: pl.DataFrame, deliveries: pl.DataFrame) -> pl.DataFrame:
    """The notifications no delivery serves, each with the first reason that applies: the
    order category turned off, every channel turned off, else no active device."""
    reason = (
        pl.when(~pl.col("cat_order"))
        .then(pl.lit("category_opt_out"))
        .when(~pl.col("push") & ~pl.col("inbox"))
        .then(pl.lit("channel_opt_out"))
        .otherwise(pl.lit("no_active_device"))
    )
    served = deliveries.select("notification_id").unique()
    return with_prefs.join(served, on="notification_id", how="anti").select(
        "notification_id", "user_id", reason.alias("reason")
    )


def as_fallback(messages: pl.DataFrame) -> pl.DataFrame:
    """One webhook delivery per notification in `messages` (any frame with the content)."""
    return messages.unique(subset="notification_id").with_columns(
        device_id=pl.lit("webhook"), channel=pl.lit("webhook"), token=pl.lit("")
    )
