"""notification.requested → one notification per (event, user), id `<event_id>:<user_id>`:
a push to each active device and an inbox item — as far as the event's `channels` ask and
the user's preferences allow — in each device's language.

The content is the event's template (the shop's or a shipped one) or its inline `content`,
filled with the event's `variables` by the same placeholder rules either way: inline
content becomes a one-off template (`inline_templates`, one per event, never per user)
keyed so no stored template can clash, and rendered apart from the stored ones (whose
prepared set the renderer keeps cached across batches): two `pipelines.localized` passes a
batch, whatever its size. Inline content is in one language, chosen by the shop, so
its deliveries record no locale and no template version.

Preferences: the channel switches, and the event's `category` — one of the fixed ones
(`cat_order`, `cat_price_alert`, `cat_marketing`) or the shop's own, which the user turns
off into `categories_off` — suppresses with `category_opt_out` when turned off (the
reason order updates and campaigns use too).

Pure functions over polars frames, so the rule is tested without a cluster and a batch of
events (up to 1,000 users each) is planned at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import polars as pl

from cluster.tables.deliveries import OPTIONAL_COLUMNS, with_present
from pipelines import order_updates
from pipelines.localized import localized, with_locale_columns
from pipelines.order_updates import as_deliveries, channel_rows, devices_of
from pipelines.template_model import PUSH_FIELDS, Content, Template, Variable

TYPE = "notification.requested"
CHANNELS = ("push", "inbox")
FIXED_CATEGORIES = ("order", "price_alert", "marketing")  # the preferences' `cat_<name>`
INLINE = "\x00inline:"  # prefix of an inline template's key: no template id starts so
INLINE_MAX_LENGTH = 2000  # what the door allows a string variable of inline content
USERS_MAX = 1000  # users one event may name (`api.events.USERS_MAX`)
# Inline content renders from no stored template, in no locale the user's devices chose.
NO_RENDERED_WITH = [
    pl.lit(None, dtype=OPTIONAL_COLUMNS[c]).alias(c) for c in ("locale", "template_version")
]
_PREFERENCES = {
    "push": pl.Boolean,
    "inbox": pl.Boolean,
    "email": pl.Boolean,
    **{f"cat_{c}": pl.Boolean for c in FIXED_CATEGORIES},
    "categories_off": pl.List(pl.String),
}


def notifications(events: pl.DataFrame) -> pl.DataFrame:
    """One row per (event, user) of a batch of events: `user_id` and `notification_id`
    (`<event_id>:<user_id>`) in place of the event's `user_ids`."""
    return (
        events.drop("notification_id", "user_id", strict=False)
        .explode("user_ids")
        .rename({"user_ids": "user_id"})
        .with_columns(notification_id=pl.concat_str("event_id", pl.lit(":"), "user_id"))
    )


def meta(wanted: pl.DataFrame) -> pl.DataFrame:
    """What the delivery state keeps of each notification (`GET /v1/notifications/{id}`)."""
    return wanted.select("notification_id", pl.lit(TYPE).alias("type"), "user_id", "accepted_at")


def plan(
    events: pl.DataFrame,
    audience: pl.DataFrame,
    *,
    templates: Mapping[str, Template],
    default_locale: str = "en",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(deliveries in the DELIVERIES layout, suppressed notifications with a reason).

    `events`: event_id, user_ids, category, lane, accepted_at, `template_id` or `content`
    (a Struct of push fields), `variables` and `data` (JSON object text, or null), and
    optionally channels (null: both), priority, ttl_s, collapse_key. `audience`: the shards'
    lookup rows of their users (`order_updates.plan`'s, with `categories_off`).
    """
    audience = _with_preferences(with_locale_columns(audience))
    prefs = audience.select("user_id", *_PREFERENCES, "profile_locale").unique("user_id")
    wanted = (
        _messages(notifications(events))
        .join(prefs, on="user_id", how="left")
        .with_columns(pl.col(c).fill_null(True) for c in ("push", "inbox", "email"))
        .with_columns(category_on=~_turned_off(), **_asked())
    )
    rows = channel_rows(wanted.filter(pl.col("category_on")), devices_of(audience), False)
    inline = pl.col("template_id").str.starts_with(INLINE)
    stored, stored_failed = localized(rows.filter(~inline), templates, default_locale)
    given, given_failed = localized(
        rows.filter(inline), inline_templates(events, default_locale), default_locale
    )
    deliveries = pl.concat(
        [
            as_deliveries(stored),
            as_deliveries(given).with_columns(NO_RENDERED_WITH),
        ]
    )
    unrendered = pl.concat(
        [stored_failed.select("notification_id"), given_failed.select("notification_id")]
    )
    suppressed = order_updates.suppressed(
        wanted, deliveries, unrendered, pl.col("category_on"), "category_opt_out"
    )
    return deliveries, suppressed


def _with_preferences(audience: pl.DataFrame) -> pl.DataFrame:
    return audience.with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in _PREFERENCES.items()
        if name not in audience.columns
    )


def _messages(wanted: pl.DataFrame) -> pl.DataFrame:
    """Each notification with the key of the template it renders from and its `data`:
    Herald's keys (notification_id, type, event_id, template_id when a stored template)
    followed by the event's own `data`, whose keys the door keeps clear of Herald's."""
    herald = with_present(
        pl.struct("notification_id", type=pl.lit(TYPE), event_id="event_id").struct.json_encode(),
        ["template_id"],
    )
    given = pl.col("data").fill_null("{}").str.strip_chars()
    data = (
        pl.when(given == "{}")
        .then(herald)
        .otherwise(pl.concat_str(herald.str.strip_suffix("}"), pl.lit(","), given.str.slice(1)))
    )
    return wanted.with_columns(
        data=data,
        template_id=pl.coalesce("template_id", pl.lit(INLINE) + pl.col("event_id")),
    )


def _turned_off() -> pl.Expr:
    """The event's category is one the user turned off: a fixed one by its column, the
    shop's own by `categories_off` (null: none off)."""
    category = pl.col("category")
    shop = pl.col("categories_off").list.contains(category).fill_null(False)
    expr = shop
    for fixed in FIXED_CATEGORIES:
        expr = (
            pl.when(category == fixed).then(~pl.col(f"cat_{fixed}").fill_null(True)).otherwise(expr)
        )
    return expr


def _asked() -> dict[str, pl.Expr]:
    """`push` and `inbox`: the user allows the channel and the event asks for it."""
    channels = pl.col("channels").fill_null(pl.lit(list(CHANNELS)))
    return {c: pl.col(c) & channels.list.contains(c) for c in CHANNELS}


def inline_templates(events: pl.DataFrame, default_locale: str) -> dict[str, Template]:
    """Each event's inline content as a one-off template, keyed `INLINE + event_id`: its
    variables typed by their values (a number renders as a number, anything else as
    text), its one locale the default (what numbers' decimal separator follows). Built
    unvalidated: the door already checked the content and its placeholders, and the
    stored templates' payload bound (at worst-case lengths) is not this content's limit."""
    if "content" not in events.columns:
        return {}
    given = events.filter(pl.col("content").is_not_null()).select(
        "event_id", pl.col("content").struct.json_encode(), "variables"
    )
    out = {}
    for event_id, content, variables in given.iter_rows():  # per event, not per user
        values = json.loads(variables or "{}")
        fields = {
            k: v for k, v in json.loads(content).items() if k in PUSH_FIELDS and v is not None
        }
        out[INLINE + event_id] = Template.model_construct(
            template_id="inline",
            category=None,
            variables={name: _variable(value) for name, value in values.items()},
            locales={default_locale: Content.model_validate(fields)},
            version=None,
        )
    return out


def _variable(value: object) -> Variable:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Variable(type="number")
    return Variable(type="string", max_length=INLINE_MAX_LENGTH)
