"""Recording what the senders answered, part of the delivery step (`actors.flows.delivery`).

Every answer of a send lands in the caller's pipeline: final outcomes as they are,
retryable ones rescheduled with backoff until `retry_max_attempts` run out and then
dead-lettered like outcomes that can never succeed, per-campaign counters (sent,
delivered, failed) and the metrics. Nothing here talks to Redis by itself; the log entry
behind a batch is acked only after its outcomes are recorded. On one Redis the outcomes
commit together; on a cluster, what a redelivery relies on is written first (`record`).
Retries and dead letters keep a delivery's device id, never its token (`UNSTORED`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl
import redis.asyncio as aioredis

from actors.flows.base import Flow
from cluster import metrics
from cluster.state.campaigns import CAMPAIGN_ID, CampaignStore
from cluster.state.dead_letters import queue_dead_letter
from cluster.state.deliveries import DeliveryState
from cluster.state.retries import UNSTORED, RetrySchedule
from cluster.tables.deliveries import DELIVERIES

log = logging.getLogger("herald.router")

# What a dead-lettered delivery keeps: the row without its token.
_KEPT = [name for name in DELIVERIES.names if name not in UNSTORED]


@dataclass(eq=False)
class Outcomes(Flow):
    state: DeliveryState
    retries: RetrySchedule
    campaigns: CampaignStore

    def record(
        self,
        answered: pl.DataFrame,
        pipe: aioredis.client.Pipeline,
        first: aioredis.client.Pipeline | None = None,
    ) -> None:
        """Queue every answered row's outcome on `pipe`: final outcomes as they are,
        retryable ones rescheduled until attempts run out, then dead-lettered like
        outcomes that can never succeed.

        The retries and dead letters go on `first` when given, a pipeline the caller runs
        before `pipe`. On a Redis Cluster a pipeline is no transaction: each master runs
        its share, and one that is down fails only its own. A status `retrying` written
        without its retry-set member (`{retry:<lane>}` lives on one master) would make the
        redelivered log entry skip a delivery no one will retry; written first, the worst
        a half-failed batch leaves is a delivery retried and re-sent (at least once)."""
        first = pipe if first is None else first
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
            rows = to_retry.select(*_KEPT, pl.col("attempts").alias("attempt"), "retry_after_s")
            self.retries.schedule(rows, first)
        self._dead_letter(hopeless, first)
        self._count_campaigns(answered, pipe)
        metrics.record_answers(answered)
        metrics.count_dead_letters("delivery", hopeless.height)
        self.counts["delivered"] += int((answered["outcome"] == "delivered").sum())
        self.counts["retry_scheduled"] += to_retry.height
        self.counts["dead_lettered"] += hopeless.height
        self.counts["dead_tokens"] += int((answered["outcome"] == "dead_token").sum())

    def _dead_letter(self, hopeless: pl.DataFrame, pipe: aioredis.client.Pipeline) -> None:
        """Each hopeless delivery to the dead-letter stream with its reason, and a log line
        an operator can find by notification id (rare: a row each is affordable here)."""
        for row in hopeless.select(*_KEPT, "attempts", "error").iter_rows(named=True):
            reason = row.pop("error") or "failed"
            queue_dead_letter(self.settings, pipe, "delivery", row, reason)
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

    def _count_campaigns(self, answered: pl.DataFrame, pipe: aioredis.client.Pipeline) -> None:
        """Per campaign: deliveries sent (first attempts), delivered, and failed for good."""
        rows = answered.with_columns(CAMPAIGN_ID).filter(pl.col("campaign_id").is_not_null())
        if rows.height == 0:
            return
        out_of_attempts = (pl.col("outcome") == "retry") & (
            pl.col("attempts") >= self.settings.retry.max_attempts
        )
        counts = rows.group_by("campaign_id").agg(
            sent=(pl.col("attempt") == 0).sum(),
            delivered=(pl.col("outcome") == "delivered").sum(),
            failed=(pl.col("outcome").is_in(["failed", "dead_token"]) | out_of_attempts).sum(),
        )
        for row in counts.iter_rows(named=True):
            self.campaigns.count(pipe, row.pop("campaign_id"), **row)
