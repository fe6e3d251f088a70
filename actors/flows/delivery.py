"""The delivery step: the one way every lane and flow hands deliveries to the senders.

Order updates, price drops, campaigns, due retries and the webhook fallback all end here,
and the order inside is what makes delivery at-least-once: record as queued → hold the
quiet-hours ones (marketing) in the marketing retry set until their window ends → send →
record every outcome in one Redis pipeline (retries scheduled with backoff, the hopeless
dead-lettered, campaign counters) → deactivate dead tokens in their shards → fall back to
the webhook for order updates no push reached. The caller acks its log entries only after
this returns, so a crash anywhere before means the entry is read again, and deliveries
already final in the delivery state are skipped.

Lanes stay apart all the way: each row goes to its own lane's sender per channel
(`sender_name(channel, lane, replica)`), retries included, so a big marketing fan-out never
delays an order update. A lane's push rows are split over its sender replicas
(`actors.sender_pool`), each told its share of the lane's rate ceiling.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import redis.asyncio as aioredis

from actors.flows.base import Flow
from actors.flows.limits import Limits
from actors.flows.outcomes import Outcomes
from actors.flows.shards import Shards
from actors.flows.tokens import record_gone, with_tokens
from actors.sender_pool import SenderPool
from cluster import metrics
from cluster.names import sender_name
from cluster.state.campaigns import CAMPAIGN_ID, CampaignStore
from cluster.state.clients import atomic_pipeline
from cluster.state.deliveries import DeliveryState
from cluster.state.frequency import FrequencyCounters
from cluster.state.retries import RetrySchedule
from cluster.state.templates import TemplateCache
from cluster.tables.deliveries import DELIVERIES, conform
from cluster.vocabulary import PUSH_CHANNELS
from pipelines import deadlines, order_updates
from pipelines.templates import Template

log = logging.getLogger("herald.router")

DELIVERY_COLUMNS = DELIVERIES.names

# One sender call: ((channel, lane, replica), its rows, replicas sharing the lane).
Part = tuple[tuple[str, str, int], pl.DataFrame, int]
# What a flow adds, in the batch's own pipeline, for the users a batch reached.
Reached = Callable[[pl.DataFrame, aioredis.client.Pipeline], None]
# A push's default time to live: seconds, or an Int64 expression per row (`pipelines.deadlines`).
Ttl = pl.Expr | int | None


@dataclass(eq=False)
class DeliveryStep(Flow):
    redis: aioredis.Redis
    senders: SenderPool
    shards: Shards

    def __post_init__(self) -> None:
        self.state = DeliveryState(self.settings, self.redis)
        self.retries = RetrySchedule(self.settings, self.redis)
        self.campaigns = CampaignStore(self.settings, self.redis)
        self.frequency = FrequencyCounters(self.settings, self.redis)
        self.outcomes = Outcomes(
            self.settings, self.counts, self.state, self.retries, self.campaigns
        )
        self.limits = Limits(self.settings, self.counts, redis=self.redis, state=self.state)

    async def deliver_transactional(
        self,
        deliveries: pl.DataFrame,
        suppressed: pl.DataFrame,
        meta: pl.DataFrame,
        redelivered: bool,
        ttl_s: Ttl = None,
    ) -> None:
        """A transactional batch (order updates, requested notifications): pushes get
        their kind's default `ttl_s` unless the event gave one; on a redelivery,
        deliveries already final (or owned by the retry schedule) are left out → record
        the notifications' `meta`, the suppressed with their reason and the deliveries as
        queued, pushes over the user's limit a minute as `rate_limited` → send."""
        deliveries = deadlines.with_default_ttl(deliveries, ttl_s)
        if redelivered and deliveries.height:
            deliveries = deliveries.filter(~(await self.state.finished(deliveries)))
        deliveries, limited = await self.limits.over_limit(deliveries)
        await self.state.record_routed(deliveries, suppressed, meta)
        metrics.record_suppressed(suppressed, "transactional")
        if limited.height:
            pipe = self.redis.pipeline(transaction=False)
            limit = self.settings.delivery.user_push_limit_per_min
            self.limits.drop(
                limited.with_columns(attempt=pl.lit(0)),
                "rate_limited",
                pipe,
                f"over {limit} pushes a minute for this user",
            )
            await pipe.execute()
        await self.send(deliveries.with_columns(attempt=pl.lit(0)))

    async def deliver_marketing(
        self,
        batch: pl.DataFrame,
        meta: Callable[[pl.DataFrame], pl.DataFrame],
        reached: Reached,
        skip_finished: bool = True,
        ttl_s: Ttl = None,
    ) -> None:
        """One marketing batch (a price drop's, a campaign's; a user's rows never split
        across two): record as queued, deferred ones too, with the notifications' `meta`
        → hold the quiet-hours ones → send the rest → +1 on each user's marketing count
        of their local day (the frequency cap campaigns and price drops share) and the
        flow's own record of whom it `reached`, in one transaction. With
        `skip_finished`, deliveries already final (or owned by the retry schedule) are
        left out first — a redelivered event or a resumed campaign. Pushes get the flow's
        default `ttl_s` (a price drop's hours, a campaign's `ends_at`) unless they say."""
        batch = deadlines.with_default_ttl(batch, ttl_s)
        if batch.height == 0:
            return
        fresh = batch.filter(~(await self.state.finished(batch))) if skip_finished else batch
        if fresh.height:
            rows = fresh.select(DELIVERY_COLUMNS)
            await self.state.record_routed(rows, pl.DataFrame(), meta(fresh))
            await self._hold_or_send(fresh)
        # Every user of the batch counts as reached, those whose deliveries were already
        # final too: a resumed run only meets users the first run never recorded, so a
        # crash between their sends and this record must not leave them unreached for good.
        users = batch.unique("notification_id", keep="first", maintain_order=True)
        pipe = atomic_pipeline(self.redis)
        await self.frequency.count(users, pipe)
        reached(users, pipe)
        await pipe.execute()

    async def _hold_or_send(self, batch: pl.DataFrame) -> None:
        """Marketing deliveries still in their user's quiet hours (`send_after` ahead) go
        into the marketing retry set, due when the window ends; the rest to the senders."""
        held = (pl.col("send_after") > time.time()).fill_null(False)
        too_late = deadlines.held_past_deadline(pl.col("send_after"))
        later, now = batch.filter(held & ~too_late), batch.filter(~held)
        expired = batch.filter(held & too_late).with_columns(attempt=pl.lit(0))
        if later.height or expired.height:
            pipe = self.redis.pipeline(transaction=False)
            self.limits.drop(expired, "expired", pipe, "quiet hours end after its ttl_s")
            self.retries.defer(
                later.select(*DELIVERY_COLUMNS, "send_after").with_columns(attempt=pl.lit(0)),
                pipe,
            )
            await pipe.execute()
        if now.height:
            await self.send(now.select(DELIVERY_COLUMNS).with_columns(attempt=pl.lit(0)))

    async def send(
        self,
        deliveries: pl.DataFrame,
        retry_members: list | None = None,
        retry_lane: str = "transactional",
    ) -> None:
        """One call per (channel, lane, replica) sender, all in parallel; then every
        outcome recorded in one Redis pipeline — with the retry members the rows came
        from, when they came from the retry set, so a retry leaves the set exactly when
        its next outcome is recorded.

        A delivery appears at most once per call (its furthest attempt): two copies would
        each join both answers, and every retry round would then double its chains. Rows
        from the retry set carry no token: it is looked up again (`actors.flows.tokens`)."""
        # Retry rows come back from JSON: optional columns untyped, or missing altogether.
        deliveries = (
            conform(deliveries)
            .sort("attempt", descending=True)
            .unique(subset="delivery_id", keep="first", maintain_order=True)
        )
        if deliveries.height and (deliveries["lane"] == "marketing").any():
            deliveries = await self._drop_cancelled(deliveries, retry_members, retry_lane)
        deliveries, gone = await with_tokens(self.shards, deliveries)
        deliveries = await self._drop_unsendable(deliveries, retry_members, retry_lane, gone)
        if deliveries.height == 0:
            return
        answered = await self._call(self._split(deliveries, await self.senders.sizes()))
        first, pipe = self.redis.pipeline(transaction=False), atomic_pipeline(self.redis)
        self.outcomes.record(answered, pipe, first)  # retries and dead letters go first
        if len(first):
            await first.execute()
        if retry_members:
            self.retries.done(retry_members, pipe, retry_lane)
        await pipe.execute()
        await self.shards.deactivate(answered.filter(pl.col("outcome") == "dead_token"))
        if self.settings.fallback.webhook_url:
            # The webhook fallback is for order updates, never for marketing.
            await self._fall_back(answered.filter(pl.col("lane") == "transactional"))

    async def _drop_unsendable(
        self,
        deliveries: pl.DataFrame,
        retry_members: list | None,
        retry_lane: str,
        gone: pl.DataFrame,
    ) -> pl.DataFrame:
        """Leave out pushes past their deadline, and retried order updates a newer update
        has overtaken (`actors.flows.limits`); recorded with their reason, as are the `gone`
        rows (their device is no more). When nothing is left, the retry members leave the
        set here (no outcome will be recorded)."""
        kept, dropped = deliveries, {"expired": deliveries.clear()}
        if deliveries.height:
            kept, dropped = await self.limits.unsendable(deliveries, retry_members is not None)
        if gone.height == 0 and all(rows.height == 0 for rows in dropped.values()):
            return kept
        pipe = atomic_pipeline(self.redis)
        record_gone(self.state, self.counts, gone, pipe)
        self.limits.drop(dropped["expired"], "expired", pipe, "past its ttl_s")
        if "superseded" in dropped:
            self.limits.drop(
                dropped["superseded"], "superseded", pipe, "a newer update of the order was sent"
            )
        if retry_members and kept.height == 0:
            self.retries.done(retry_members, pipe, retry_lane)
        await pipe.execute()
        return kept

    @staticmethod
    def _split(deliveries: pl.DataFrame, sizes: dict[str, int]) -> list[Part]:
        """Rows per (channel, lane), a push lane's spread evenly over its replicas."""
        parts: list[Part] = []
        for (channel, lane), rows in deliveries.partition_by(
            "channel", "lane", as_dict=True
        ).items():
            replicas = sizes[lane] if channel in PUSH_CHANNELS else 1
            step = math.ceil(rows.height / replicas)
            parts += [
                ((channel, lane, r), rows.slice(r * step, step), replicas)
                for r in range(replicas)
                if r * step < rows.height
            ]
        return parts

    async def _call(self, parts: list[Part]) -> pl.DataFrame:
        """Every part's rows joined with their answers, `attempts` counting this one.

        One sender failing (its actor restarting, its Redis connection gone stale) must
        not lose the answers of the others: those pushes are out, and re-sending them with
        the whole batch would put them on the phones twice. Its rows go to the retry set."""
        calls = [
            self.senders.handle(*replica).send.remote(
                part.select(DELIVERY_COLUMNS).to_arrow(), replicas
            )
            for replica, part, replicas in parts
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return pl.concat(
            [
                part.join(pl.from_arrow(result), on="delivery_id", how="inner")
                if not isinstance(result, BaseException)
                else self._unanswered(replica, part, result)
                for (replica, part, _), result in zip(parts, results, strict=True)
            ],
            how="vertical_relaxed",
        ).with_columns(attempts=pl.col("attempt") + 1)

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

    async def _drop_cancelled(
        self, deliveries: pl.DataFrame, retry_members: list | None, retry_lane: str
    ) -> pl.DataFrame:
        """Campaign deliveries of a cancelled campaign are not sent: recorded `cancelled`,
        counted, and (when they came from the retry set) removed from it."""
        ids = deliveries.select(CAMPAIGN_ID)["campaign_id"].drop_nulls().unique().to_list()
        cancelled = await self.campaigns.cancelled(ids)
        if not cancelled:
            return deliveries
        tagged = deliveries.with_columns(CAMPAIGN_ID)
        dropped = tagged.filter(pl.col("campaign_id").is_in(list(cancelled)))
        pipe = atomic_pipeline(self.redis)
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
            self.campaigns.count(pipe, cid, cancelled=group.height)
        if retry_members and deliveries.height == dropped.height:
            self.retries.done(retry_members, pipe, retry_lane)
        await pipe.execute()
        return tagged.filter(~pl.col("campaign_id").is_in(list(cancelled))).drop("campaign_id")

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
        hopeless = await self.state.without_live_push(candidates["notification_id"].to_list())
        candidates = candidates.filter(pl.Series(hopeless, dtype=pl.Boolean))
        if candidates.height == 0:
            return
        audience = await self.shards.audience(candidates["user_id"].unique().to_list())
        allowed = audience.filter(pl.col("email")).select("user_id").unique()
        fallback = order_updates.as_fallback(candidates.join(allowed, on="user_id", how="semi"))
        fallback = fallback.with_columns(
            delivery_id=pl.col("notification_id") + "|webhook", attempt=pl.lit(0)
        ).select(*DELIVERY_COLUMNS, "attempt")
        await self.state.record_routed(fallback, pl.DataFrame(), pl.DataFrame())
        self.counts["fallbacks"] += fallback.height
        await self.send(fallback)


@dataclass(eq=False)
class TransactionalFlow(Flow):
    """What the transactional flows (order updates, requested notifications) are made
    of: the shard calls, this delivery step and the router's template cache (one for all
    flows, so each batch renders from one snapshot of the shop's templates)."""

    shards: Shards
    delivery: DeliveryStep
    templates: TemplateCache[Template]
