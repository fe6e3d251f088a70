"""Order updates (the transactional lane): one notification per `order.updated` event
(id = event_id), to one user — a push per active device and an inbox item, by the user's
preferences (`pipelines.order_updates.plan`), or a recorded reason why none was sent. Its
content is the template `order.<status>` (or the event's `template_id`) in each device's
language, from the router's template cache: one snapshot of the templates per batch, so a
shop's edit reaches the next batch (within the cache's second) and never half a batch.

Latest status wins: before planning, the batch asks `cluster.state.orders` (one script
call) which updates are older than their order's newest; those are not sent but recorded
suppressed as `superseded` and counted (`counts["superseded"]`), so a late `shipped`
never reaches a phone that already shows `delivered`.

They never wait behind marketing: their own log stream, read loops, retry set and senders.
When every push of one has failed for good, the delivery step falls back to the webhook.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from actors.flows.delivery import TransactionalFlow
from cluster.state.orders import OrderLatest
from cluster.tables.deliveries import DELIVERIES
from pipelines import order_updates


@dataclass(eq=False)
class OrderFlow(TransactionalFlow):
    def __post_init__(self) -> None:
        self.latest = OrderLatest(self.settings, self.delivery.redis)

    async def settle(self, orders: pl.DataFrame) -> None:
        """Before a batch is routed in waves (a user's n-th event after its (n-1)-th): the
        newest update of each order in the whole batch is stored as its latest, so that —
        as in a batch routed at once — an update an in-batch newer one replaces is
        `superseded` in its own wave. An update without `sequence`/`occurred_at` is never
        stale, so in-order statuses without them are all sent, one wave after another."""
        if orders.height > 1:
            await self.latest.stale(order_updates.ordering(orders))

    async def route(self, orders: pl.DataFrame, redelivered: bool) -> None:
        """Leave out the superseded updates, plan the others' deliveries, record them all
        (suppressed ones with their reason), send. On a redelivery, deliveries already
        final are not sent again."""
        stale = await self.latest.stale(order_updates.ordering(orders))
        deliveries, suppressed = await self._plan(orders.filter(~stale))
        superseded = order_updates.superseded(orders.filter(stale))
        self.counts["superseded"] += superseded.height
        suppressed = pl.concat([suppressed, superseded], how="vertical_relaxed")
        meta = orders.select("notification_id", "type", "user_id", "accepted_at")
        await self.delivery.deliver_transactional(
            deliveries,
            suppressed,
            meta,
            redelivered,
            ttl_s=self.settings.delivery.order_update_ttl_s,
        )

    async def _plan(self, fresh: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """`order_updates.plan` for the updates still to send; a batch whose every update
        was superseded asks no shard (an empty lookup has no columns to plan on)."""
        if fresh.height == 0:
            none = pl.DataFrame(schema={"notification_id": pl.String, "user_id": pl.String})
            return pl.from_arrow(DELIVERIES.empty_table()), none.with_columns(reason=pl.lit(""))
        audience = await self.shards.audience(fresh["user_id"].unique().to_list())
        return order_updates.plan(
            fresh,
            audience,
            fallback=self.settings.fallback.webhook_url is not None,
            templates=await self.templates.templates_for(
                fresh["template_id"].drop_nulls().unique().to_list()
                if "template_id" in fresh.columns
                else []
            ),
            default_locale=self.settings.content.default_locale,
        )
