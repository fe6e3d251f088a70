"""Log entries no router can process: dead-lettered as events, then acked.

A batch's unknown or undecodable entries, and an entry that failed routing
`poison_attempts` times, must not block the entries behind them: they go to the
dead-letter stream with their lane and acceptance time (so a replay puts them back as
they came), and leave the log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import polars as pl
import redis.asyncio as aioredis

from actors.flows.base import Flow
from cluster import metrics
from cluster.state.dead_letters import queue_dead_letter

log = logging.getLogger("herald.router")


@dataclass(eq=False)
class Unroutable(Flow):
    redis: aioredis.Redis
    log: Any  # the router's event log (`cluster.eventlog`)

    async def put(
        self, lane: str, entries: pl.DataFrame, reason: str, partition: int | None = None
    ) -> None:
        """Dead-letter `entries` (one pipeline), then ack them."""
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
