"""EventRouter: reads batches from the event log, hands them to the flows, acks.

On the Redis Streams log each router reads the partitions of each lane it holds a lease on
(`actors.partitions`: its fair share of the routers alive), one sequential read loop per
partition, at most `router_loops` of them processing a batch at once per lane; on Kafka it
runs `router_loops` consumers per lane and the group assigns the partitions. Besides, one
loop per lane re-sends due retries, one campaign runner; router 0 also runs the
housekeeping loops and reads what an older deployment left in the unpartitioned stream.

The order inside a read loop is what makes delivery at-least-once: the flows record as
queued → send → record outcomes (and schedule retries, dead-letter the hopeless) → only
then XACK here. A crash anywhere before the XACK leaves the entry pending; the partition's
next holder (the restarted router, or the new owner once the lease ran out) reads its
pending entries first, and deliveries already final in the delivery state are skipped.
It is also what keeps a user's order: a partition has one reader, its loop finishes a
batch before reading the next, and a batch is routed in waves (`pipelines.log_entries`) so
a user's second event goes out only after the first one's deliveries are recorded. A batch
that fails is split entry by entry so one poison event is dead-lettered instead of blocking
those behind it; an entry that fails holds back the later entries of its user (they stay
pending, and the loop reads its pending entries again before anything new).

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
from actors.partitions import PartitionReaders
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
from pipelines import log_entries, templates

log = logging.getLogger("herald.router")

# Kept under their old names for callers that decode batches as the router does.
_EVENT_DTYPE = log_entries.EVENT_DTYPE
_DROPPED_BY_TYPE = log_entries.DROPPED_BY_TYPE


def _always() -> bool:
    return True


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
        # `router_loops`: the most batches of one lane this router processes at once.
        self._busy = {lane: asyncio.Semaphore(settings.topology.router_loops) for lane in LANES}
        self.partitions = PartitionReaders(settings, index, self.redis, self._read_partition)
        # Ray runs an async actor's __init__ inside its event loop: the loops start here, so
        # an actor Ray restarts after a crash resumes reading without anyone calling it.
        self._startup = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        await self.log.ensure_groups()
        if self.log.leases_partitions:
            loops = [self.partitions.run()]
            if self.index == 0:  # the pre-partition streams, until older routers are gone
                loops += [self._run(lane, f"legacy-{lane}", block_ms=1000) for lane in LANES]
        else:  # Kafka: the consumer group hands each consumer its partitions
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

    async def reading(self) -> dict[str, list[int]]:
        """The log partitions this router holds the lease of, per lane (Redis log)."""
        return self.partitions.reading()

    # --- reading the log -----------------------------------------------------------------
    async def _read_partition(self, lane: str, partition: int, keep) -> None:
        await self._run(lane, f"p{partition}", partition, keep)

    async def _run(
        self,
        lane: str,
        consumer: str,
        partition: int | None = None,
        keep=_always,
        block_ms: int | None = None,
    ) -> None:
        """One read loop (of one partition, while `keep()`): this consumer's pending entries
        first (what it, or the partition's previous holder, read but never acked), then new
        ones, one batch at a time. After an entry failed, its pending entries again before
        anything new, `poison_attempts` times at most. Every half claim-idle period, the
        pending ones again (a partition; late reads of a stalled previous holder) or
        entries other consumers left unacked for `claim_idle_ms` (the unpartitioned stream,
        Kafka: own entries that failed)."""
        pending = True
        next_sweep = time.monotonic() + self.settings.eventlog.claim_idle_ms / 2000
        block_ms = block_ms or self.settings.topology.batch_max_wait_ms
        while keep():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.eventlog.claim_idle_ms / 2000
                    pending = pending or partition is not None
                    if partition is None:
                        await self._claim_stale(lane, consumer)
                entries = await self.log.read(
                    lane,
                    consumer,
                    self.settings.topology.batch_max_rows,
                    block_ms,
                    pending=pending,
                    partition=partition,
                )
                if pending and entries.height == 0:
                    pending = False
                    continue
                if entries.height:
                    redelivered = pending or self.log.redelivers_unannounced
                    if not await self._handle(lane, consumer, entries, redelivered, partition):
                        pending = True  # the failed entries (and their users') go first
                        await asyncio.sleep(self._retry_pause_s())
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

    def _retry_pause_s(self) -> float:
        """Between two tries of a failed entry: `poison_attempts` of them span about one
        claim-idle period, so a shard that restarts meanwhile does not make it poison."""
        eventlog = self.settings.eventlog
        return eventlog.claim_idle_ms / 1000 / eventlog.poison_attempts

    async def _claim_stale(self, lane: str, consumer: str) -> None:
        stale = await self.log.claim_stale(
            lane,
            consumer,
            self.settings.eventlog.claim_idle_ms,
            self.settings.topology.batch_max_rows,
        )
        if stale.height:
            self.counts["claimed"] += stale.height
            await self._handle(lane, consumer, stale, True, None)

    async def _handle(
        self,
        lane: str,
        consumer: str,
        entries: pl.DataFrame,
        redelivered: bool,
        partition: int | None,
    ) -> bool:
        """Process one batch within the lane's `router_loops` slots, its entries' lease kept
        fresh; True when no entry is left pending."""
        async with self._busy[lane], self._leased(lane, consumer, entries, partition):
            return await self._process_safely(lane, entries, redelivered, partition)

    @contextlib.asynccontextmanager
    async def _leased(self, lane: str, consumer: str, entries: pl.DataFrame, partition: int | None):
        """Keep the entries' claim fresh while they are processed: a long fan-out must not
        look abandoned to a peer's claim (it would send the same pushes a second time).
        (A partition's own lease is renewed by `actors.partitions` meanwhile.)"""

        async def renew() -> None:
            ids = entries["entry_id"].to_list()
            while True:
                await asyncio.sleep(self.settings.eventlog.claim_idle_ms / 3000)
                try:
                    await self.log.renew(lane, consumer, ids, partition=partition)
                except Exception:  # noqa: BLE001 - a missed renewal only risks a duplicate
                    log.warning("router %s: lease renewal failed", consumer, exc_info=True)

        keeper = asyncio.create_task(renew())
        try:
            yield
        finally:
            keeper.cancel()

    async def _process_safely(
        self, lane: str, entries: pl.DataFrame, redelivered: bool, partition: int | None
    ) -> bool:
        """Process a batch; if it fails, process its entries one by one so a poison event
        is dead-lettered after `poison_attempts` instead of blocking the events behind it.
        An entry that fails stays pending and holds back the later entries of its
        partition key in this batch (their user's order). True when none is left pending."""
        try:
            await self.process(lane, entries, redelivered, partition)
            return True
        except Exception:
            if entries.height == 1:
                return await self._failed_entry(lane, entries, partition)
            log.warning("router: batch of %d failed; retrying entry by entry", entries.height)
        failed: set[str] = set()
        for i, key in enumerate(log_entries.entry_keys(entries)):
            if key in failed:
                continue
            if not await self._process_safely(lane, entries.slice(i, 1), True, partition):
                failed.add(key)
        return not failed

    async def _failed_entry(self, lane: str, entry: pl.DataFrame, partition: int | None) -> bool:
        """One entry failed: dead-lettered at its `poison_attempts`-th failure (True), else
        left pending (False)."""
        entry_id = entry["entry_id"][0]
        self._failures[entry_id] += 1
        if self._failures[entry_id] < self.settings.eventlog.poison_attempts:
            log.exception("router: entry failed; it stays pending", extra={"entry_id": entry_id})
            return False
        log.exception(
            "router: event %s is poison; dead-lettering it", entry_id, extra={"entry_id": entry_id}
        )
        await self._dead_letter_entries(lane, entry, "routing failed repeatedly", partition)
        del self._failures[entry_id]
        return True

    async def process(
        self,
        lane: str,
        entries: pl.DataFrame,
        redelivered: bool = False,
        partition: int | None = None,
    ) -> None:
        """One batch of log entries: unknown ones dead-lettered; the rest wave by wave (a
        user's n-th event of the batch after its (n-1)-th), order updates, price drops and
        requested notifications each to their flow; then the whole batch acked."""
        events = log_entries.decode(entries, lane)
        known = events["type"].is_in(list(LANE_OF_TYPE)) & events["event_id"].is_not_null()
        if not known.all():
            await self._dead_letter_entries(
                lane, entries.filter(~known), "unknown event type or missing event_id", partition
            )
            events = events.filter(known)
        waves = log_entries.waves(events)
        if len(waves) > 1:
            await self.orders.settle(events.filter(pl.col("type") == "order.updated"))
        for wave in waves:
            await self._route(wave.drop("partition_key", "wave"), redelivered)
        await self.log.ack(lane, events["entry_id"].to_list(), partition=partition)
        self.counts["events"] += events.height

    async def _route(self, events: pl.DataFrame, redelivered: bool) -> None:
        flows = {
            "order.updated": self.orders,
            "price.dropped": self.price_drops,
            "notification.requested": self.requested,
        }
        for type_, flow in flows.items():
            of_type = events.filter(pl.col("type") == type_).drop(_DROPPED_BY_TYPE[type_])
            if of_type.height:
                await flow.route(of_type, redelivered)

    async def _dead_letter_entries(
        self, lane: str, entries: pl.DataFrame, reason: str, partition: int | None = None
    ) -> None:
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
        await self.log.ack(lane, entries["entry_id"].to_list(), partition=partition)
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

    _frame = staticmethod(log_entries.decode)
