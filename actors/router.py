"""EventRouter: reads batches from the event log, plans deliveries, sends, records, acks.

Each router runs several read loops per lane, so while one batch waits on the providers the
next is already being planned, plus one loop per lane that re-sends due retries. The order
inside a loop is what makes delivery at-least-once: record as queued → send → record
outcomes (and schedule retries, dead-letter the hopeless) → XACK. A crash anywhere before
the XACK leaves the entry pending; it is read again (own pending first after a restart,
XAUTOCLAIM by a peer otherwise) and deliveries already final in the delivery state are
skipped.

Lanes stay apart all the way: transactional (order updates) and marketing (price drops)
are separate log streams, separate read and retry loops, and separate sender actors per
channel (`sender_name(channel, lane)`), so a big marketing fan-out never delays an order
update. A fan-out is planned off the event loop (in a thread: polars releases the GIL) and
sent in chunks of `batch_max_rows` deliveries, so its memory and in-flight work stay bounded
and the transactional loops keep running in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
import ray

from actors.fanout_pool import FanoutPool
from actors.fanout_worker import freq_key, marketing_sent_today, sent_users_key
from actors.sender_pool import SenderPool
from cluster import metrics
from cluster.eventlog import open_event_log
from cluster.eventlog.kafka import cancelled_by_caller
from cluster.logs import configure_logging
from cluster.names import fanout_name, sender_name, shard_name
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from cluster.state import keys
from cluster.state.campaigns import SEPARATOR, CampaignStore
from cluster.state.dead_letters import dead_letter_fields, dlq_key
from cluster.state.deliveries import DeliveryState
from cluster.state.retries import RetrySchedule
from cluster.tables.deliveries import DELIVERIES
from cluster.vocabulary import LANE_OF_TYPE, LANES, PUSH_CHANNELS
from models.ranker import Ranker, load_ranker
from models.registry import Registry
from pipelines import campaigns, feedback_log, order_updates, price_drops

log = logging.getLogger("herald.router")

# The event fields routers read; anything else an event carries stays in the log.
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
    }
)
_DELIVERY_COLUMNS = [f.name for f in DELIVERIES]
# Fields only one event type has: dropped from the other type's frame, so a price drop's
# `title` can never shadow an order template's title in a join.
_ORDER_ONLY = ["user_id", "order_id", "status"]
_PRICE_DROP_ONLY = ["product_id", "old_price", "new_price", "currency", "title", "category"]
# The snapshot's user columns a price drop's ranking reads (`models.features`); the wisher
# rows from the shards carry preferences and devices but no profile.
_RANKING_COLUMNS = ["timezone", "country", "attributes", "last_active_at", "platforms"]


class EventRouter:
    """Plain class; `actors.bootstrap` wraps it with `ray.remote` and its options."""

    def __init__(self, settings: HeraldSettings, index: int) -> None:
        configure_logging(settings)
        self.settings = settings
        self.index = index
        self.log = open_event_log(settings)
        self.redis = self.log.redis
        self.state = DeliveryState(settings, self.redis)
        self.retries = RetrySchedule(settings, self.redis)
        self.campaigns = CampaignStore(settings, self.redis)
        self.pool = FanoutPool(settings, self.redis)
        self.senders = SenderPool(settings, self.redis, self.log)
        self._price_drop_rankers: dict[str, Ranker] = {}  # by model version
        # One command per batch, not one HINCRBY per user: +1 for each user, then the TTL.
        self._count_sent_today = self.redis.register_script(
            "for i = 2, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end "
            "redis.call('EXPIRE', KEYS[1], ARGV[1])"
        )
        self._tasks: list[asyncio.Task] = []
        self._handles: dict[str, ray.actor.ActorHandle] = {}
        self._failures: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        # Ray runs an async actor's __init__ inside its event loop: the loops start here, so
        # an actor Ray restarts after a crash resumes reading without anyone calling it.
        self._startup = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        await self.log.ensure_groups()
        for lane in LANES:
            for loop in range(self.settings.topology.router_loops):
                consumer = f"router-{self.index}-{lane}-{loop}"
                self._tasks.append(asyncio.create_task(self._run(lane, consumer)))
        for lane in LANES:
            self._tasks.append(asyncio.create_task(self._run_retries(lane)))
        self._tasks.append(asyncio.create_task(self._run_campaigns()))
        if self.index == 0:  # one exporter is enough; a restarted router 0 resumes it
            self._tasks.append(asyncio.create_task(self._export_feedback()))
            if self.settings.pool_max_workers > self.settings.fanout.workers:
                self._tasks.append(asyncio.create_task(self._shrink_pool()))
            if self.settings.senders.replicas_max > 1:
                self._tasks.append(asyncio.create_task(self._scale_senders()))

    async def start(self) -> None:
        """Wait until the read loops run (bootstrap calls it to surface startup errors)."""
        await self._startup

    async def ping(self) -> dict[str, int]:
        return {"router": self.index, **self.counts}

    # --- reading the log -----------------------------------------------------------------
    async def _run(self, lane: str, consumer: str) -> None:
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
        events = self._frame(entries, lane)
        known = events["type"].is_in(list(LANE_OF_TYPE)) & events["event_id"].is_not_null()
        if not known.all():
            await self._dead_letter_entries(
                lane, entries.filter(~known), "unknown event type or missing event_id"
            )
            events = events.filter(known)
        orders = events.filter(pl.col("type") == "order.updated").drop(_PRICE_DROP_ONLY)
        if orders.height:
            await self._route_orders(orders, redelivered)
        drops = events.filter(pl.col("type") == "price.dropped").drop(_ORDER_ONLY)
        if drops.height:
            await self._route_price_drops(drops, redelivered)
        await self.log.ack(lane, events["entry_id"].to_list())
        self.counts["events"] += events.height

    async def _route_orders(self, orders: pl.DataFrame, redelivered: bool) -> None:
        """order.updated: one notification (id = event_id) per event, to one user."""
        audience = await self._audience(orders["user_id"].unique().to_list())
        deliveries, suppressed = order_updates.plan(
            orders, audience, fallback=self.settings.fallback.webhook_url is not None
        )
        meta = orders.select("notification_id", "type", "user_id", "accepted_at")
        if redelivered and deliveries.height:
            deliveries = deliveries.filter(~(await self.state.finished(deliveries)))
        await self.state.record_routed(deliveries, suppressed, meta)
        await self._send(deliveries.with_columns(attempt=pl.lit(0)))

    async def _route_price_drops(self, drops: pl.DataFrame, redelivered: bool) -> None:
        """price.dropped: one notification (`<event_id>:<user_id>`) per wisher, through the
        campaigns' eligibility and ranker (`pipelines.price_drops.plan`), best-scored first,
        at most `price_drop_audience_limit` per event. Fanned out in batches of about
        `batch_max_rows` deliveries that never split a notification: record queued → hold
        the quiet-hours ones in the marketing retry set until their window ends, send the
        rest → count the users (frequency cap, shared with campaigns; this event's sent
        set). The log entry is acked by the caller only after the last batch, so a crash
        mid fan-out redelivers the event; the sent set then suppresses (`already_sent`) the
        wishers it already reached, and deliveries already final are not sent again."""
        now = time.time()
        audience = await self._wishers(drops["product_id"].unique().to_list())
        if audience.height == 0:
            return
        ranker = await self._price_drop_ranker()
        wishers = audience.unique("user_id")
        sent_today = await marketing_sent_today(self.redis, self.settings, wishers, now)
        already = await self._price_drops_sent(drops, audience) if redelivered else None
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
        targets, suppressed = planned.targets, planned.suppressed
        if planned.chosen.height:  # logged before sending, as the fan-out workers do
            sent = price_drops.sends(planned.chosen, model_version=ranker.version, now=now)
            await asyncio.to_thread(
                feedback_log.write, sent, self.settings.feedback_root, "sends", "sent_at"
            )
        content = price_drops.messages(drops)
        step = self.settings.topology.batch_max_rows
        for start in range(0, suppressed.height, step):
            part = suppressed.slice(start, step)
            await self.state.record_routed(
                price_drops.EMPTY_DELIVERIES, part, price_drops.meta(part)
            )
        for batch in campaigns.batches(targets, step):
            deliveries = price_drops.render(batch, content)
            await self._price_drop_batch(deliveries, ranker.version, redelivered)
        for stage, n in planned.counts.items():
            self.counts[f"price_drop_{stage}"] += n
        self.counts["price_drop_notifications"] += planned.counts["selected"]
        self.counts["price_drop_suppressed"] += suppressed.height

    async def _price_drop_batch(
        self, batch: pl.DataFrame, model_version: str, redelivered: bool
    ) -> None:
        """One batch of a price drop's deliveries (`price_drops.render`), as
        `_campaign_batch` does a campaign's: record as queued (deferred ones too) → hold
        the quiet-hours ones in the marketing retry set until their window ends → send the
        rest → +1 on each user's marketing count of their local day and into the event's
        sent set, in one transaction. On a redelivery, deliveries already final (or owned
        by the retry schedule) are left out first."""
        if redelivered:
            batch = batch.filter(~(await self.state.finished(batch)))
        if batch.height == 0:
            return
        await self.state.record_routed(
            batch.select(_DELIVERY_COLUMNS), pl.DataFrame(), price_drops.meta(batch, model_version)
        )
        await self._hold_or_send(batch)
        users = batch.unique("notification_id", keep="first")
        pipe = self.redis.pipeline(transaction=True)
        for (event_id,), group in users.group_by("event_id"):
            key = self._price_drop_sent_key(event_id)
            pipe.sadd(key, *group["user_id"].to_list())
            pipe.expire(key, self.settings.state.notification_ttl_s)
        await self._count_marketing(users, pipe)
        await pipe.execute()

    def _price_drop_sent_key(self, event_id: str) -> str:
        """The users a price drop already reached (sent or held for quiet hours)."""
        return keys.price_drop_users(self.settings, event_id)

    async def _price_drops_sent(self, drops: pl.DataFrame, audience: pl.DataFrame) -> pl.Series:
        """Notification ids of these events' wishers that their event already reached: a
        redelivered event must neither notify them again nor count them twice."""
        pairs = (
            drops.select("event_id", "product_id")
            .join(audience.select("product_id", "user_id"), on="product_id")
            .unique(["event_id", "user_id"], maintain_order=True)
        )
        pipe = self.redis.pipeline(transaction=False)
        groups = pairs.partition_by("event_id", as_dict=True)
        for (event_id,), group in groups.items():
            for start in range(0, group.height, 10_000):
                ids = group["user_id"].slice(start, 10_000).to_list()
                pipe.smismember(self._price_drop_sent_key(event_id), ids)
        flags = [bool(f) for chunk in await pipe.execute() for f in chunk]
        ordered = pl.concat([g for g in groups.values()]) if groups else pairs
        sent = ordered.filter(pl.Series(flags, dtype=pl.Boolean))
        return sent.select(
            price_drops.notification_id(pl.col("event_id"), pl.col("user_id"))
        ).to_series()

    async def _price_drop_ranker(self) -> Ranker:
        """The registry's current model (loaded once per version, off the event loop), so a
        deploy or rollback reaches price drops with no restart. If the registry cannot be
        read, the last model loaded (or the shipped default) keeps price drops going."""
        try:
            version = await asyncio.to_thread(Registry(self.settings.models_root).current)
            if version not in self._price_drop_rankers:
                registry = Registry(self.settings.models_root)
                ranker = await asyncio.to_thread(registry.load, version)
                self._price_drop_rankers = {version: ranker}
            return self._price_drop_rankers[version]
        except Exception:  # noqa: BLE001 - ranking must not stop price drops
            log.warning("router: model registry unreadable; ranking with the last model")
            if not self._price_drop_rankers:
                ranker = await asyncio.to_thread(load_ranker)
                self._price_drop_rankers = {ranker.version: ranker}
            return next(iter(self._price_drop_rankers.values()))

    async def _dead_letter_entries(self, lane: str, entries: pl.DataFrame, reason: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for body, accepted_at in entries.select("body", "accepted_at").iter_rows():
            try:
                event = json.loads(body)
            except (TypeError, ValueError):
                event = {"raw": body}
            event = event if isinstance(event, dict) else {"raw": event}
            fields = dead_letter_fields(
                "event", {**event, "_lane": lane, "_accepted_at": accepted_at}, reason
            )
            pipe.xadd(dlq_key(self.settings), fields)
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
        while True:
            try:
                members, rows = await self.retries.take_due(
                    self.settings.topology.batch_max_rows, lane
                )
                if not members:
                    await asyncio.sleep(0.2)
                    continue
                self.counts["retried"] += rows.height
                await self._send(rows, retry_members=members, retry_lane=lane)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: retry batch failed; it comes back after its lease")
                await asyncio.sleep(0.5)

    # --- campaigns -----------------------------------------------------------------------
    async def _run_campaigns(self) -> None:
        """Take due campaigns (leased, like retries) one at a time and fan them out."""
        while True:
            try:
                due = await self.campaigns.take_due(1)
                if not due:
                    await asyncio.sleep(0.5)
                    continue
                for campaign_id in due:
                    try:
                        await self._run_campaign(campaign_id)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.exception(
                            "router: campaign %s fan-out failed",
                            campaign_id,
                            extra={"campaign_id": campaign_id},
                        )
                        await self._campaign_failed(campaign_id, exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: taking due campaigns failed; retrying")
                await asyncio.sleep(1.0)

    async def _campaign_failed(self, campaign_id: str, error: Exception) -> None:
        """A failed fan-out resumes after its lease (Redis or an actor may be back by then);
        one that failed `campaign_max_failures` times is marked failed with its error, so a
        campaign that can never run does not come back forever."""
        try:
            failures = await self.campaigns.record_failure(campaign_id, error)
            if failures >= self.settings.campaigns.max_failures:
                await self.campaigns.give_up(campaign_id)
        except Exception:  # noqa: BLE001 - Redis itself may be what failed
            log.warning("router: could not record campaign %s's failure", campaign_id)
        await asyncio.sleep(1.0)

    async def _run_campaign(self, campaign_id: str) -> None:
        """Plan every shard in the worker pool, keep the global top-k, then stream each
        shard's deliveries from its worker and send them batch by batch. Shards finished
        are recorded, so a resumed campaign (after a crash) only redoes the rest, and
        deliveries already recorded are skipped."""
        spec = await self.campaigns.spec(campaign_id)
        state = await self.campaigns.state(campaign_id)
        if spec is None or state in ("done", "cancelled"):
            await self.redis.zrem(self.campaigns.due_key, campaign_id)
            return

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.campaigns.lease_s / 3)
                await self.campaigns.renew(campaign_id)
                await self.pool.touch()

        keeper = asyncio.create_task(renew())
        try:
            version = await self._handle(fanout_name(0)).model_version.remote()
            version, resumed = await self.campaigns.start(campaign_id, version)
            now = time.time()
            done = await self.campaigns.shards_done(campaign_id)
            todo = [s for s in range(self.settings.topology.shards) if s not in done]
            pool = await self.pool.workers_for(len(todo))
            worker_of = {s: pool[i % len(pool)] for i, s in enumerate(todo)}
            stats = await self.campaigns.variant_stats(
                campaign_id, [v["variant_id"] for v in spec["variants"]]
            )
            snapshots = await asyncio.gather(*[self._shard(s).snapshot.remote() for s in todo])
            plans = await asyncio.gather(
                *[
                    worker_of[s].plan.remote(spec, snap, now, stats, resumed, version)
                    for s, snap in zip(todo, snapshots, strict=True)
                ]
            )
            for shard, (_, counts) in zip(todo, plans, strict=True):
                shard_only = {k: v for k, v in counts.items() if k not in ("selected", "deferred")}
                await self.campaigns.record_plan(campaign_id, shard, shard_only)
            chosen = pl.concat(
                [
                    pl.from_arrow(table).with_columns(shard=pl.lit(shard, dtype=pl.Int32))
                    for shard, (table, _) in zip(todo, plans, strict=True)
                ],
                how="vertical_relaxed",
            )
            chosen = campaigns.top(chosen, spec.get("audience_limit"))
            if not resumed:  # a resumed campaign re-plans only who is left
                await self.campaigns.record_selection(
                    campaign_id, chosen.height, int(chosen["send_after"].is_not_null().sum())
                )
            accepted_at = now  # a campaign's deliveries count their latency from its start
            for shard, snap in zip(todo, snapshots, strict=True):
                mine = chosen.filter(pl.col("shard") == shard).drop("shard")
                streamed = await self._stream_shard(
                    campaign_id, spec, worker_of[shard], snap, mine, accepted_at, version
                )
                if not streamed:
                    return  # cancelled
                await self.campaigns.shard_done(campaign_id, shard)
            await self.campaigns.finish(campaign_id)
            self.counts["campaigns"] += 1
        finally:
            keeper.cancel()

    async def _stream_shard(
        self,
        campaign_id: str,
        spec: dict,
        worker: ray.actor.ActorHandle,
        snapshot: dict,
        chosen: pl.DataFrame,
        accepted_at: float,
        version: str,
    ) -> bool:
        """Send one shard's deliveries as its worker streams them; False when cancelled."""
        if chosen.height == 0:
            return True
        stream = worker.render.options(
            num_returns="streaming",
            _generator_backpressure_num_objects=self.settings.fanout.in_flight,
        ).remote(spec, snapshot, chosen.to_arrow(), accepted_at, version)
        async for ref in stream:
            if await self.campaigns.state(campaign_id) == "cancelled":
                return False
            await self._campaign_batch(campaign_id, pl.from_arrow(await ref))
        return True

    async def _hold_or_send(self, batch: pl.DataFrame) -> None:
        """Marketing deliveries still in their user's quiet hours (`send_after` ahead) go
        into the marketing retry set, due when the window ends; the rest to the senders."""
        held = (pl.col("send_after") > time.time()).fill_null(False)
        later, now = batch.filter(held), batch.filter(~held)
        if later.height:
            pipe = self.redis.pipeline(transaction=False)
            self.retries.defer(
                later.select(*_DELIVERY_COLUMNS, "send_after").with_columns(attempt=pl.lit(0)),
                pipe,
            )
            await pipe.execute()
        if now.height:
            await self._send(now.select(_DELIVERY_COLUMNS).with_columns(attempt=pl.lit(0)))

    async def _count_marketing(self, users: pl.DataFrame, pipe) -> None:
        """Queue +1 on each user's marketing count of their `local_day` (the frequency cap
        campaigns and price drops share) on `pipe`: one script call per day."""
        for (day,), group in users.group_by("local_day"):
            # an async Script queues on a pipeline only when awaited
            await self._count_sent_today(
                keys=[freq_key(self.settings, day)],
                args=[3 * 86_400, *group["user_id"].to_list()],
                client=pipe,
            )

    async def _campaign_batch(self, campaign_id: str, batch: pl.DataFrame) -> None:
        """Record as queued (deferred ones too) → hold the quiet-hours ones in the marketing
        retry set until their window ends → send the rest → count the users for the
        frequency cap, the campaign's dedup set and the bandit's per-variant sends."""
        batch = batch.filter(~(await self.state.finished(batch)))
        if batch.height == 0:
            return
        users = batch.unique("notification_id", keep="first", maintain_order=True)
        meta = campaigns.meta(batch, campaign_id)
        await self.state.record_routed(batch.select(_DELIVERY_COLUMNS), pl.DataFrame(), meta)
        await self._hold_or_send(batch)
        pipe = self.redis.pipeline(transaction=False)
        sent_key = sent_users_key(self.settings, campaign_id)
        pipe.sadd(sent_key, *users["user_id"].to_list())
        pipe.expire(sent_key, self.settings.state.notification_ttl_s)
        await self._count_marketing(users, pipe)
        for variant, n in users.group_by("variant_id").len().iter_rows():
            pipe.hincrby(self.campaigns.key(campaign_id), f"variant:{variant}:sent", n)
        await pipe.execute()

    async def _drop_cancelled(
        self, deliveries: pl.DataFrame, retry_members: list | None, retry_lane: str
    ) -> pl.DataFrame:
        """Campaign deliveries of a cancelled campaign are not sent: recorded `cancelled`,
        counted, and (when they came from the retry set) removed from it."""
        campaign = (
            pl.when(pl.col("notification_id").str.contains(SEPARATOR, literal=True))
            .then(pl.col("notification_id").str.split(SEPARATOR).list.first())
            .alias("campaign_id")
        )
        ids = deliveries.select(campaign)["campaign_id"].drop_nulls().unique().to_list()
        cancelled = await self.campaigns.cancelled(ids)
        if not cancelled:
            return deliveries
        tagged = deliveries.with_columns(campaign)
        dropped = tagged.filter(pl.col("campaign_id").is_in(list(cancelled)))
        pipe = self.redis.pipeline(transaction=True)
        self.state.record_results(
            dropped.with_columns(
                outcome=pl.lit("failed"),
                error=pl.lit("campaign cancelled"),
                acked_at=pl.lit(None, dtype=pl.Float64),
                attempts=pl.col("attempt"),
            ),
            pipe,
            status="cancelled",
        )
        for (cid,), group in dropped.group_by("campaign_id"):
            pipe.hincrby(self.campaigns.key(cid), "cancelled", group.height)
        if retry_members and deliveries.height == dropped.height:
            self.retries.done(retry_members, pipe, retry_lane)
        await pipe.execute()
        return tagged.filter(~pl.col("campaign_id").is_in(list(cancelled))).drop("campaign_id")

    def _count_campaigns(self, answered: pl.DataFrame, pipe) -> None:
        """Per campaign: deliveries sent (first attempts), delivered, and failed for good."""
        rows = answered.filter(pl.col("notification_id").str.contains(SEPARATOR, literal=True))
        if rows.height == 0:
            return
        out_of_attempts = (pl.col("outcome") == "retry") & (
            pl.col("attempts") >= self.settings.retry.max_attempts
        )
        counts = rows.group_by(
            pl.col("notification_id").str.split(SEPARATOR).list.first().alias("campaign_id")
        ).agg(
            sent=(pl.col("attempt") == 0).sum(),
            delivered=(pl.col("outcome") == "delivered").sum(),
            failed=(pl.col("outcome").is_in(["failed", "dead_token"]) | out_of_attempts).sum(),
        )
        for row in counts.iter_rows(named=True):
            cid = row.pop("campaign_id")
            self.campaigns.count(pipe, cid, **row)

    async def _shrink_pool(self) -> None:
        """Router 0 removes the fan-out workers grown for campaigns once idle."""
        while True:
            await asyncio.sleep(min(self.settings.fanout.idle_s / 4, 30.0))
            try:
                await self.pool.shrink_if_idle()
            except Exception:  # noqa: BLE001 - next round tries again
                log.exception("router: shrinking the fan-out pool failed; retrying")

    async def _scale_senders(self) -> None:
        """Router 0 sizes each lane's push senders to its backlog."""
        while True:
            await asyncio.sleep(self.settings.senders.scale_interval_s)
            try:
                await self.senders.scale()
            except Exception:  # noqa: BLE001 - next round tries again
                log.exception("router: sizing the sender pool failed; retrying")

    async def _export_feedback(self) -> None:
        """Move `POST /v1/feedback` actions from the Redis stream to the Parquet feedback
        log, a batch at a time. The stream position is saved after the file is written, so a
        crash in between writes a batch twice — harmless, training counts any action once."""
        position_key = keys.feedback_exported(self.settings)
        stream = keys.feedback(self.settings)
        while True:
            try:
                last = (await self.redis.get(position_key) or b"0-0").decode()
                entries = await self.redis.xrange(stream, min=f"({last}", count=10_000)
                if not entries:
                    await asyncio.sleep(self.settings.feedback.export_s)
                    continue
                rows = pl.DataFrame(
                    [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
                ).select(
                    *[
                        pl.col(name).cast(dtype)
                        for name, dtype in feedback_log.ACTION_SCHEMA.items()
                    ]
                )
                await asyncio.to_thread(
                    feedback_log.write, rows, self.settings.feedback_root, "actions", "at"
                )
                await self.redis.set(position_key, entries[-1][0])
                self.counts["feedback_exported"] += rows.height
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: feedback export failed; retrying")
                await asyncio.sleep(5)

    # --- sending and recording -----------------------------------------------------------
    async def _audience(self, user_ids: list[str]) -> pl.DataFrame:
        """One lookup call per shard that owns any of these users, all in parallel."""
        if not user_ids:
            return pl.DataFrame()
        owners = shard_of(user_ids, self.settings.topology.shards)
        ids = np.asarray(user_ids, dtype=object)
        calls = [
            self._shard(int(shard)).lookup.remote(ids[owners == shard].tolist())
            for shard in np.unique(owners)
        ]
        tables: list[pa.Table] = await asyncio.gather(*calls)
        return pl.concat([pl.from_arrow(t) for t in tables], how="vertical_relaxed")

    async def _wishers(self, product_ids: list[str]) -> pl.DataFrame:
        """Who wishes for these products, with devices and preferences: one call per shard
        (every shard may hold wishers), all in parallel, each answering with columns. The
        ranker's user columns (zone, country, attributes, activity, platforms, affinities)
        come from the snapshots of the shards that hold wishers (cached per shard version,
        read zero-copy), joined onto the wisher rows."""
        shards = range(self.settings.topology.shards)
        calls = [self._shard(shard).wishers.remote(product_ids) for shard in shards]
        tables: list[pa.Table] = await asyncio.gather(*calls)
        holding = [s for s in shards if tables[s].num_rows]
        if not holding:
            return pl.from_arrow(tables[0])
        snapshots = await asyncio.gather(*[self._shard(s).snapshot.remote() for s in holding])
        profiles = await asyncio.gather(*[snapshot["users"] for snapshot in snapshots])
        parts = []
        for shard, users in zip(holding, profiles, strict=True):
            wished = pl.from_arrow(tables[shard])
            users = pl.from_arrow(users)
            columns = [c for c in _RANKING_COLUMNS if c in users.columns]
            columns += [c for c in users.columns if c.startswith("affinity_")]
            ranking = users.select("user_id", *columns).join(
                wished.select("user_id").unique(), on="user_id", how="semi"
            )
            if isinstance(ranking.schema.get("attributes"), pl.Struct):
                # each shard infers its own struct; the features read JSON text just as well
                ranking = ranking.with_columns(pl.col("attributes").struct.json_encode())
            parts.append(wished.join(ranking, on="user_id", how="left"))
        return pl.concat(parts, how="diagonal_relaxed")

    async def _send(
        self,
        deliveries: pl.DataFrame,
        retry_members: list | None = None,
        retry_lane: str = "transactional",
    ) -> None:
        """One call per (channel, lane) sender; then every outcome recorded in one Redis
        pipeline. Each row goes to its own lane's sender, retries included.

        A delivery appears at most once per call (its furthest attempt): two copies would
        each join both answers, and every retry round would then double its chains."""
        deliveries = deliveries.sort("attempt", descending=True).unique(
            subset="delivery_id", keep="first", maintain_order=True
        )
        if deliveries.height and (deliveries["lane"] == "marketing").any():
            deliveries = await self._drop_cancelled(deliveries, retry_members, retry_lane)
        if deliveries.height == 0:
            return
        sizes = await self.senders.sizes()
        parts = []  # ((channel, lane, replica), rows, replicas sharing the lane)
        lanes = deliveries.partition_by("channel", "lane", as_dict=True)
        for (channel, lane), rows in lanes.items():
            replicas = sizes[lane] if channel in PUSH_CHANNELS else 1
            step = math.ceil(rows.height / replicas)
            parts += [
                ((channel, lane, r), rows.slice(r * step, step), replicas)
                for r in range(replicas)
                if r * step < rows.height
            ]
        calls = [
            self.senders.handle(*replica).send.remote(
                part.select(_DELIVERY_COLUMNS).to_arrow(), replicas
            )
            for replica, part, replicas in parts
        ]
        # One sender failing (its actor restarting, its Redis connection gone stale) must
        # not lose the answers of the others: those pushes are out, and re-sending them with
        # the whole batch would put them on the phones twice. Its rows go to the retry set.
        results = await asyncio.gather(*calls, return_exceptions=True)
        answered = pl.concat(
            [
                part.join(pl.from_arrow(result), on="delivery_id", how="inner")
                if not isinstance(result, BaseException)
                else self._unanswered(replica, part, result)
                for (replica, part, _), result in zip(parts, results, strict=True)
            ],
            how="vertical_relaxed",
        ).with_columns(attempts=pl.col("attempt") + 1)
        pipe = self.redis.pipeline(transaction=True)
        self._record(answered, pipe)
        if retry_members:
            self.retries.done(retry_members, pipe, retry_lane)
        await pipe.execute()
        await self._deactivate_dead(answered.filter(pl.col("outcome") == "dead_token"))
        if self.settings.fallback.webhook_url:
            # The webhook fallback is for order updates, never for marketing.
            await self._fall_back(answered.filter(pl.col("lane") == "transactional"))

    def _unanswered(
        self, replica: tuple[str, str, int], part: pl.DataFrame, error: BaseException
    ) -> pl.DataFrame:
        """A sender call that failed as a whole: every row of it is to be retried. The
        handle is looked up afresh next time (a removed replica may be started again)."""
        if isinstance(error, asyncio.CancelledError):
            raise error
        self.senders.forget(*replica)
        name = sender_name(*replica)
        log.warning("router: %s failed for %d rows: %r", name, part.height, error)
        self.counts["sender_call_failed"] += 1
        return part.with_columns(
            outcome=pl.lit("retry"),
            error=pl.lit(f"sender call failed: {type(error).__name__}"),
            retry_after_s=pl.lit(None, dtype=pl.Float64),
            acked_at=pl.lit(time.time()),
        )

    async def _fall_back(self, answered: pl.DataFrame) -> None:
        """Order updates whose every push is now final and none delivered go to the webhook
        (when the user allows email). Looks at the whole notification in the delivery state,
        since its pushes may have settled in different batches."""
        exhausted = (pl.col("outcome") == "retry") & (
            pl.col("attempts") >= self.settings.retry.max_attempts
        )
        gave_up = answered.filter(
            pl.col("channel").is_in(PUSH_CHANNELS)
            & (pl.col("outcome").is_in(["dead_token", "failed"]) | exhausted)
        )
        if gave_up.height == 0:
            return
        candidates = gave_up.unique(subset="notification_id")
        pipe = self.redis.pipeline(transaction=False)
        for nid in candidates["notification_id"]:
            pipe.hgetall(self.state.key(nid))
        records = await pipe.execute()
        hopeless = [
            not any(
                name.startswith(b"d:")
                and name not in (b"d:inbox", b"d:webhook")
                and json.loads(value)["status"] in ("queued", "retrying", "delivered")
                for name, value in fields.items()
            )
            and b"d:webhook" not in fields
            for fields in records
        ]
        candidates = candidates.filter(pl.Series(hopeless))
        if candidates.height == 0:
            return
        audience = await self._audience(candidates["user_id"].unique().to_list())
        allowed = audience.filter(pl.col("email")).select("user_id").unique()
        fallback = order_updates.as_fallback(candidates.join(allowed, on="user_id", how="semi"))
        fallback = fallback.with_columns(
            delivery_id=pl.col("notification_id") + "|webhook", attempt=pl.lit(0)
        ).select(*_DELIVERY_COLUMNS, "attempt")
        await self.state.record_routed(fallback, pl.DataFrame(), pl.DataFrame())
        self.counts["fallbacks"] += fallback.height
        await self._send(fallback)

    def _record(self, answered: pl.DataFrame, pipe) -> None:
        """Final outcomes as they are; retryable ones rescheduled until attempts run out,
        then dead-lettered like outcomes that can never succeed."""
        out_of_attempts = pl.col("attempts") >= self.settings.retry.max_attempts
        to_retry = answered.filter((pl.col("outcome") == "retry") & ~out_of_attempts)
        hopeless = answered.filter(
            (pl.col("outcome") == "failed") | ((pl.col("outcome") == "retry") & out_of_attempts)
        )
        settled = answered.filter(pl.col("outcome").is_in(["delivered", "dead_token"]))
        self.state.record_results(settled, pipe)
        self.state.record_results(to_retry, pipe)
        self.state.record_results(hopeless, pipe, status="dead_lettered")
        if to_retry.height:
            rows = to_retry.select(
                *_DELIVERY_COLUMNS, pl.col("attempts").alias("attempt"), "retry_after_s"
            )
            self.retries.schedule(rows, pipe)
        for row in hopeless.select(*_DELIVERY_COLUMNS, "attempts", "error").iter_rows(named=True):
            reason = row.pop("error") or "failed"
            pipe.xadd(dlq_key(self.settings), dead_letter_fields("delivery", row, reason))
            log.warning(
                "delivery dead-lettered",
                extra={
                    "notification_id": row["notification_id"],
                    "device_id": row["device_id"],
                    "channel": row["channel"],
                    "attempts": row["attempts"],
                    "reason": reason,
                },
            )
        self._count_campaigns(answered, pipe)
        metrics.record_answers(answered)
        metrics.count_dead_letters("delivery", hopeless.height)
        self.counts["delivered"] += int((answered["outcome"] == "delivered").sum())
        self.counts["retry_scheduled"] += to_retry.height
        self.counts["dead_lettered"] += hopeless.height
        self.counts["dead_tokens"] += int((answered["outcome"] == "dead_token").sum())

    async def _deactivate_dead(self, dead: pl.DataFrame) -> None:
        """A token the provider says is gone is switched off in its shard at once."""
        if dead.height == 0:
            return
        log.info(
            "dead tokens deactivated",
            extra={
                "device_ids": dead["device_id"].to_list(),
                "notification_ids": dead["notification_id"].to_list(),
            },
        )
        owners = shard_of(dead["user_id"].to_list(), self.settings.topology.shards)
        device_ids = np.asarray(dead["device_id"].to_list(), dtype=object)
        await asyncio.gather(
            *[
                self._shard(int(s)).deactivate_devices.remote(device_ids[owners == s].tolist())
                for s in np.unique(owners)
            ]
        )

    def _shard(self, index: int) -> ray.actor.ActorHandle:
        return self._handle(shard_name(index))

    def _handle(self, name: str) -> ray.actor.ActorHandle:
        """Named-actor lookups go to the GCS; a handle stays valid across actor restarts."""
        if name not in self._handles:
            self._handles[name] = ray.get_actor(name, namespace=self.settings.topology.namespace)
        return self._handles[name]

    @staticmethod
    def _frame(entries: pl.DataFrame, lane: str) -> pl.DataFrame:
        events = entries["body"].str.json_decode(_EVENT_DTYPE).struct.unnest()
        return pl.concat([entries, events], how="horizontal").with_columns(
            notification_id=pl.col("event_id"), lane=pl.lit(lane)
        )
