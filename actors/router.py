"""EventRouter: reads batches from the event log, hands them to the flows, acks.

Each router runs several read loops per lane, so while one batch waits on the providers the
next is already being planned, plus one loop per lane that re-sends due retries and one
campaign runner; router 0 also runs the housekeeping loops. The order inside a read loop is
what makes delivery at-least-once: the flows record as queued → send → record outcomes (and
schedule retries, dead-letter the hopeless) → only then XACK here. A crash anywhere before
the XACK leaves the entry pending; it is read again (own pending first after a restart,
XAUTOCLAIM by a peer otherwise) and deliveries already final in the delivery state are
skipped. While a batch is processed its lease is renewed, and a batch that fails is split
entry by entry so one poison event is dead-lettered instead of blocking those behind it.

The work itself lives in `actors.flows`, one concern a module: order updates, requested
notifications, price drops, the campaign runner, housekeeping, and the delivery step they
all end in; the router holds the one template cache its transactional flows render from.
Lanes stay apart all the way (`actors.flows.delivery`): a big marketing fan-out never
delays an order update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter

import polars as pl

from actors.fanout_pool import FanoutPool
from actors.flows.campaigns import CampaignRunner
from actors.flows.delivery import DeliveryStep
from actors.flows.housekeeping import Housekeeping
from actors.flows.orders import OrderFlow
from actors.flows.price_drops import PriceDropFlow
from actors.flows.requested import RequestedFlow
from actors.flows.shards import Shards
from actors.sender_pool import SenderPool
from cluster import metrics
from cluster.eventlog import open_event_log
from cluster.eventlog.kafka import cancelled_by_caller
from cluster.logs import configure_logging
from cluster.settings import HeraldSettings
from cluster.state.dead_letters import queue_dead_letter
from cluster.state.feedback import FeedbackStore
from cluster.state.templates import TemplateStore
from cluster.vocabulary import LANE_OF_TYPE, LANES
from pipelines import templates

log = logging.getLogger("herald.router")

# The event fields routers read; anything else an event carries stays in the log (an
# order update's template variables are read from the whole log body).
_EVENT_DTYPE = pl.Struct(
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
_JSON_FIELDS = ("variables", "data")
# Fields only some event types have: dropped from the other types' frames, so a price
# drop's `title` can never shadow a template's title in a join.
_ORDER_ONLY = ["user_id", "order_id", "status"]
_PRICE_DROP_ONLY = ["product_id", "old_price", "new_price", "currency", "title"]
_REQUESTED_ONLY = ["user_ids", "channels", "content", *_JSON_FIELDS]
_OPTIONS = ["template_id", "priority", "ttl_s", "collapse_key"]
_DROPPED_BY_TYPE = {
    "order.updated": [*_PRICE_DROP_ONLY, *_REQUESTED_ONLY, "category"],
    "price.dropped": [*_ORDER_ONLY, *_REQUESTED_ONLY, *_OPTIONS],
    "notification.requested": [*_ORDER_ONLY, *_PRICE_DROP_ONLY],
}


class EventRouter:
    """Plain class; `actors.bootstrap` wraps it with `ray.remote` and its options."""

    def __init__(self, settings: HeraldSettings, index: int) -> None:
        configure_logging(settings)
        self.settings = settings
        self.index = index
        self.log = open_event_log(settings)
        self.redis = self.log.redis
        self.counts: Counter[str] = Counter()
        self.shards = Shards(settings)
        self.senders = SenderPool(settings, self.redis, self.log)
        self.delivery = DeliveryStep(
            settings, self.counts, redis=self.redis, senders=self.senders, shards=self.shards
        )
        self.state = self.delivery.state
        pool = FanoutPool(settings, self.redis)
        parts = {"shards": self.shards, "delivery": self.delivery}
        # Every flow renders from one cache: each batch checks it (one GET at most a second)
        # and renders from one snapshot, so a shop's edit is seen within a second.
        self.templates = templates.cache(TemplateStore(settings, self.redis))
        self.orders = OrderFlow(settings, self.counts, templates=self.templates, **parts)
        self.requested = RequestedFlow(settings, self.counts, templates=self.templates, **parts)
        self.price_drops = PriceDropFlow(
            settings, self.counts, redis=self.redis, templates=self.templates, **parts
        )
        self.campaigns = CampaignRunner(
            settings,
            self.counts,
            store=self.delivery.campaigns,
            pool=pool,
            templates=self.templates,
            **parts,
        )
        self.housekeeping = Housekeeping(
            settings,
            self.counts,
            feedback=FeedbackStore(settings, self.redis),
            pool=pool,
            senders=self.senders,
        )
        self._tasks: list[asyncio.Task] = []
        self._failures: Counter[str] = Counter()
        # Ray runs an async actor's __init__ inside its event loop: the loops start here, so
        # an actor Ray restarts after a crash resumes reading without anyone calling it.
        self._startup = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        await self.log.ensure_groups()
        loops = [
            self._run(lane, f"router-{self.index}-{lane}-{loop}")
            for lane in LANES
            for loop in range(self.settings.topology.router_loops)
        ]
        loops += [self._run_retries(lane) for lane in LANES]
        loops.append(self.campaigns.run())
        if self.index == 0:  # one of each is enough; a restarted router 0 resumes them
            loops += self.housekeeping.loops()
        self._tasks += [asyncio.create_task(loop) for loop in loops]

    async def start(self) -> None:
        """Wait until the read loops run (bootstrap calls it to surface startup errors)."""
        await self._startup

    async def ping(self) -> dict[str, int]:
        """The router's counters (events, deliveries, retries, fan-outs...), for status."""
        return {"router": self.index, **self.counts}

    # --- reading the log -----------------------------------------------------------------
    async def _run(self, lane: str, consumer: str) -> None:
        """One read loop of one lane: this consumer's own pending entries first (what it
        had read before a restart), then new ones; every half claim-idle period, entries
        a dead peer left unacked for `claim_idle_ms` are taken over."""
        pending = True  # after a restart, first finish what this consumer had read
        next_claim = time.monotonic() + self.settings.eventlog.claim_idle_ms / 1000
        while True:
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.settings.eventlog.claim_idle_ms / 2000
                    stale = await self.log.claim_stale(
                        lane,
                        consumer,
                        self.settings.eventlog.claim_idle_ms,
                        self.settings.topology.batch_max_rows,
                    )
                    if stale.height:
                        self.counts["claimed"] += stale.height
                        async with self._leased(lane, consumer, stale):
                            await self._process_safely(lane, stale, redelivered=True)
                entries = await self.log.read(
                    lane,
                    consumer,
                    self.settings.topology.batch_max_rows,
                    self.settings.topology.batch_max_wait_ms,
                    pending=pending,
                )
                if pending and entries.height == 0:
                    pending = False
                    continue
                if entries.height:
                    redelivered = pending or self.log.redelivers_unannounced
                    async with self._leased(lane, consumer, entries):
                        await self._process_safely(lane, entries, redelivered=redelivered)
            except asyncio.CancelledError:
                if cancelled_by_caller():
                    raise
                # leaked by the Kafka client (`cluster.eventlog.kafka.stop_quietly`): not ours
                log.warning("router %s: read cancelled from inside; retrying", consumer)
                pending = True
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("router %s: read failed; retrying", consumer)
                pending = True
                await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def _leased(self, lane: str, consumer: str, entries: pl.DataFrame):
        """Keep the entries' lease fresh while they are processed: a long fan-out must not
        look abandoned to a peer's claim (it would send the same pushes a second time)."""

        async def renew() -> None:
            ids = entries["entry_id"].to_list()
            while True:
                await asyncio.sleep(self.settings.eventlog.claim_idle_ms / 3000)
                try:
                    await self.log.renew(lane, consumer, ids)
                except Exception:  # noqa: BLE001 - a missed renewal only risks a duplicate
                    log.warning("router %s: lease renewal failed", consumer, exc_info=True)

        keeper = asyncio.create_task(renew())
        try:
            yield
        finally:
            keeper.cancel()

    async def _process_safely(self, lane: str, entries: pl.DataFrame, redelivered: bool) -> None:
        """Process a batch; if it fails, process its entries one by one so a poison event
        is dead-lettered after `poison_attempts` instead of blocking the events behind it."""
        try:
            await self.process(lane, entries, redelivered)
            return
        except Exception:
            if entries.height == 1:
                entry_id = entries["entry_id"][0]
                self._failures[entry_id] += 1
                if self._failures[entry_id] >= self.settings.eventlog.poison_attempts:
                    log.exception(
                        "router: event %s is poison; dead-lettering it",
                        entry_id,
                        extra={"entry_id": entry_id},
                    )
                    await self._dead_letter_entries(lane, entries, "routing failed repeatedly")
                    del self._failures[entry_id]
                    return
                raise
            log.warning("router: batch of %d failed; retrying entry by entry", entries.height)
        for i in range(entries.height):
            try:
                await self._process_safely(lane, entries.slice(i, 1), redelivered=True)
            except Exception:
                log.exception("router: entry failed; it stays pending")

    async def process(self, lane: str, entries: pl.DataFrame, redelivered: bool = False) -> None:
        """One batch of log entries: unknown ones dead-lettered, order updates, price
        drops and requested notifications each to their flow, then the whole batch acked."""
        events = self._frame(entries, lane)
        known = events["type"].is_in(list(LANE_OF_TYPE)) & events["event_id"].is_not_null()
        if not known.all():
            await self._dead_letter_entries(
                lane, entries.filter(~known), "unknown event type or missing event_id"
            )
            events = events.filter(known)
        flows = {
            "order.updated": self.orders,
            "price.dropped": self.price_drops,
            "notification.requested": self.requested,
        }
        for type_, flow in flows.items():
            of_type = events.filter(pl.col("type") == type_).drop(_DROPPED_BY_TYPE[type_])
            if of_type.height:
                await flow.route(of_type, redelivered)
        await self.log.ack(lane, events["entry_id"].to_list())
        self.counts["events"] += events.height

    async def _dead_letter_entries(self, lane: str, entries: pl.DataFrame, reason: str) -> None:
        """Log entries no router can process go to the dead-letter stream as events (with
        their lane and acceptance time, so a replay puts them back as they came), then are
        acked: they must not block the entries behind them."""
        pipe = self.redis.pipeline(transaction=False)
        for body, accepted_at in entries.select("body", "accepted_at").iter_rows():
            try:
                event = json.loads(body)
            except (TypeError, ValueError):
                event = {"raw": body}
            event = event if isinstance(event, dict) else {"raw": event}
            body = {**event, "_lane": lane, "_accepted_at": accepted_at}
            queue_dead_letter(self.settings, pipe, "event", body, reason)
            log.warning(
                "event dead-lettered",
                extra={"event_id": event.get("event_id"), "lane": lane, "reason": reason},
            )
        await pipe.execute()
        await self.log.ack(lane, entries["entry_id"].to_list())
        metrics.count_dead_letters("event", entries.height)
        self.counts["dead_lettered_events"] += entries.height

    # --- retries -------------------------------------------------------------------------
    async def _run_retries(self, lane: str) -> None:
        """Re-send one lane's due retries (leased: a router that dies holding them only
        delays them) through the delivery step, which removes them from the set in the
        pipeline that records their next outcome."""
        while True:
            try:
                members, rows = await self.delivery.retries.take_due(
                    self.settings.topology.batch_max_rows, lane
                )
                if not members:
                    await asyncio.sleep(0.2)
                    continue
                self.counts["retried"] += rows.height
                await self.delivery.send(rows, retry_members=members, retry_lane=lane)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: retry batch failed; it comes back after its lease")
                await asyncio.sleep(0.5)

    @staticmethod
    def _frame(entries: pl.DataFrame, lane: str) -> pl.DataFrame:
        """Log entries with their event's fields as columns (`variables` and `data` as
        their JSON text), and the notification id an event's own notification takes (its
        event id; a fan-out's flow makes its own)."""
        events = entries["body"].str.json_decode(_EVENT_DTYPE).struct.unnest()
        objects = entries.select(
            pl.col("body").str.json_path_match(f"$.{f}").alias(f) for f in _JSON_FIELDS
        )
        return pl.concat([entries, events, objects], how="horizontal").with_columns(
            notification_id=pl.col("event_id"), lane=pl.lit(lane)
        )
