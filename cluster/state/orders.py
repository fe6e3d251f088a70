"""The newest update routed for each order, so an older status never overwrites a newer one.

Producers send order updates from many services, and the log keeps acceptance order, not
the order things happened in: a `shipped` retried by its producer can land after
`delivered`. `{prefix}{o:<order_id>}:latest` is a hash — `event_id`, `sequence`,
`occurred_at`, `accepted_at` — of the newest update routed for that order; an update older
than it is *stale* and is not sent (the order flow records it suppressed as `superseded`).

Newer is decided field by field, each only when both sides have it: `sequence` (the
producer's per-order counter), then `occurred_at` (producer time), then `accepted_at` (the
log's time), and within one batch the later entry wins a tie. An update with neither
`sequence` nor `occurred_at` carries no ordering and is never stale, nor stored (what every
update was before this store). The stored update itself is never stale: a redelivered
entry (same `event_id`) is routed again as before. Within one batch every update but the
order's newest is stale, so `shipped, out_for_delivery, delivered` in one read sends only
`delivered`.

The whole batch is one Lua script call, not one round trip per event, and atomic, so two
routers racing on the same order agree on which update won. Each order's key carries the
`{o:<order_id>}` hash tag, so its slot is the order's; on a Redis Cluster the batch is
split by slot (`cluster.state.slots`) and the script called once per slot, all calls in one
pipeline — an order's updates all fall in one call, in batch order, so the answer is the
same as one call's. Keys live as long as
the notifications they guard (`notification_ttl_s`).
"""

from __future__ import annotations

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.slots import slot_groups

# The columns `stale` reads, in the order the script takes them per event (after its key).
FIELDS = ("event_id", "sequence", "occurred_at", "accepted_at")

# KEYS[i]: event i's order key. ARGV[1]: TTL; then per event FIELDS as strings ('' = unset).
# A sequence is compared as a decimal string (length, then text), so it stays exact past
# 2^53, where a Lua number would round; times are compared as numbers.
_LATEST = """
local ttl = ARGV[1]
local function compare(a, b)
  if a[2] ~= '' and b[2] ~= '' and a[2] ~= b[2] then
    if #a[2] ~= #b[2] then return #a[2] < #b[2] and -1 or 1 end
    return a[2] < b[2] and -1 or 1
  end
  for f = 3, 4 do
    if a[f] ~= '' and b[f] ~= '' then
      local x, y = tonumber(a[f]), tonumber(b[f])
      if x ~= y then return x < y and -1 or 1 end
    end
  end
  return 0
end
local events, best, touched = {}, {}, {}
for i = 1, #KEYS do
  local o = 1 + (i - 1) * 4
  local e = {ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]}
  events[i] = e
  if e[2] ~= '' or e[3] ~= '' then
    local k = KEYS[i]
    if best[k] == nil then
      local s = redis.call('HMGET', k, 'event_id', 'sequence', 'occurred_at', 'accepted_at')
      best[k] = s[1] and {s[1], s[2] or '', s[3] or '', s[4] or ''} or false
      touched[#touched + 1] = k
    end
    local b = best[k]
    if not b or b[1] == e[1] or compare(e, b) >= 0 then best[k] = e end
  end
end
local stale = {}
for i = 1, #KEYS do
  local e = events[i]
  if (e[2] ~= '' or e[3] ~= '') and best[KEYS[i]][1] ~= e[1] then stale[#stale + 1] = i end
end
for _, k in ipairs(touched) do
  local b = best[k]
  redis.call('HSET', k, 'event_id', b[1], 'sequence', b[2], 'occurred_at', b[3],
             'accepted_at', b[4])
  redis.call('EXPIRE', k, ttl)
end
return stale
"""


class OrderLatest:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._latest = client.register_script(_LATEST)

    def key(self, order_id: str) -> str:
        return keys.order_latest(self.settings, order_id)

    async def stale(self, updates: pl.DataFrame) -> pl.Series:
        """Per row of `updates` (order_id and FIELDS, in the batch's order), whether a newer
        update of its order was routed before or is in this batch (module doc). Records
        each order's newest as it goes: one script call for the whole batch (per slot on
        a Redis Cluster)."""
        updates = updates.with_row_index("_row")
        ordered = updates.filter(
            pl.col("sequence").is_not_null() | pl.col("occurred_at").is_not_null()
        )
        if ordered.height == 0:
            return pl.Series("stale", [False] * updates.height, dtype=pl.Boolean)
        order_keys = pl.Series("key", [self.key(order_id) for order_id in ordered["order_id"]])
        groups = ordered.with_columns(order_keys, slot_groups(self.redis, order_keys)).partition_by(
            "slot", maintain_order=True
        )
        calls = [
            (group["key"].to_list(), [self.settings.state.notification_ttl_s, *script_args(group)])
            for group in groups
        ]
        if len(calls) == 1:
            found = [await self._latest(keys=calls[0][0], args=calls[0][1])]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for call_keys, args in calls:
                await self._latest(keys=call_keys, args=args, client=pipe)
            found = await pipe.execute()
        rows = pl.concat(
            [g["_row"].gather([int(i) - 1 for i in f]) for g, f in zip(groups, found, strict=True)]
        )
        return updates["_row"].is_in(rows.implode()).alias("stale")


def script_args(ordered: pl.DataFrame) -> list[str]:
    """FIELDS of each row as the script reads them, row after row: '' for unset, times in
    `repr` (the float exactly), so the script sees what the producer sent."""
    args: list[str] = []
    for event_id, sequence, occurred_at, accepted_at in ordered.select(FIELDS).iter_rows():
        args += [
            event_id,
            "" if sequence is None else str(sequence),
            "" if occurred_at is None else repr(float(occurred_at)),
            "" if accepted_at is None else repr(float(accepted_at)),
        ]
    return args


async def overtaken(store: OrderLatest, rows: pl.DataFrame) -> pl.Series:
    """Per row (`notification_id` = its event id, `order_id`, `accepted_at`): whether an
    update of its order accepted after it has been routed since — a retry of `shipped`
    that `delivered` overtook must not reach the phone after it. One pipelined HMGET per
    order key (each key its own slot, so this works on Redis Cluster too)."""
    if rows.height == 0:
        return pl.Series("overtaken", [], dtype=pl.Boolean)
    pipe = store.redis.pipeline(transaction=False)
    for order_id in rows["order_id"]:
        pipe.hmget(store.key(order_id), "event_id", "accepted_at")
    newest = await pipe.execute()
    stored = pl.DataFrame(
        {
            "event_id": [e for e, _ in newest],
            "at": [a for _, a in newest],
        },
        schema={"event_id": pl.Binary, "at": pl.Binary},
    ).select(
        pl.col("event_id").cast(pl.String),
        pl.col("at").cast(pl.String).cast(pl.Float64, strict=False),
    )
    both = pl.concat([rows.select("notification_id", "accepted_at"), stored], how="horizontal")
    return both.select(
        (
            pl.col("event_id").is_not_null()
            & (pl.col("event_id") != pl.col("notification_id"))
            & (pl.col("at") > pl.col("accepted_at"))
        )
        .fill_null(False)
        .alias("overtaken")
    ).to_series()
