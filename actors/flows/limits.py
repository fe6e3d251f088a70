"""What the delivery step drops instead of sending, each recorded with its reason.

- **expired**: a push past its deadline (`pipelines.deadlines`): a retry, a released or
  a would-be quiet-hours hold, or a first attempt that waited too long. Status `expired`,
  never sent late, never dead-lettered.
- **superseded**: a retried order update that a newer update of the same order (accepted
  after it) has overtaken since — the phone already shows the newer status, and the
  collapse id would let the old one replace it.
- **rate_limited**: transactional pushes beyond `HERALD_USER_PUSH_LIMIT_PER_MIN` for their
  user this minute; their inbox item still goes out.

Each is a device status in the notification's record, a router count and a
`herald_notifications_suppressed_total{lane, reason}` metric. The records join the
caller's pipeline, so they commit with the batch's other outcomes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import polars as pl
import redis.asyncio as aioredis

from actors.flows.base import Flow
from cluster import metrics
from cluster.state.deliveries import DeliveryState
from cluster.state.orders import OrderLatest, overtaken
from cluster.state.push_limits import PushLimits
from cluster.vocabulary import PUSH_CHANNELS
from pipelines import deadlines

_ORDER_ID = pl.col("data").str.json_path_match("$.order_id")
_IS_ORDER = pl.col("data").str.json_path_match("$.type") == "order.updated"


@dataclass(eq=False)
class Limits(Flow):
    redis: aioredis.Redis
    state: DeliveryState

    def __post_init__(self) -> None:
        self.orders = OrderLatest(self.settings, self.redis)
        self.push_limits = PushLimits(self.settings, self.redis)

    def drop(
        self, rows: pl.DataFrame, reason: str, pipe: aioredis.client.Pipeline, error: str
    ) -> None:
        """Record `rows` (deliveries with `attempt`) as `reason` on `pipe`, and count them."""
        if rows.height == 0:
            return
        self.state.record_results(
            rows.with_columns(
                outcome=pl.lit("failed"),
                error=pl.lit(error),
                acked_at=pl.lit(None, dtype=pl.Float64),
                attempts=pl.col("attempt"),
            ),
            pipe,
            status=reason,
        )
        self.counts[reason] += rows.height
        for (lane,), group in rows.group_by("lane"):
            metrics.count_suppressed(lane, reason, group.height)

    async def unsendable(
        self, deliveries: pl.DataFrame, scheduled: bool
    ) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        """Split `deliveries` (with `attempt`) into what may still be sent and, by reason,
        what may not: expired ones, and — for rows from the retry set — order updates
        overtaken by a newer update of their order."""
        late = deliveries.select(deadlines.expired(time.time(), scheduled)).to_series()
        dropped = {"expired": deliveries.filter(late)}
        deliveries = deliveries.filter(~late)
        if scheduled and deliveries.height:
            orders = deliveries.with_columns(order_id=_ORDER_ID).filter(
                _IS_ORDER & pl.col("order_id").is_not_null()
            )
            if orders.height:
                stale = orders.filter(await overtaken(self.orders, orders))
                dropped["superseded"] = stale.drop("order_id")
                deliveries = deliveries.join(stale, on="delivery_id", how="anti")
        return deliveries, dropped

    async def over_limit(self, deliveries: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(what may be sent, the push rows over their user's limit this minute). Counted
        per notification, in the batch's order, so a user's first ones go out."""
        limit = self.settings.delivery.user_push_limit_per_min
        is_push = pl.col("channel").is_in(PUSH_CHANNELS)
        if not limit or deliveries.height == 0 or not deliveries.select(is_push.any()).item():
            return deliveries, deliveries.clear()
        pushes = (
            deliveries.filter(is_push)
            .unique("notification_id", keep="first", maintain_order=True)
            .select("notification_id", "user_id")
        )
        before = await self.push_limits.count(pushes)
        over = pushes.filter(deadlines.over_limit(pushes, before, limit))["notification_id"]
        limited = is_push & pl.col("notification_id").is_in(over.implode())
        return deliveries.filter(~limited), deliveries.filter(limited)
