"""The default event log on Redis Streams: one stream per lane, one consumer group.

Ingress appends with a Lua script that sets the event's idempotency key and XADDs in one
atomic step, so an event is either logged and remembered or neither; a replayed event_id
inside the window is reported as a duplicate and never logged twice. Routers read with
XREADGROUP (their own pending entries first, after a restart), XACK+XDEL once the
deliveries are recorded, and XAUTOCLAIM what a dead router left behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import polars as pl
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from cluster.eventlog.base import GROUP
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.clients import async_client
from cluster.vocabulary import LANES

# The key layout (`cluster.state.keys`: `<prefix>event:<id>`, `<prefix>stream:<lane>`) is
# spelled out here too: a Lua script builds its keys from the prefix it is handed.
_APPEND = """
local prefix, window, now = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local id, lane, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SET', prefix .. 'event:' .. id, now, 'NX', 'EX', window) then
    redis.call('XADD', prefix .. 'stream:' .. lane, '*', 'e', body, 'at', now)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


class RedisEventLog:
    redelivers_unannounced = False

    def __init__(self, settings: HeraldSettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or async_client(settings)
        self._append = self.redis.register_script(_APPEND)

    def stream(self, lane: str) -> str:
        return keys.stream(self.settings, lane)

    async def ensure_groups(self) -> None:
        for lane in LANES:
            try:
                await self.redis.xgroup_create(self.stream(lane), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def append(self, events: Sequence[tuple[str, str, dict]]) -> list[bool]:
        """Log (event_id, lane, event) triples; True for each one that was new."""
        if not events:
            return []
        args: list[str] = [
            self.settings.state.key_prefix,
            str(self.settings.state.idempotency_window_s),
            repr(time.time()),
        ]
        for event_id, lane, event in events:
            args += [event_id, lane, json.dumps(event, separators=(",", ":"))]
        flags = await self._append(args=args)
        return [bool(flag) for flag in flags]

    async def requeue(self, events: Sequence[tuple[str, dict, float]]) -> None:
        """Put (lane, event, accepted_at) back in the log, bypassing the idempotency check
        (dead-letter replay: the id is known, the event must run again)."""
        pipe = self.redis.pipeline(transaction=True)
        for lane, event, accepted_at in events:
            pipe.xadd(self.stream(lane), {"e": json.dumps(event), "at": repr(accepted_at)})
        await pipe.execute()

    async def accepted_at(self, event_id: str) -> float | None:
        value = await self.redis.get(keys.event(self.settings, event_id))
        return float(value) if value is not None else None

    async def read(
        self, lane: str, consumer: str, count: int, block_ms: int, pending: bool = False
    ) -> pl.DataFrame:
        """New entries for this consumer, or (pending=True) the ones it read but never acked.

        Answered as columns (entry_id, body JSON, accepted_at) so the router decodes a whole
        batch of events at once."""
        reply = await self.redis.xreadgroup(
            GROUP,
            consumer,
            {self.stream(lane): "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        return self._frame([e for _, stream_entries in reply or [] for e in stream_entries])

    async def claim_stale(
        self, lane: str, consumer: str, min_idle_ms: int, count: int
    ) -> pl.DataFrame:
        """Take over entries another consumer read but did not ack within min_idle_ms."""
        reply = await self.redis.xautoclaim(
            self.stream(lane), GROUP, consumer, min_idle_ms, start_id="0-0", count=count
        )
        return self._frame(reply[1])

    async def renew(self, lane: str, consumer: str, entry_ids: Sequence[str]) -> None:
        # XCLAIM to ourselves with min-idle 0 resets the idle time; acked entries are
        # no longer pending and are left alone.
        if entry_ids:
            await self.redis.xclaim(
                self.stream(lane), GROUP, consumer, 0, list(entry_ids), justid=True
            )

    async def ack(self, lane: str, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream(lane), GROUP, *entry_ids)
        pipe.xdel(self.stream(lane), *entry_ids)
        await pipe.execute()

    async def lag(self, lane: str) -> int:
        """Entries not yet acked (pending plus never read)."""
        return int(await self.redis.xlen(self.stream(lane)))

    @staticmethod
    def _frame(entries: list) -> pl.DataFrame:
        """Entries deleted after being read (XDEL) come back with no fields: skip them."""
        live = [(entry_id, fields) for entry_id, fields in entries if fields]
        return pl.DataFrame(
            {
                "entry_id": [entry_id for entry_id, _ in live],
                "body": [fields[b"e"] for _, fields in live],
                "accepted_at": [fields[b"at"] for _, fields in live],
            },
            schema={"entry_id": pl.Binary, "body": pl.Binary, "accepted_at": pl.Binary},
        ).select(
            pl.col("entry_id").cast(pl.String),
            pl.col("body").cast(pl.String),
            pl.col("accepted_at").cast(pl.String).cast(pl.Float64),
        )
