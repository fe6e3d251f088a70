"""Delivery state in Redis: one hash per notification, one field per device/channel.

`<prefix>{ntf:<notification_id>}` holds `meta` (who, what, when accepted) and, per delivery,
`d:{device_id}` → JSON {channel, status, attempts, last_error, updated_at, acked_at, and
— when the delivery says what its content was rendered with — locale, template_version}. A
field already `delivered` or `dead` is never sent again, which is what keeps a redelivered
event from reaching a phone twice.
"""

from __future__ import annotations

import json
import time
from typing import Any

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.clients import async_client
from cluster.tables.deliveries import with_present

FINAL = (
    "delivered", "dead", "failed", "dead_lettered", "cancelled", "expired", "superseded",
    "rate_limited",
)  # fmt: skip
STATUS_OF_OUTCOME = {
    "delivered": "delivered",
    "retry": "retrying",
    "dead_token": "dead",
    "failed": "failed",
}
# A delivery's life: queued → delivered | dead (token gone) | failed (cannot succeed) |
# retrying → … → dead_lettered (out of attempts); a campaign's → cancelled when the campaign
# is cancelled before it is sent.
_LIVE = ("queued", "retrying", "delivered")  # a push in these may still reach, or reached
_NOT_PUSH = (b"d:inbox", b"d:webhook")


# What the content was rendered with, kept in a device's status when the row says.
RENDERED_WITH = ("locale", "template_version")


def _status_json(rows: pl.DataFrame, **fields: str | pl.Expr) -> pl.Expr:
    """The `value` column: a device's status as JSON — `fields`, then `RENDERED_WITH`
    where the row has them (absent, not null, otherwise: a status written before
    templates reads the same as one written after)."""
    present = [name for name in RENDERED_WITH if name in rows.columns]
    return with_present(pl.struct(**fields).struct.json_encode(), present).alias("value")


class DeliveryState:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or async_client(settings)

    def key(self, notification_id: str) -> str:
        return keys.notification(self.settings, notification_id)

    async def finished(self, deliveries: pl.DataFrame) -> pl.Series:
        """Boolean per delivery row: final, or owned by the retry schedule — either way not
        to be sent again from a redelivered log entry."""
        if deliveries.height == 0:
            return pl.Series("finished", [], dtype=pl.Boolean)
        pipe = self.redis.pipeline(transaction=False)
        for nid, device_id in deliveries.select("notification_id", "device_id").iter_rows():
            pipe.hget(self.key(nid), f"d:{device_id}")
        values = await pipe.execute()
        statuses = pl.Series("v", values, dtype=pl.Binary).cast(pl.String)
        status = statuses.str.json_path_match("$.status")
        return status.is_in([*FINAL, "retrying"]).fill_null(False).alias("finished")

    async def record_routed(
        self, deliveries: pl.DataFrame, suppressed: pl.DataFrame, meta: pl.DataFrame
    ) -> None:
        """Before sending: the notification's meta, each delivery as queued, and why a
        notification with no delivery was suppressed."""
        now = time.time()
        ttl = self.settings.state.notification_ttl_s
        pipe = self.redis.pipeline(transaction=False)
        for row in meta.iter_rows(named=True):
            key = self.key(row["notification_id"])
            pipe.hset(key, "meta", json.dumps({**row, "routed_at": now}, allow_nan=False))
            pipe.expire(key, ttl)
        if suppressed.height:
            for nid, reason in suppressed.select("notification_id", "reason").iter_rows():
                pipe.hset(self.key(nid), "suppressed", reason)
        queued = deliveries.select(
            "notification_id",
            pl.format("d:{}", "device_id").alias("field"),
            _status_json(
                deliveries,
                channel="channel",
                status=pl.lit("queued"),
                attempts=pl.lit(0),
                updated_at=pl.lit(now),
            ),
        )
        for nid, field, value in queued.iter_rows():
            pipe.hset(self.key(nid), field, value)
        await pipe.execute()

    def record_results(
        self, rows: pl.DataFrame, pipe: aioredis.client.Pipeline, status: str | None = None
    ) -> None:
        """After sending: each delivery's status, queued on `pipe`. `rows` carry the
        delivery (notification_id, device_id, channel), the provider's answer (outcome,
        error, acked_at) and `attempts` made so far; `status` overrides the outcome's."""
        now = time.time()
        status_expr = (
            pl.lit(status) if status else pl.col("outcome").replace_strict(STATUS_OF_OUTCOME)
        )
        encoded = rows.select(
            "notification_id",
            pl.format("d:{}", "device_id").alias("field"),
            _status_json(
                rows,
                channel="channel",
                status=status_expr,
                attempts="attempts",
                last_error="error",
                acked_at="acked_at",
                updated_at=pl.lit(now),
            ),
        )
        for nid, field, value in encoded.iter_rows():
            pipe.hset(self.key(nid), field, value)

    async def without_live_push(self, notification_ids: list[str]) -> list[bool]:
        """Per notification: True when none of its pushes is queued, retrying or delivered
        and it has no webhook delivery yet — the webhook fallback's test. The whole hash
        is read (one pipeline), since a notification's pushes may settle in different
        batches."""
        pipe = self.redis.pipeline(transaction=False)
        for nid in notification_ids:
            pipe.hgetall(self.key(nid))
        return [
            b"d:webhook" not in fields
            and not any(
                name.startswith(b"d:")
                and name not in _NOT_PUSH
                and json.loads(value)["status"] in _LIVE
                for name, value in fields.items()
            )
            for fields in await pipe.execute()
        ]

    async def get(self, notification_id: str) -> dict[str, Any] | None:
        fields = await self.redis.hgetall(self.key(notification_id))
        if not fields:
            return None
        fields = {k.decode(): v.decode() for k, v in fields.items()}
        meta = json.loads(fields.pop("meta", "{}"))
        suppressed = fields.pop("suppressed", None)
        deliveries = [
            {"device_id": name[2:], **json.loads(value)}
            for name, value in sorted(fields.items())
            if name.startswith("d:")
        ]
        return {"meta": meta, "suppressed": suppressed, "deliveries": deliveries}
