"""Order updates (the transactional lane): one notification per `order.updated` event
(id = event_id), to one user — a push per active device and an inbox item, by the user's
preferences (`pipelines.order_updates.plan`), or a recorded reason why none was sent.

They never wait behind marketing: their own log stream, read loops, retry set and senders.
When every push of one has failed for good, the delivery step falls back to the webhook.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from actors.flows.base import Flow
from actors.flows.delivery import DeliveryStep
from actors.flows.shards import Shards
from pipelines import order_updates


@dataclass(eq=False)
class OrderFlow(Flow):
    shards: Shards
    delivery: DeliveryStep

    async def route(self, orders: pl.DataFrame, redelivered: bool) -> None:
        """Plan the events' deliveries, record them (suppressed ones with their reason),
        send. On a redelivery, deliveries already final are not sent again."""
        state = self.delivery.state
        audience = await self.shards.audience(orders["user_id"].unique().to_list())
        deliveries, suppressed = order_updates.plan(
            orders, audience, fallback=self.settings.fallback.webhook_url is not None
        )
        meta = orders.select("notification_id", "type", "user_id", "accepted_at")
        if redelivered and deliveries.height:
            deliveries = deliveries.filter(~(await state.finished(deliveries)))
        await state.record_routed(deliveries, suppressed, meta)
        await self.delivery.send(deliveries.with_columns(attempt=pl.lit(0)))
