"""Order updates (the transactional lane): one notification per `order.updated` event
(id = event_id), to one user — a push per active device and an inbox item, by the user's
preferences (`pipelines.order_updates.plan`), or a recorded reason why none was sent. Its
content is the template `order.<status>` (or the event's `template_id`) in each device's
language, from the router's template cache: one snapshot of the templates per batch, so a
shop's edit reaches the next batch (within the cache's second) and never half a batch.

They never wait behind marketing: their own log stream, read loops, retry set and senders.
When every push of one has failed for good, the delivery step falls back to the webhook.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from actors.flows.delivery import TransactionalFlow
from pipelines import order_updates


@dataclass(eq=False)
class OrderFlow(TransactionalFlow):
    async def route(self, orders: pl.DataFrame, redelivered: bool) -> None:
        """Plan the events' deliveries, record them (suppressed ones with their reason),
        send. On a redelivery, deliveries already final are not sent again."""
        audience = await self.shards.audience(orders["user_id"].unique().to_list())
        deliveries, suppressed = order_updates.plan(
            orders,
            audience,
            fallback=self.settings.fallback.webhook_url is not None,
            templates=await self.templates.templates(),
            default_locale=self.settings.content.default_locale,
        )
        meta = orders.select("notification_id", "type", "user_id", "accepted_at")
        await self.delivery.deliver_transactional(deliveries, suppressed, meta, redelivered)
