"""EventRouter: reads batches from the event log, plans deliveries, sends, records, acks.

Each router runs several read loops per lane, so while one batch waits on the providers the
next is already being planned. The order inside a loop is what makes delivery at-least-once:
record as queued → send → record outcomes → XACK. A crash anywhere before the XACK leaves
the entry pending; it is read again (own pending first after a restart, XAUTOCLAIM by a
peer otherwise) and deliveries already final in the delivery state are skipped.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import polars as pl
import pyarrow as pa
import ray

from cluster.delivery_state import DeliveryState
from cluster.event_log import LANES, RedisEventLog
from cluster.names import sender_name, shard_name
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from pipelines import order_updates

log = logging.getLogger("herald.router")

# The event fields routers read; anything else an event carries stays in the log.
_EVENT_DTYPE = pl.Struct(
    {
        "event_id": pl.String,
        "type": pl.String,
        "user_id": pl.String,
        "order_id": pl.String,
        "status": pl.String,
    }
)


class EventRouter:
    """Plain class; `cluster.bootstrap` wraps it with `ray.remote` and its options."""

    def __init__(self, settings: HeraldSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.log = RedisEventLog(settings)
        self.state = DeliveryState(settings, self.log.redis)
        self._tasks: list[asyncio.Task] = []
        self._handles: dict[str, ray.actor.ActorHandle] = {}
        self.processed = 0
        self.sent = 0
        # Ray runs an async actor's __init__ inside its event loop: the loops start here, so
        # an actor Ray restarts after a crash resumes reading without anyone calling it.
        self._startup = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        await self.log.ensure_groups()
        for lane in LANES:
            for loop in range(self.settings.router_loops):
                consumer = f"router-{self.index}-{lane}-{loop}"
                self._tasks.append(asyncio.create_task(self._run(lane, consumer)))

    async def start(self) -> None:
        """Wait until the read loops run (bootstrap calls it to surface startup errors)."""
        await self._startup

    async def ping(self) -> dict[str, int]:
        return {"router": self.index, "processed": self.processed, "sent": self.sent}

    async def _run(self, lane: str, consumer: str) -> None:
        pending = True  # after a restart, first finish what this consumer had read
        while True:
            try:
                entries = await self.log.read(
                    lane,
                    consumer,
                    self.settings.batch_max_rows,
                    self.settings.batch_max_wait_ms,
                    pending=pending,
                )
                if pending and entries.height == 0:
                    pending = False
                    continue
                if entries.height:
                    await self.process(lane, entries)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router %s: batch failed; entries stay pending", consumer)
                pending = True
                await asyncio.sleep(0.5)

    async def process(self, lane: str, entries: pl.DataFrame) -> None:
        events = self._frame(entries, lane)
        orders = events.filter(pl.col("type") == "order.updated")
        audience = await self._audience(orders["user_id"].unique().to_list())
        deliveries, suppressed = order_updates.plan(orders, audience)
        meta = orders.select("notification_id", "type", "user_id", "accepted_at")
        if deliveries.height:
            deliveries = deliveries.filter(~(await self.state.finished(deliveries)))
        await self.state.record_routed(deliveries, suppressed, meta)
        await self._send(deliveries)
        await self.log.ack(lane, events["entry_id"].to_list())
        self.processed += events.height

    async def _audience(self, user_ids: list[str]) -> pl.DataFrame:
        """One lookup call per shard that owns any of these users, all in parallel."""
        if not user_ids:
            return pl.DataFrame()
        owners = shard_of(user_ids, self.settings.shards)
        ids = np.asarray(user_ids, dtype=object)
        calls = [
            self._shard(int(shard)).lookup.remote(ids[owners == shard].tolist())
            for shard in np.unique(owners)
        ]
        tables: list[pa.Table] = await asyncio.gather(*calls)
        return pl.concat([pl.from_arrow(t) for t in tables], how="vertical_relaxed")

    async def _send(self, deliveries: pl.DataFrame) -> None:
        if deliveries.height == 0:
            return
        parts = deliveries.partition_by("channel", as_dict=True)
        calls, batches = [], []
        for (channel,), part in parts.items():
            calls.append(self._sender(channel).send.remote(part.to_arrow()))
            batches.append(part)
        results = await asyncio.gather(*calls)
        for part, result in zip(batches, results, strict=True):
            outcome = pl.from_arrow(result)
            await self.state.record_results(part, outcome)
            await self._deactivate_dead(part, outcome)
            self.sent += int((outcome["outcome"] == "delivered").sum())

    async def _deactivate_dead(self, part: pl.DataFrame, outcome: pl.DataFrame) -> None:
        dead = part.join(
            outcome.filter(pl.col("outcome") == "dead_token"), on="delivery_id", how="semi"
        )
        if dead.height == 0:
            return
        owners = shard_of(dead["user_id"].to_list(), self.settings.shards)
        device_ids = np.asarray(dead["device_id"].to_list(), dtype=object)
        await asyncio.gather(
            *[
                self._shard(int(s)).deactivate_devices.remote(device_ids[owners == s].tolist())
                for s in np.unique(owners)
            ]
        )

    def _shard(self, index: int) -> ray.actor.ActorHandle:
        return self._handle(shard_name(index))

    def _sender(self, channel: str) -> ray.actor.ActorHandle:
        return self._handle(sender_name(channel))

    def _handle(self, name: str) -> ray.actor.ActorHandle:
        """Named-actor lookups go to the GCS; a handle stays valid across actor restarts."""
        if name not in self._handles:
            self._handles[name] = ray.get_actor(name, namespace=self.settings.namespace)
        return self._handles[name]

    @staticmethod
    def _frame(entries: pl.DataFrame, lane: str) -> pl.DataFrame:
        events = entries["body"].str.json_decode(_EVENT_DTYPE).struct.unnest()
        return pl.concat([entries.drop("body"), events], how="horizontal").with_columns(
            notification_id=pl.col("event_id"), lane=pl.lit(lane)
        )
