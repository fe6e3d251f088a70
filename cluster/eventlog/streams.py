"""The default event log on Redis Streams: one stream per (lane, partition), one group.

Ingress appends with one Lua script call per partition a batch touches (all in one
pipeline): the script sets each event's idempotency key and XADDs it atomically, so an
event is either logged and remembered or neither; a replayed event_id inside the window is
reported as a duplicate and never logged twice. Both keys carry the partition's hash tag
(`keys.partition_tag`), so every call touches one Redis Cluster slot. The untagged
`accepted:<event_id>` the status endpoint reads is written after the scripts in the same
pipeline, for display only.

Routers read a partition only while they hold its lease (`cluster.state.leases`), as the
partition's one consumer `p<k>`: a new holder reads `p<k>`'s pending entries first (what
the previous holder read but never acked), then new ones; XACK+XDEL once the deliveries
are recorded. The unpartitioned `stream:<lane>` of older deployments (`partition=None`)
is still read, by router 0, with XAUTOCLAIM for what a dead consumer left there.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence

import polars as pl
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from cluster.eventlog.base import GROUP, partition_for, read_accepted_at
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.clients import async_client
from cluster.state.scripts import run_scripts
from cluster.vocabulary import LANES

# KEYS[1]: the partition's stream; KEYS[2..]: each event's idempotency key.
# ARGV: window, now, then each event's body (in KEYS' order).
_APPEND = """
local window, now = ARGV[1], ARGV[2]
local out = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], now, 'NX', 'EX', window) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1], 'at', now)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


def _dumps(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False)


class RedisEventLog:
    redelivers_unannounced = False
    leases_partitions = True

    def __init__(self, settings: HeraldSettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or async_client(settings)
        self._append = self.redis.register_script(_APPEND)

    def stream(self, lane: str, partition: int | None = None) -> str:
        return keys.stream(self.settings, lane, partition)

    def streams(self, lane: str) -> list[str]:
        """Every stream of the lane: its partitions, then the pre-partition one."""
        partitions = range(self.settings.eventlog.log_partitions)
        return [self.stream(lane, p) for p in partitions] + [self.stream(lane)]

    async def ensure_groups(self) -> None:
        for stream in [s for lane in LANES for s in self.streams(lane)]:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def append(self, events: Sequence[tuple[str, str, dict]]) -> list[bool]:
        """Log (event_id, lane, event) triples; True for each one that was new."""
        if not events:
            return []
        now = repr(time.time())
        window = self.settings.state.idempotency_window_s
        by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, (_, lane, event) in enumerate(events):
            by_partition[(lane, partition_for(self.settings, event))].append(i)
        calls = []
        for (lane, partition), rows in by_partition.items():
            ids = [keys.event(self.settings, events[i][0], lane, partition) for i in rows]
            bodies = [_dumps(events[i][2]) for i in rows]
            calls.append(
                (self._append, [self.stream(lane, partition), *ids], [window, now, *bodies])
            )

        def note_accepted(pipe: aioredis.client.Pipeline) -> None:
            """`accepted:<id>` for the status endpoint (NX: a duplicate keeps the original's
            time). Display only: not atomic with the append, never the idempotency check."""
            for event_id, _, _ in events:
                pipe.set(keys.accepted(self.settings, event_id), now, nx=True, ex=window)

        replies = await run_scripts(self.redis, calls, after=note_accepted)
        flags = [False] * len(events)
        for rows, reply in zip(by_partition.values(), replies, strict=True):
            for i, flag in zip(rows, reply, strict=True):
                flags[i] = bool(flag)
        return flags

    async def requeue(self, events: Sequence[tuple[str, dict, float]]) -> None:
        """Put (lane, event, accepted_at) back in the log, bypassing the idempotency check
        (dead-letter replay: the id is known, the event must run again), each in its
        event's partition."""
        pipe = self.redis.pipeline(transaction=False)
        for lane, event, accepted_at in events:
            stream = self.stream(lane, partition_for(self.settings, event))
            pipe.xadd(stream, {"e": json.dumps(event, allow_nan=False), "at": repr(accepted_at)})
        await pipe.execute()

    async def accepted_at(self, event_id: str) -> float | None:
        return await read_accepted_at(self.redis, self.settings, event_id)

    async def read(
        self,
        lane: str,
        consumer: str,
        count: int,
        block_ms: int | None,
        pending: bool = False,
        partition: int | None = None,
    ) -> pl.DataFrame:
        """New entries for this consumer (waiting up to `block_ms`; None: what is there now),
        or (pending=True) the ones it read but never acked.

        Answered as columns (entry_id, body JSON, accepted_at) so the router decodes a whole
        batch of events at once."""
        reply = await self.redis.xreadgroup(
            GROUP,
            consumer,
            {self.stream(lane, partition): "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        return self._frame([e for _, stream_entries in reply or [] for e in stream_entries])

    async def claim_stale(
        self, lane: str, consumer: str, min_idle_ms: int, count: int, partition: int | None = None
    ) -> pl.DataFrame:
        """Take over entries another consumer read but did not ack within min_idle_ms."""
        reply = await self.redis.xautoclaim(
            self.stream(lane, partition), GROUP, consumer, min_idle_ms, start_id="0-0", count=count
        )
        return self._frame(reply[1])

    async def renew(
        self, lane: str, consumer: str, entry_ids: Sequence[str], partition: int | None = None
    ) -> None:
        # XCLAIM to ourselves with min-idle 0 resets the idle time; acked entries are
        # no longer pending and are left alone.
        if entry_ids:
            await self.redis.xclaim(
                self.stream(lane, partition), GROUP, consumer, 0, list(entry_ids), justid=True
            )

    async def ack(self, lane: str, entry_ids: Sequence[str], partition: int | None = None) -> None:
        if not entry_ids:
            return
        stream = self.stream(lane, partition)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, GROUP, *entry_ids)
        pipe.xdel(stream, *entry_ids)
        await pipe.execute()

    async def lag(self, lane: str) -> int:
        """Entries not yet acked (pending plus never read), over every stream of the lane."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams(lane):
            pipe.xlen(stream)
        return int(sum(await pipe.execute()))

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
