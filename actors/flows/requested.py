"""Requested notifications (the transactional lane): the shop's `notification.requested`
events, each one notification per (event, user) — id `<event_id>:<user_id>` — with a push
per active device and an inbox item as the event's channels and the user's preferences
allow (`pipelines.requested.plan`), or a recorded reason why none was sent.

Content comes from the router's template cache (one snapshot per batch, so a shop's edit
reaches the next batch and never half of one) or the event's inline content, in each
device's language. The events of a batch are planned and sent in chunks of about
`batch_max_rows` notifications (an event's 1–1,000 users never split), through the same
delivery step as order updates: dedup on redelivery, retries, status, webhook fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from actors.flows.delivery import TransactionalFlow
from pipelines import requested
from pipelines.templates import Template


@dataclass(eq=False)
class RequestedFlow(TransactionalFlow):
    async def route(self, events: pl.DataFrame, redelivered: bool) -> None:
        """Plan, record and send the events' notifications, chunk by chunk, all from one
        snapshot of the templates (an event's users never see two versions)."""
        named = events["template_id"].drop_nulls().unique().to_list()
        templates = await self.templates.templates_for(named)
        limit = max(self.settings.topology.batch_max_rows, requested.USERS_MAX)
        chunk = (pl.col("user_ids").list.len().cum_sum() - 1) // limit
        for part in events.with_columns(_chunk=chunk).partition_by("_chunk", include_key=False):
            await self._route(part, templates, redelivered)

    async def _route(
        self, events: pl.DataFrame, templates: Mapping[str, Template], redelivered: bool
    ) -> None:
        """One chunk: its users' shard rows in one call per shard, the plan, the delivery
        step (which leaves out, on a redelivery, what is already final)."""
        users = events["user_ids"].explode().drop_nulls().unique().to_list()
        audience = await self.shards.audience(users)
        deliveries, suppressed = requested.plan(
            events,
            audience,
            templates=templates,
            default_locale=self.settings.content.default_locale,
        )
        meta = requested.meta(requested.notifications(events))
        await self.delivery.deliver_transactional(
            deliveries,
            suppressed,
            meta,
            redelivered,
            ttl_s=self.settings.delivery.requested_ttl_s,
        )
        self.counts["requested_notifications"] += meta.height
        self.counts["requested_suppressed"] += suppressed.height
