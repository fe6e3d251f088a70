"""Log entries as a batch of events, and that batch cut into waves that keep per-user order.

A router reads up to `batch_max_rows` entries of one partition at once, and the delivery
step sends a batch's pushes concurrently. Two events of one user in one batch would then
race to the phone, so the batch is routed in *waves*: wave n holds every event that is the
n-th of its partition key (user, product, or the event itself; `cluster.eventlog.base`)
in this batch, and a wave is routed only after the one before it is recorded. A batch of
distinct users is one wave, i.e. routed exactly as before.
"""

from __future__ import annotations

import json

import polars as pl

from cluster.eventlog.base import partition_key, partition_key_column
from pipelines import templates

# The event fields routers read; anything else an event carries stays in the log (an
# order update's template variables are read from the whole log body).
EVENT_DTYPE = pl.Struct(
    {
        "event_id": pl.String,
        "type": pl.String,
        "user_id": pl.String,
        "order_id": pl.String,
        "status": pl.String,
        "product_id": pl.String,
        "old_price": pl.Float64,
        "new_price": pl.Float64,
        "currency": pl.String,
        "title": pl.String,
        "category": pl.String,
        "template_id": pl.String,
        "priority": pl.String,
        "ttl_s": pl.Int64,
        "collapse_key": pl.String,
        "user_ids": pl.List(pl.String),
        "channels": pl.List(pl.String),
        "content": pl.Struct(
            {f: pl.Int64 if f == "badge" else pl.String for f in templates.PUSH_FIELDS}
        ),
    }
)
# Objects of any keys, kept as their JSON text (what rendering and `data` read).
JSON_FIELDS = ("variables", "data")
# Fields only some event types have: dropped from the other types' frames, so a price
# drop's `title` can never shadow a template's title in a join.
_ORDER_ONLY = ["user_id", "order_id", "status"]
_PRICE_DROP_ONLY = ["product_id", "old_price", "new_price", "currency", "title"]
_REQUESTED_ONLY = ["user_ids", "channels", "content", *JSON_FIELDS]
_OPTIONS = ["template_id", "priority", "ttl_s", "collapse_key"]
DROPPED_BY_TYPE = {
    "order.updated": [*_PRICE_DROP_ONLY, *_REQUESTED_ONLY, "category"],
    "price.dropped": [*_ORDER_ONLY, *_REQUESTED_ONLY, *_OPTIONS],
    "notification.requested": [*_ORDER_ONLY, *_PRICE_DROP_ONLY],
}


def decode(entries: pl.DataFrame, lane: str) -> pl.DataFrame:
    """Log entries with their event's fields as columns (`variables` and `data` as
    their JSON text), and the notification id an event's own notification takes (its
    event id; a fan-out's flow makes its own)."""
    events = entries["body"].str.json_decode(EVENT_DTYPE).struct.unnest()
    objects = entries.select(
        pl.col("body").str.json_path_match(f"$.{f}").alias(f) for f in JSON_FIELDS
    )
    return pl.concat([entries, events, objects], how="horizontal").with_columns(
        notification_id=pl.col("event_id"), lane=pl.lit(lane)
    )


def with_waves(events: pl.DataFrame) -> pl.DataFrame:
    """`partition_key` and `wave` (1 for a key's first event in the batch, 2 for its
    second...) on a decoded batch, in the batch's order (the log's)."""
    keyed = events.with_columns(partition_key_column(events))
    return keyed.with_columns(wave=pl.col("partition_key").cum_count().over("partition_key"))


def waves(events: pl.DataFrame) -> list[pl.DataFrame]:
    """The batch cut into its waves, first wave first; each keeps the batch's order."""
    if events.height == 0:
        return []
    keyed = with_waves(events)
    if keyed["wave"].max() == 1:
        return [keyed]
    return [part for _, part in keyed.group_by("wave", maintain_order=True)]


def entry_keys(entries: pl.DataFrame) -> list[str]:
    """Each entry's partition key, from its raw body. For a batch that failed (decoding it
    may be what failed, so entry by entry): a body that is no event is its own key."""
    out = []
    for entry_id, body in entries.select("entry_id", "body").iter_rows():
        try:
            event = json.loads(body)
        except (TypeError, ValueError):
            event = None
        out.append((partition_key(event) or entry_id) if isinstance(event, dict) else entry_id)
    return out
