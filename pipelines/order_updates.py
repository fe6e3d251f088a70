"""order.updated → one notification for the user: a push to each active device and an
inbox item, as the user's channel and category preferences allow, each in its device's
language (`pipelines.localized`: the template `order.<status>`, the shop's or the shipped
one, filled with the event's fields).

Latest status wins: an update older than its order's newest (`cluster.state.orders`
decides, from `ordering`) is not planned but recorded `superseded`, and an order's pushes
share one collapse id and thread (`order_key`, unless the event gives `collapse_key`), so
the phone replaces the order's previous notification instead of stacking a second one.

Pure functions over polars frames, so the rule is tested without a cluster and runs on a
whole batch of events at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import polars as pl

from cluster.tables.deliveries import DELIVERIES, MAX_COLLAPSE_KEY
from cluster.vocabulary import CHANNEL_OF_PLATFORM
from pipelines.device_hygiene import STALE_COLUMN
from pipelines.localized import OPTIONS, RICH_CONTENT, localized, rich_json, with_locale_columns
from pipelines.template_model import Template

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

# status → (title, body) in English, the shipped templates' `en` (`default_templates`).
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

_CHANNELS = pl.DataFrame(
    {"platform": list(CHANNEL_OF_PLATFORM), "channel": list(CHANNEL_OF_PLATFORM.values())}
)
_DELIVERY_COLUMNS = [field.name for field in DELIVERIES]
# An event's optional fields a router's frame may lack (an order update without them).
_OPTIONAL = {
    "template_id": pl.String,
    "priority": pl.String,
    "ttl_s": pl.Int64,
    "collapse_key": pl.String,
}


def plan(
    events: pl.DataFrame,
    audience: pl.DataFrame,
    fallback: bool = False,
    *,
    templates: Mapping[str, Template],
    default_locale: str = "en",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deliveries for a batch of order.updated events.

    `events`: notification_id, user_id, order_id, status, lane, accepted_at; optionally
    `body` (the logged event: its fields fill the template's variables; absent: `order_id`
    only), `template_id` (instead of `order.<status>`), priority, ttl_s, collapse_key.
    `audience`: the shards' lookup rows (user × active device, preferences filled, and
    `device_locale` / `profile_locale` when known). `templates`: template_id → template
    (the router's cache: the shop's over the shipped ones), `default_locale` the
    deployment's. `fallback`: a webhook channel is configured; users no push can reach (no
    active device, or push turned off) who allow email get a webhook delivery.
    Returns (deliveries in the DELIVERIES layout, suppressed notifications with a reason).
    """
    audience = with_locale_columns(audience)
    stale = [STALE_COLUMN] if STALE_COLUMN in audience.columns else []
    prefs = audience.select(
        "user_id", "push", "inbox", "email", "cat_order", "profile_locale", *stale
    ).unique(subset="user_id")
    with_prefs = (
        _messages(events)
        .join(prefs, on="user_id", how="left")
        .with_columns(pl.col("push", "inbox", "email", "cat_order").fill_null(True))
    )
    rows = channel_rows(with_prefs.filter(pl.col("cat_order")), devices_of(audience), fallback)
    rendered, unrendered = localized(rows, templates, default_locale)
    deliveries = as_deliveries(_threaded(rendered))
    return deliveries, _suppressed(with_prefs, deliveries, unrendered)


def _messages(events: pl.DataFrame) -> pl.DataFrame:
    """Each event with what renders it — its template (`order.<status>` unless it names
    one) and variables (the event's own fields) — and the JSON `data` the apps route on."""
    events = events.with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in _OPTIONAL.items()
        if name not in events.columns
    )
    variables = (
        pl.col("body")
        if "body" in events.columns
        else pl.struct(order_id=pl.col("order_id")).struct.json_encode()
    )
    return events.with_columns(
        template_id=pl.coalesce(pl.col("template_id"), pl.lit("order.") + pl.col("status")),
        collapse_key=pl.coalesce(pl.col("collapse_key"), order_key()),
        variables=variables,
        data=pl.struct(
            notification_id=pl.col("notification_id"),
            type=pl.lit("order.updated"),
            order_id=pl.col("order_id"),
            status=pl.col("status"),
        ).struct.json_encode(),
    )


ORDER_KEY_PREFIX = "order:"


def order_key() -> pl.Expr:
    """`order:<order_id>`, the collapse id and thread all of an order's pushes share. An
    id too long for APNs' 64-byte collapse id is replaced by a digest of it (stable
    across processes and versions, unlike polars' hash)."""
    key = pl.lit(ORDER_KEY_PREFIX) + pl.col("order_id")
    digest = pl.col("order_id").map_elements(_digest, return_dtype=pl.String)
    return (
        pl.when(key.str.len_bytes() <= MAX_COLLAPSE_KEY)
        .then(key)
        .otherwise(pl.lit(ORDER_KEY_PREFIX) + digest)
    )


def _digest(order_id: str) -> str:
    return hashlib.sha256(order_id.encode()).hexdigest()[:32]


def _threaded(rendered: pl.DataFrame) -> pl.DataFrame:
    """Rendered rows whose template names no `thread_id` threaded by their collapse key
    (APNs `thread-id`, Android `tag`: the tag is what replaces a shown notification), and
    `rich` built again to carry it."""
    if "thread_id" not in rendered.columns:
        return rendered
    names = [*RICH_CONTENT, *(o for o in OPTIONS if o in rendered.columns)]
    return rendered.with_columns(
        thread_id=pl.coalesce(pl.col("thread_id"), pl.col("collapse_key"))
    ).with_columns(rich=rich_json(names))


def ordering(events: pl.DataFrame) -> pl.DataFrame:
    """What `cluster.state.orders` compares, per event in the batch's order: event_id,
    order_id, `sequence` and `occurred_at` (the event's columns, else read from its log
    `body`, else null), accepted_at."""
    fields = {"sequence": pl.Int64, "occurred_at": pl.Float64}
    return events.select(
        pl.col("notification_id").alias("event_id"),
        "order_id",
        *(_field(events, name, dtype) for name, dtype in fields.items()),
        pl.col("accepted_at").cast(pl.Float64),
    )


def _field(events: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    if name in events.columns:
        column = pl.col(name)
    elif "body" in events.columns:
        column = pl.col("body").str.json_path_match(f"$.{name}")
    else:
        column = pl.lit(None)
    return column.cast(dtype, strict=False).alias(name)


def superseded(events: pl.DataFrame) -> pl.DataFrame:
    """Suppressed rows for updates a newer one of their order replaced."""
    return events.select("notification_id", "user_id", reason=pl.lit("superseded"))


def devices_of(audience: pl.DataFrame) -> pl.DataFrame:
    """The audience's active devices: who, which, how to reach it, and its locale."""
    return audience.filter(pl.col("device_id").is_not_null()).select(
        "user_id", "device_id", "platform", "token", "device_locale"
    )


def channel_rows(wanted: pl.DataFrame, devices: pl.DataFrame, fallback: bool) -> pl.DataFrame:
    """One row per delivery of the messages users want (content not rendered yet): a push
    per active device where `push` is allowed, an inbox item where `inbox` is, and (with
    `fallback`) a webhook for those no push reaches who allow `email`. The inbox has no
    device of its own: it reads in the profile's locale, else in one of the user's
    devices' (the app the user reads it in), else the default."""
    pushes = (
        wanted.filter(pl.col("push"))
        .join(devices, on="user_id", how="inner")
        .join(_CHANNELS, on="platform", how="inner")
        .drop("platform")
    )
    inbox = (
        wanted.filter(pl.col("inbox"))
        .join(_device_language(devices), on="user_id", how="left")
        .with_columns(
            device_id=pl.lit("inbox"),
            channel=pl.lit("inbox"),
            token=pl.lit(""),
            device_locale=pl.coalesce("profile_locale", "_device_locale"),
        )
        .drop("_device_locale")
    )
    parts = [pushes, inbox]
    if fallback:
        unreachable = wanted.filter(pl.col("email")).join(pushes, on="notification_id", how="anti")
        parts.append(as_fallback(unreachable))
    return pl.concat(parts, how="diagonal_relaxed")


def _device_language(devices: pl.DataFrame) -> pl.DataFrame:
    """Per user, the locale of their first device (by id) that has one."""
    return devices.group_by("user_id").agg(
        _device_locale=pl.col("device_locale").sort_by("device_id").drop_nulls().first()
    )


def as_deliveries(rendered: pl.DataFrame) -> pl.DataFrame:
    """Rendered rows in the DELIVERIES layout, each with its `delivery_id`."""
    return rendered.with_columns(
        delivery_id=pl.col("notification_id") + "|" + pl.col("device_id")
    ).select(_DELIVERY_COLUMNS)


def _suppressed(
    with_prefs: pl.DataFrame, deliveries: pl.DataFrame, unrendered: pl.DataFrame
) -> pl.DataFrame:
    """The order updates no delivery serves, with their reason (`suppressed`)."""
    return suppressed(with_prefs, deliveries, unrendered, pl.col("cat_order"), "category_opt_out")


def suppressed(
    wanted: pl.DataFrame,
    deliveries: pl.DataFrame,
    unrendered: pl.DataFrame,
    category_on: pl.Expr,
    category_reason: str,
) -> pl.DataFrame:
    """The notifications of `wanted` no delivery serves, each with the first reason that
    applies: its category turned off (`category_reason`), every channel turned off (or
    not asked for), its template could not be filled (changed or deleted since the event
    was accepted), every device of the user stale (`stale_device`, when `wanted` has the
    shards' `stale_devices` count), else no active device."""
    failed = pl.col("notification_id").is_in(unrendered["notification_id"].implode())
    stale = (
        pl.col(STALE_COLUMN).fill_null(0) > 0 if STALE_COLUMN in wanted.columns else pl.lit(False)
    )
    reason = (
        pl.when(~category_on)
        .then(pl.lit(category_reason))
        .when(~pl.col("push") & ~pl.col("inbox"))
        .then(pl.lit("channel_opt_out"))
        .when(failed)
        .then(pl.lit("template_unavailable"))
        .when(stale)
        .then(pl.lit("stale_device"))
        .otherwise(pl.lit("no_active_device"))
    )
    served = deliveries.select("notification_id").unique()
    return wanted.join(served, on="notification_id", how="anti").select(
        "notification_id", "user_id", reason.alias("reason")
    )


def as_fallback(messages: pl.DataFrame) -> pl.DataFrame:
    """One webhook delivery per notification in `messages` (any frame with the content)."""
    return messages.unique(subset="notification_id").with_columns(
        device_id=pl.lit("webhook"), channel=pl.lit("webhook"), token=pl.lit("")
    )
