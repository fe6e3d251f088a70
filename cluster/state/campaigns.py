"""Campaigns in Redis: the spec, the state, the progress counters, the schedule.

`<prefix>{campaigns}:campaign:<id>` is one hash: `spec` (the accepted JSON), `state`
(scheduled → running → done, or cancelled), timestamps, `model_version`, and one integer
field per counter (`targeted`, `eligible`, `selected`, `deferred`, `sent`, `delivered`,
`failed`, `cancelled`, `suppressed:<reason>`, `variant:<id>:<sent|opened|clicked|dismissed>`).
`<prefix>{campaigns}:due` is a sorted set of campaign ids by when they should start; routers
take due ones with a lease (as they take retries), so a router that dies mid fan-out only
delays the campaign: another one resumes it after the lease, skipping the shards recorded
in `<prefix>{c:<id>}:shards_done` and every delivery already recorded.
`<prefix>{c:<id>}:users` is the set of users a campaign already reached (sent or held
for quiet hours): a resumed campaign's plan leaves them out, and the sender pool reads its
size against `selected` as the campaign's backlog. The hashes, the schedule and the
cancelled set share the `{campaigns}` hash tag, so the create and cancel scripts and the
finish transactions touch one Redis Cluster slot.
"""

from __future__ import annotations

import json
import time
from typing import Any

import polars as pl
import redis.asyncio as aioredis

from cluster import finite_json
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.retries import TAKE_DUE

STATES = ("scheduled", "running", "done", "cancelled", "failed")
FEEDBACK_ACTIONS = ("opened", "clicked", "dismissed")
SEPARATOR = "~"  # notification id = <campaign_id>~<user_id>
CHUNK = 10_000  # users per SMISMEMBER

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'spec')
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', 'scheduled', 'created_at', ARGV[2],
           'send_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return false
"""

_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'scheduled' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[2])
  return 'cancelled'
end
return state
"""


def notification_id(campaign_id: str, user_id: str) -> str:
    return f"{campaign_id}{SEPARATOR}{user_id}"


def campaign_of(notification_id: str) -> str | None:
    """The campaign a notification id belongs to, or None for an event's notification."""
    head, sep, _ = notification_id.partition(SEPARATOR)
    return head if sep else None


# `campaign_of` as a column: a frame's `notification_id`s' campaign, null for an event's.
CAMPAIGN_ID = (
    pl.when(pl.col("notification_id").str.contains(SEPARATOR, literal=True))
    .then(pl.col("notification_id").str.split(SEPARATOR).list.first())
    .alias("campaign_id")
)


class CampaignStore:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.due_key = keys.campaigns_due(settings)
        self.cancelled_key = keys.campaigns_cancelled(settings)
        self._create = client.register_script(_CREATE)
        self._take = client.register_script(TAKE_DUE)
        self._cancel = client.register_script(_CANCEL)

    def key(self, campaign_id: str) -> str:
        return keys.campaign(self.settings, campaign_id)

    def shards_done_key(self, campaign_id: str) -> str:
        return keys.campaign(self.settings, campaign_id, "shards_done")

    def users_key(self, campaign_id: str) -> str:
        return keys.campaign(self.settings, campaign_id, "users")

    async def create(self, spec: dict[str, Any]) -> tuple[bool, str | None]:
        """Store and schedule a campaign. (created, previous spec JSON when it existed)."""
        now = time.time()
        send_at = max(now, spec.get("send_at") or now)
        body = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
        previous = await self._create(
            keys=[self.key(spec["campaign_id"]), self.due_key],
            args=[body, now, send_at, spec["campaign_id"]],
        )
        return previous is None, previous.decode() if previous is not None else None

    async def spec(self, campaign_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.key(campaign_id), "spec")
        return json.loads(raw) if raw is not None else None

    async def get(self, campaign_id: str) -> dict[str, Any] | None:
        """The campaign hash decoded: numbers as numbers, counters grouped."""
        fields = await self.redis.hgetall(self.key(campaign_id))
        if not fields:
            return None
        out: dict[str, Any] = {"suppressed": {}, "variants": {}}
        for raw_name, raw_value in fields.items():
            name, value = raw_name.decode(), raw_value.decode()
            if name == "spec":
                continue
            if name.startswith("suppressed:"):
                out["suppressed"][name.split(":", 1)[1]] = int(value)
            elif name.startswith("variant:"):
                _, variant, what = name.split(":", 2)
                out["variants"].setdefault(variant, {})[what] = int(value)
            elif name in ("state", "model_version", "error"):
                out[name] = value
            elif name.endswith("_at"):
                out[name] = float(value)
            elif name == "runs":
                continue
            else:
                out[name] = int(value)
        for name, n in (await self.plan_counts(campaign_id)).items():
            if name.startswith("suppressed:"):
                out["suppressed"][name.split(":", 1)[1]] = n
            else:
                out[name] = n
        out["campaign_id"] = campaign_id
        return out

    async def cancel(self, campaign_id: str) -> str | None:
        """Cancel what is not sent yet; the state afterwards, None for an unknown id."""
        state = await self._cancel(
            keys=[self.key(campaign_id), self.due_key, self.cancelled_key],
            args=[time.time(), campaign_id],
        )
        return state.decode() if state is not None else None

    async def cancelled(self, campaign_ids: list[str]) -> set[str]:
        if not campaign_ids:
            return set()
        flags = await self.redis.smismember(self.cancelled_key, campaign_ids)
        return {c for c, flag in zip(campaign_ids, flags, strict=True) if flag}

    async def take_due(self, limit: int = 1) -> list[str]:
        """Due campaigns, leased to the caller for `campaign_lease_s`."""
        now = time.time()
        ids = await self._take(
            keys=[self.due_key], args=[now, limit, now + self.settings.campaigns.lease_s]
        )
        return [i.decode() for i in ids]

    async def drop_due(self, campaign_id: str) -> None:
        """Take a campaign off the schedule (it is unknown, done or cancelled)."""
        await self.redis.zrem(self.due_key, campaign_id)

    async def renew(self, campaign_id: str) -> None:
        await self.redis.zadd(
            self.due_key, {campaign_id: time.time() + self.settings.campaigns.lease_s}, xx=True
        )

    async def start(self, campaign_id: str, model_version: str) -> tuple[str, bool]:
        """Mark running (once: a resumed campaign keeps its first start and model version);
        returns the model version the campaign runs on and whether this is a resumption."""
        key = self.key(campaign_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(key, "started_at", time.time())
        pipe.hsetnx(key, "model_version", model_version)
        pipe.hincrby(key, "runs", 1)
        pipe.hget(key, "model_version")
        *_, runs, version = await pipe.execute()
        await self.redis.hset(key, "state", "running")
        return version.decode(), int(runs) > 1

    async def finish(self, campaign_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(campaign_id), mapping={"state": "done", "finished_at": time.time()})
        pipe.zrem(self.due_key, campaign_id)
        await pipe.execute()

    async def record_failure(self, campaign_id: str, error: Exception) -> int:
        """Count a failed run and keep its error; returns the failures so far."""
        key = self.key(campaign_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(key, "failures", 1)
        cause = getattr(error, "cause", None) or error  # a worker's error, not Ray's wrapper
        pipe.hset(key, "error", f"{type(cause).__name__}: {cause}"[:500])
        failures, _ = await pipe.execute()
        return int(failures)

    async def give_up(self, campaign_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(campaign_id), mapping={"state": "failed", "finished_at": time.time()})
        pipe.zrem(self.due_key, campaign_id)
        await pipe.execute()

    async def state(self, campaign_id: str) -> str | None:
        value = await self.redis.hget(self.key(campaign_id), "state")
        return value.decode() if value is not None else None

    def count(self, pipe: aioredis.client.Pipeline, campaign_id: str, **counts: int) -> None:
        for name, n in counts.items():
            if n:
                pipe.hincrby(self.key(campaign_id), name.replace("__", ":"), int(n))

    async def variant_stats(self, campaign_id: str, variant_ids: list[str]) -> list[list[int]]:
        """[successes, failures] per variant for the bandit: an open is a success, a send
        without an open (yet) a failure."""
        fields = [f"variant:{v}:{w}" for v in variant_ids for w in ("sent", "opened")]
        values = await self.redis.hmget(self.key(campaign_id), fields)
        numbers = [int(v) if v is not None else 0 for v in values]
        return [
            [numbers[2 * i + 1], max(0, numbers[2 * i] - numbers[2 * i + 1])]
            for i in range(len(variant_ids))
        ]

    def plan_key(self, campaign_id: str) -> str:
        return keys.campaign(self.settings, campaign_id, "plan")

    async def record_plan(self, campaign_id: str, shard: int, counts: dict[str, int]) -> None:
        """A shard's planning counters, kept from its first plan: a resumed campaign
        re-plans a shard only to find who is still to be sent."""
        await self.redis.hsetnx(self.plan_key(campaign_id), str(shard), finite_json.dumps(counts))

    async def record_selection(self, campaign_id: str, selected: int, deferred: int) -> None:
        """Users kept across all shards (after the global top-k), and how many of them are
        held for quiet hours."""
        await self.redis.hset(
            self.key(campaign_id), mapping={"selected": selected, "deferred": deferred}
        )

    async def plan_counts(self, campaign_id: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for raw in (await self.redis.hgetall(self.plan_key(campaign_id))).values():
            for name, n in json.loads(raw).items():
                totals[name] = totals.get(name, 0) + int(n)
        return totals

    async def shards_done(self, campaign_id: str) -> set[int]:
        members = await self.redis.smembers(self.shards_done_key(campaign_id))
        return {int(m) for m in members}

    async def shard_done(self, campaign_id: str, shard: int) -> None:
        await self.redis.sadd(self.shards_done_key(campaign_id), shard)

    def record_reached(
        self, campaign_id: str, users: pl.DataFrame, pipe: aioredis.client.Pipeline
    ) -> None:
        """Queue on `pipe`: `users` (one row per user: user_id, variant_id) into the
        campaign's reached set, and the bandit's per-variant sends."""
        key = self.users_key(campaign_id)
        pipe.sadd(key, *users["user_id"].to_list())
        pipe.expire(key, self.settings.state.notification_ttl_s)
        for variant, n in users.group_by("variant_id").len().iter_rows():
            pipe.hincrby(self.key(campaign_id), f"variant:{variant}:sent", n)

    async def already_sent(self, campaign_id: str, user_ids: pl.Series) -> pl.Series | None:
        """Those of `user_ids` the campaign already reached (None for no users): a
        resumed campaign sends only to the rest."""
        if user_ids.len() == 0:
            return None
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, user_ids.len(), CHUNK):
            pipe.smismember(self.users_key(campaign_id), user_ids.slice(start, CHUNK).to_list())
        flags = [bool(f) for chunk in await pipe.execute() for f in chunk]
        return user_ids.filter(pl.Series(flags, dtype=pl.Boolean))

    async def backlog(self) -> int:
        """Users that running campaigns selected and have not reached yet: the marketing
        lane's fan-out queue, which the sender pool sizes replicas for."""
        ids = [i.decode() for i in await self.redis.zrange(self.due_key, 0, -1)]
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for campaign_id in ids:
            pipe.hmget(self.key(campaign_id), ["state", "selected"])
            pipe.scard(self.users_key(campaign_id))
        answers = await pipe.execute()
        left = 0
        for (state, selected), sent in zip(answers[::2], answers[1::2], strict=True):
            if state == b"running" and selected is not None:
                left += max(0, int(selected) - int(sent))
        return left
