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
batch before reading the next, and of a user's several events in one batch only the first
goes now: the later ones stay pending and lead the next batch (`pipelines.log_entries`
waves; a batch then costs one round, not one per wave). A batch
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
from actors.flows.unroutable import Unroutable
from actors.partitions import PartitionReaders
from actors.sender_pool import SenderPool
from cluster.eventlog import open_event_log
from cluster.eventlog.kafka import cancelled_by_caller
from cluster.logs import configure_logging
from cluster.settings import HeraldSettings
from cluster.state.feedback import FeedbackStore
from cluster.state.outages import is_outage
from cluster.state.templates import TemplateStore
from cluster.vocabulary import LANE_OF_TYPE, LANES
from pipelines import log_entries, templates

log = logging.getLogger("herald.router")

# Kept under their old names for callers that decode batches as the router does.
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
        self.unroutable = Unroutable(settings, self.counts, redis=self.redis, log=self.log)
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
        deferred: set[str] = set()  # entries of a user's later waves, left pending on purpose
        next_sweep = time.monotonic() + self.settings.eventlog.claim_idle_ms / 2000
        block_ms = block_ms or self.settings.topology.batch_max_wait_ms
        while keep():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.eventlog.claim_idle_ms / 2000
                    pending = pending or partition is not None
                    if partition is None:
                        await self._claim_stale(lane, consumer)
                entries, redelivered = await self._next_batch(
                    lane, consumer, partition, block_ms, pending, deferred
                )
                if entries is None:  # no pending entries (left): new ones next
                    pending = False
                    continue
                deferred = set()
                if entries.height:
                    done, deferred = await self._handle(
                        lane, consumer, entries, redelivered, partition
                    )
                    if not done:
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

    async def _next_batch(
        self,
        lane: str,
        consumer: str,
        partition: int | None,
        block_ms: int,
        pending: bool,
        deferred: set[str],
    ) -> tuple[pl.DataFrame | None, bool]:
        """(The next batch, whether it is redelivered): what the last batch deferred and
        what is new; else the pending entries (None when there are none) or new ones."""
        if deferred and not pending:
            return await self._read_after_deferred(lane, consumer, partition, deferred)
        count = self.settings.topology.batch_max_rows
        entries = await self.log.read(
            lane, consumer, count, block_ms, pending=pending, partition=partition
        )
        if pending and entries.height == 0:
            return None, False
        return entries, pending or self.log.redelivers_unannounced

    async def _read_after_deferred(
        self, lane: str, consumer: str, partition: int | None, deferred: set[str]
    ) -> tuple[pl.DataFrame, bool]:
        """What the last batch deferred (pending, oldest first) and the new entries there
        now, as one batch. Redelivered only if more is pending than was deferred."""
        count = self.settings.topology.batch_max_rows
        old = await self.log.read(lane, consumer, count, 0, pending=True, partition=partition)
        new = (
            await self.log.read(lane, consumer, count - old.height, None, partition=partition)
            if old.height < count
            else old.clear()
        )
        redelivered = not set(old["entry_id"].to_list()) <= deferred
        return pl.concat([old, new]), redelivered or self.log.redelivers_unannounced

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
            await self._handle(lane, consumer, stale, True, None)  # partition None: no deferral

    async def _handle(
        self,
        lane: str,
        consumer: str,
        entries: pl.DataFrame,
        redelivered: bool,
        partition: int | None,
    ) -> tuple[bool, set[str]]:
        """Process one batch within the lane's `router_loops` slots, its entries' lease kept
        fresh: (True when no entry failed, the entries deferred to the next batch)."""
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
    ) -> tuple[bool, set[str]]:
        """Process a batch; if it fails, process its entries one by one so a poison event
        is dead-lettered after `poison_attempts` instead of blocking the events behind it.
        An entry that fails stays pending and holds back the later entries of its
        partition key in this batch (their user's order). (True when none failed, the
        entries `process` deferred.)"""
        try:
            return True, await self.process(lane, entries, redelivered, partition)
        except Exception as exc:
            if entries.height == 1:
                return await self._failed_entry(lane, entries, partition, exc), set()
            log.warning("router: batch of %d failed; retrying entry by entry", entries.height)
        failed: set[str] = set()
        for i, key in enumerate(log_entries.entry_keys(entries)):
            if key in failed:
                continue
            done, _ = await self._process_safely(lane, entries.slice(i, 1), True, partition)
            if not done:
                failed.add(key)
        return not failed, set()

    async def _failed_entry(self, lane: str, entry, partition: int | None, exc) -> bool:
        """Dead-letter at the `poison_attempts`-th failure (True); outages never count."""
        entry_id = entry["entry_id"][0]
        self._failures[entry_id] += 0 if is_outage(exc) else 1
        if self._failures[entry_id] < self.settings.eventlog.poison_attempts:
            log.exception("router: entry failed; it stays pending", extra={"entry_id": entry_id})
            return False
        log.exception(
            "router: event %s is poison; dead-lettering it", entry_id, extra={"entry_id": entry_id}
        )
        await self.unroutable.put(lane, entry, "routing failed repeatedly", partition)
        del self._failures[entry_id]
        return True

    async def process(
        self,
        lane: str,
        entries: pl.DataFrame,
        redelivered: bool = False,
        partition: int | None = None,
    ) -> set[str]:
        """One batch of log entries: unknown ones dead-lettered; order updates, price drops
        and requested notifications each to their flow; acked. A user's n-th event of the
        batch goes after its (n-1)-th (`pipelines.log_entries.waves`): on a partition of
        the Redis log, whose loop is its only reader, only the first wave is routed and
        the later ones are left pending for the next batch, which reads them first
        (answered here, to go first); elsewhere (Kafka acks by offset) wave after wave."""
        events = log_entries.decode(entries, lane)
        known = events["type"].is_in(list(LANE_OF_TYPE)) & events["event_id"].is_not_null()
        if not known.all():
            await self.unroutable.put(
                lane, entries.filter(~known), "unknown event type or missing event_id", partition
            )
            events = events.filter(known)
        waves = log_entries.waves(events)
        if len(waves) > 1:
            await self.orders.settle(events.filter(pl.col("type") == "order.updated"))
        later: list[pl.DataFrame] = []
        if partition is not None and self.log.leases_partitions:
            waves, later = waves[:1], waves[1:]
        routed: list[str] = []
        for wave in waves:
            await self._route(wave.drop("partition_key", "wave"), redelivered)
            routed += wave["entry_id"].to_list()
        await self.log.ack(lane, routed, partition=partition)
        self.counts["events"] += len(routed)
        deferred = {entry_id for wave in later for entry_id in wave["entry_id"].to_list()}
        self.counts["deferred"] += len(deferred)
        return deferred

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
