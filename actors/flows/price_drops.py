"""Price drops (the marketing lane): one notification (`<event_id>:<user_id>`) per wisher
of the dropped product, through the campaigns' eligibility and ranker
(`pipelines.price_drops.plan`), best-scored first, at most `price_drop_audience_limit` per
event.

A fan-out is planned off the event loop (in a thread: polars releases the GIL) and sent in
batches of about `batch_max_rows` deliveries that never split a notification, each through
the delivery step's marketing path: record queued → hold the quiet-hours ones in the
marketing retry set until their window ends, send the rest → count the users (frequency
cap, shared with campaigns; this event's reached set, `cluster.state.price_drops`). Its
memory and in-flight work stay bounded and the transactional loops keep running between
batches. The log entry is acked by the router only after the last batch, so a crash mid
fan-out redelivers the event; the reached set then suppresses (`already_sent`) the wishers
it already reached, and deliveries already final are not sent again.

Content is the template `price_drop` in each device's language, from the router's template
cache: one snapshot per fan-out, so a shop's edit reaches the next drop and no drop's
wishers read two versions of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

import polars as pl
import redis.asyncio as aioredis

from actors.flows.base import Flow
from actors.flows.delivery import DeliveryStep
from actors.flows.shards import Shards
from cluster.state.frequency import FrequencyCounters
from cluster.state.price_drops import PriceDropReach
from cluster.state.templates import TemplateCache, TemplateStore
from models.ranker import Ranker, load_ranker
from models.registry import Registry
from pipelines import campaigns, feedback_log, price_drops
from pipelines.eligibility import local_day
from pipelines.templates import Template, cache

log = logging.getLogger("herald.router")


@dataclass(eq=False)
class PriceDropFlow(Flow):
    redis: aioredis.Redis
    shards: Shards
    delivery: DeliveryStep
    # The router's cache (shared by its flows); None: one of this flow's own, same store.
    templates: TemplateCache[Template] | None = None

    def __post_init__(self) -> None:
        if self.templates is None:
            self.templates = cache(TemplateStore(self.settings, self.redis))
        self.frequency = FrequencyCounters(self.settings, self.redis)
        self.reach = PriceDropReach(self.settings, self.redis)
        self._rankers: dict[str, Ranker] = {}  # by model version

    async def route(self, drops: pl.DataFrame, redelivered: bool) -> None:
        """Plan the events' fan-out over their wishers, log the sends as scored, record the
        suppressed, then deliver the targets batch by batch."""
        now = time.time()
        audience = await self.shards.wishers(drops["product_id"].unique().to_list())
        if audience.height == 0:
            return
        ranker = await self.ranker()
        wishers = audience.unique("user_id")
        sent_today = await self.frequency.sent_today(
            wishers.select("user_id", day=local_day(wishers, now))
        )
        already = await self._already_reached(drops, audience) if redelivered else None
        planned = await asyncio.to_thread(
            price_drops.plan,
            drops,
            audience,
            now=now,
            ranker=ranker,
            sent_today=sent_today,
            already_sent=already,
            audience_limit=self.settings.price_drops.audience_limit,
        )
        if planned.chosen.height:  # logged before sending, as the fan-out workers do
            sent = price_drops.sends(planned.chosen, model_version=ranker.version, now=now)
            await asyncio.to_thread(
                feedback_log.write, sent, self.settings.feedback_root, "sends", "sent_at"
            )
        await self._record_suppressed(planned.suppressed)
        render = functools.partial(
            price_drops.render,
            content=price_drops.messages(drops),
            templates=await self.templates.templates(),
            default_locale=self.settings.content.default_locale,
        )
        meta = functools.partial(price_drops.meta, model_version=ranker.version)
        for batch in campaigns.batches(planned.targets, self.settings.topology.batch_max_rows):
            await self.delivery.deliver_marketing(
                render(batch),
                meta,
                self.reach.record,
                skip_finished=redelivered,
                ttl_s=self.settings.price_drops.ttl_s,
            )
        for stage, n in planned.counts.items():
            self.counts[f"price_drop_{stage}"] += n
        self.counts["price_drop_notifications"] += planned.counts["selected"]
        self.counts["price_drop_suppressed"] += planned.suppressed.height

    async def _record_suppressed(self, suppressed: pl.DataFrame) -> None:
        """Why each wisher not notified was left out, `batch_max_rows` at a time."""
        step = self.settings.topology.batch_max_rows
        for start in range(0, suppressed.height, step):
            part = suppressed.slice(start, step)
            await self.delivery.state.record_routed(
                price_drops.EMPTY_DELIVERIES, part, price_drops.meta(part)
            )

    async def _already_reached(self, drops: pl.DataFrame, audience: pl.DataFrame) -> pl.Series:
        """Notification ids of these events' wishers that their event already reached: a
        redelivered event must neither notify them again nor count them twice."""
        pairs = (
            drops.select("event_id", "product_id")
            .join(audience.select("product_id", "user_id"), on="product_id")
            .unique(["event_id", "user_id"], maintain_order=True)
        )
        reached = await self.reach.reached(pairs)
        return reached.select(
            price_drops.notification_id(pl.col("event_id"), pl.col("user_id"))
        ).to_series()

    async def ranker(self) -> Ranker:
        """The registry's current model (loaded once per version, off the event loop), so a
        deploy or rollback reaches price drops with no restart. If the registry cannot be
        read, the last model loaded (or the shipped default) keeps price drops going."""
        try:
            registry = Registry(self.settings.models_root)
            version = await asyncio.to_thread(registry.current)
            if version not in self._rankers:
                ranker = await asyncio.to_thread(registry.load, version)
                self._rankers = {version: ranker}
            return self._rankers[version]
        except Exception:  # noqa: BLE001 - ranking must not stop price drops
            log.warning("router: model registry unreadable; ranking with the last model")
            if not self._rankers:
                ranker = await asyncio.to_thread(load_ranker)
                self._rankers = {ranker.version: ranker}
            return next(iter(self._rankers.values()))
