"""Finding, exporting and erasing one user's data in Redis (`DELETE /v1/users/{id}`,
`GET /v1/users/{id}/export`, `api.erasure`).

Herald keeps no index from a user to everything about them, so the erasure looks: the
per-user keys (`{u:<id>}:…`: inbox, read set, live stream slots) by pattern; every
notification's state (`{ntf:*}`) by its meta's `user_id`; the orders whose newest update
was the user's; the hashes counting per user (`{freq:*}`, `{push_minute:*}`) and the sets
of users reached (`{c:*}:users`, `{pd:*}:users`); the device-owner index; the retry sets;
and the streams (dead letters, feedback, every partition of the Redis event log), read a
batch of `BATCH` at a time. What was found is a `Findings`; `export` shows it, `remove`
deletes it — keys with DEL, fields with HDEL, members with ZREM/SREM, stream entries with
XDEL, one pipeline per family. A stream entry about several users (a
`notification.requested` to many, or its dead letter) is replaced by a copy without this
user, so the others still get theirs (their notifications are idempotent by id).

Rare and admin-only, so it may SCAN: its cost grows with the keyspace, not with the user.
A stream entry matches by its fields (`user_id`, `user_ids`, `token`, `device_id`), never
by a substring — except a Kafka dead letter, which is raw bytes no contract parsed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from cluster import finite_json
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.vocabulary import LANES

BATCH = 1_000  # keys per SCAN, entries per XRANGE, commands per pipeline
MASK_KEEP = 6  # a token is shown as "…" + its last characters


def mask(token: Any) -> Any:
    """A device token as an export shows it: enough to tell devices apart, not to push."""
    if not isinstance(token, str) or not token:
        return token
    return "…" + token[-MASK_KEEP:]


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Subject:
    """Whom to look for: the user, and the ids and tokens of their devices."""

    user_id: str
    device_ids: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)

    def matches(self, row: Any) -> bool:
        """Whether a decoded entry (a delivery row, an event, a feedback action) is about
        this user: by field, exactly."""
        if not isinstance(row, dict):
            return False
        users = row.get("user_ids")
        return (
            row.get("user_id") == self.user_id
            or (isinstance(users, list) and self.user_id in users)
            or (bool(row.get("token")) and row.get("token") in self.tokens)
            or (bool(row.get("device_id")) and row.get("device_id") in self.device_ids)
        )

    def without(self, row: dict) -> dict | None:
        """A copy of an event for several users without this one (None: it was theirs)."""
        users = row.get("user_ids")
        if row.get("user_id") == self.user_id or not isinstance(users, list):
            return None
        rest = [u for u in users if u != self.user_id]
        return {**row, "user_ids": rest} if rest else None


@dataclass
class Entry:
    """A stream entry about the user: where, its fields decoded, and (for an entry about
    others too) the fields its replacement is added with."""

    stream: str
    entry_id: str
    fields: dict[str, Any]
    replacement: dict[str, str] | None = None


@dataclass
class Findings:
    user_id: str
    user_keys: list[str] = field(default_factory=list)
    inbox_items: list[dict] = field(default_factory=list)
    notifications: dict[str, dict] = field(default_factory=dict)  # key → fields
    orders: list[str] = field(default_factory=list)  # keys
    counters: list[tuple[str, str, int]] = field(default_factory=list)  # (family, key, n)
    reached: list[tuple[str, str]] = field(default_factory=list)  # (family, key)
    owned_devices: list[str] = field(default_factory=list)
    retries: list[tuple[str, bytes, dict]] = field(default_factory=list)  # (key, member, row)
    entries: dict[str, list[Entry]] = field(default_factory=dict)  # family → entries


class UserData:
    """The Redis side of an erasure or an export (module docstring)."""

    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.prefix = settings.state.key_prefix

    # --- finding -----------------------------------------------------------------------
    async def find(self, subject: Subject) -> Findings:
        found = Findings(subject.user_id)
        await self._find_user_keys(subject, found)
        await self._find_notifications(subject, found)
        await self._find_orders(found)
        await self._find_counters(subject, found)
        await self._find_reached(subject, found)
        await self._find_owned(subject, found)
        await self._find_retries(subject, found)
        for family, streams, decode in self._stream_families(subject):
            found.entries[family] = [e for s in streams for e in await self._scan(s, decode)]
        return found

    async def _scan_keys(self, match: str) -> AsyncIterator[list[str]]:
        """Keys matching `match`, a batch at a time (every master on a Redis Cluster)."""
        batch: list[str] = []
        async for key in self.redis.scan_iter(match=match, count=BATCH):
            batch.append(_text(key))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _each(self, batch: list[str], queue: Callable[[Any, str], Any]) -> list[Any]:
        """One command per key of `batch` (`queue(pipe, key)`), answers in order."""
        return await self._pipeline([lambda p, k=k: queue(p, k) for k in batch])

    async def _pipeline(self, commands: list[Callable[[Any], Any]]) -> list[Any]:
        """Run `commands` (each queues one command on a pipeline) `BATCH` at a time."""
        out: list[Any] = []
        for start in range(0, len(commands), BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for queue in commands[start : start + BATCH]:
                queue(pipe)
            out += await pipe.execute()
        return out

    async def _find_user_keys(self, subject: Subject, found: Findings) -> None:
        async for batch in self._scan_keys(keys.user_keys_match(self.settings, subject.user_id)):
            found.user_keys += batch
        items = await self.redis.hgetall(keys.inbox_items(self.settings, subject.user_id))
        read = await self.redis.smembers(keys.inbox_read(self.settings, subject.user_id))
        read_ids = {_text(r) for r in read}
        found.inbox_items = [
            {**json.loads(v), "read": _text(k) in read_ids} for k, v in sorted(items.items())
        ]

    async def _find_notifications(self, subject: Subject, found: Findings) -> None:
        """By the meta's user; a fan-out's id (`<event>:<user>`, `<campaign>~<user>`) also
        names the user, for a record whose meta is gone."""
        ends = (f":{subject.user_id}", f"~{subject.user_id}")
        start = len(self.prefix) + len("{ntf:")
        async for batch in self._scan_keys(keys.notifications_match(self.settings)):
            metas = await self._each(batch, lambda p, k: p.hget(k, "meta"))
            for key, meta in zip(batch, metas, strict=True):
                owner = json.loads(meta).get("user_id") if meta else None
                if owner == subject.user_id or (meta is None and key[start:-1].endswith(ends)):
                    found.notifications[key] = {}
        mine = list(found.notifications)
        records = await self._each(mine, lambda p, k: p.hgetall(k))
        for key, fields in zip(mine, records, strict=True):
            found.notifications[key] = {_text(k): _text(v) for k, v in fields.items()}

    async def _find_orders(self, found: Findings) -> None:
        """Orders whose newest routed update is one of the user's order notifications (an
        order update's notification id is its event id)."""
        start = len(self.prefix) + len("{ntf:")
        events = {
            key[start:-1]
            for key, fields in found.notifications.items()
            if json.loads(fields.get("meta") or "{}").get("type") == "order.updated"
        }
        if not events:
            return
        async for batch in self._scan_keys(keys.order_latest_match(self.settings)):
            latest = await self._each(batch, lambda p, k: p.hget(k, "event_id"))
            found.orders += [k for k, e in zip(batch, latest, strict=True) if _text(e) in events]

    async def _find_counters(self, subject: Subject, found: Findings) -> None:
        matches = {
            "frequency": keys.frequency_match(self.settings),
            "push_limits": keys.push_minute_match(self.settings),
        }
        for family, match in matches.items():
            async for batch in self._scan_keys(match):
                got = await self._each(batch, lambda p, k: p.hget(k, subject.user_id))
                hits = [(k, int(n)) for k, n in zip(batch, got, strict=True) if n]
                found.counters += [(family, k, n) for k, n in hits]

    async def _find_reached(self, subject: Subject, found: Findings) -> None:
        matches = {
            "campaign_reach": keys.campaign_reach_match(self.settings),
            "price_drop_reach": keys.price_drop_reach_match(self.settings),
        }
        for family, match in matches.items():
            async for batch in self._scan_keys(match):
                got = await self._each(batch, lambda p, k: p.sismember(k, subject.user_id))
                found.reached += [(family, k) for k, hit in zip(batch, got, strict=True) if hit]

    async def _find_owned(self, subject: Subject, found: Findings) -> None:
        """The owner index, whole (a device the shard no longer lists may still be here)."""
        owned = set()
        async for device_id, owner in self.redis.hscan_iter(
            keys.device_owners(self.settings), count=BATCH
        ):
            if _text(owner) == subject.user_id or _text(device_id) in subject.device_ids:
                owned.add(_text(device_id))
        found.owned_devices = sorted(owned)

    async def _find_retries(self, subject: Subject, found: Findings) -> None:
        for lane in LANES:
            key = keys.retries(self.settings, lane)
            async for member, _ in self.redis.zscan_iter(key, count=BATCH):
                row = json.loads(member)
                if subject.matches(row):
                    found.retries.append((key, member, row))

    def _stream_families(self, subject: Subject) -> list[tuple[str, list[str], Callable]]:
        """(family, its streams, how an entry's fields decide and are replaced)."""
        partitions = range(self.settings.eventlog.log_partitions)
        log = [keys.stream(self.settings, lane, p) for lane in LANES for p in partitions]
        log += [keys.stream(self.settings, lane) for lane in LANES]
        return [
            ("dead_letters", [keys.dead_letters(self.settings)], _dead_letter(subject)),
            ("feedback_stream", [keys.feedback(self.settings)], _feedback(subject)),
            ("event_log", log, _logged_event(subject)),
        ]

    async def _scan(self, stream: str, decide: Callable) -> list[Entry]:
        """The stream's entries about the user, `BATCH` per XRANGE."""
        hits: list[Entry] = []
        low = "-"
        while True:
            batch = await self.redis.xrange(stream, min=low, max="+", count=BATCH)
            for entry_id, raw in batch:
                fields = {_text(k): _text(v) for k, v in raw.items()}
                verdict = decide(fields)
                if verdict is not False:
                    hits.append(Entry(stream, _text(entry_id), fields, verdict))
            if len(batch) < BATCH:
                return hits
            low = "(" + _text(batch[-1][0])

    # --- exporting -----------------------------------------------------------------------
    def exported(self, found: Findings) -> dict[str, Any]:
        """`found` as an export shows it: ids taken out of the keys, tokens masked."""
        cut = len(self.prefix)

        def between(key: str, head: str, tail: str) -> str:
            return key[cut + len(head) : len(key) - len(tail)]

        return {
            "inbox": found.inbox_items,
            "notifications": [
                _notification(between(k, "{ntf:", "}"), f) for k, f in found.notifications.items()
            ],
            "orders": [between(k, "{o:", "}:latest") for k in found.orders],
            "marketing_sent": {
                between(k, "{freq:", "}"): n for f, k, n in found.counters if f == "frequency"
            },
            "pushes_per_minute": {
                between(k, "{push_minute:", "}"): n
                for f, k, n in found.counters
                if f == "push_limits"
            },
            "campaigns_reached": [
                between(k, "{c:", "}:users") for f, k in found.reached if f == "campaign_reach"
            ],
            "price_drops_reached": [
                between(k, "{pd:", "}:users") for f, k in found.reached if f == "price_drop_reach"
            ],
            "devices_owned": found.owned_devices,
            "retries": [_masked(row) for _, _, row in found.retries],
            **{family: [_entry(e) for e in entries] for family, entries in found.entries.items()},
        }

    # --- removing ------------------------------------------------------------------------
    async def remove(self, found: Findings) -> dict[str, int]:
        """Delete what `find` found; counts per store (what `DELETE` answers)."""
        queued: list[Callable[[Any], Any]] = []
        for key in [*found.user_keys, *found.notifications, *found.orders]:
            queued.append(lambda p, k=key: p.delete(k))
        user_id = found.user_id
        for _, key, _ in found.counters:
            queued.append(lambda p, k=key: p.hdel(k, user_id))
        for _, key in found.reached:
            queued.append(lambda p, k=key: p.srem(k, user_id))
        owners = keys.device_owners(self.settings)
        for start in range(0, len(found.owned_devices), BATCH):
            part = found.owned_devices[start : start + BATCH]
            queued.append(lambda p, ids=part: p.hdel(owners, *ids))
        for key, member, _ in found.retries:
            queued.append(lambda p, k=key, m=member: p.zrem(k, m))
        for entry in [e for entries in found.entries.values() for e in entries]:
            if entry.replacement is not None:
                queued.append(lambda p, e=entry: p.xadd(e.stream, e.replacement))
            queued.append(lambda p, e=entry: p.xdel(e.stream, e.entry_id))
        await self._pipeline(queued)
        return self.counts(found)

    @staticmethod
    def counts(found: Findings) -> dict[str, int]:
        families = [f for f, _, _ in found.counters] + [f for f, _ in found.reached]
        return {
            "inbox_items": len(found.inbox_items),
            "user_keys": len(found.user_keys),
            "notifications": len(found.notifications),
            "orders": len(found.orders),
            **{f: families.count(f) for f in ("frequency", "push_limits")},
            **{f: families.count(f) for f in ("campaign_reach", "price_drop_reach")},
            "device_owners": len(found.owned_devices),
            "retries": len(found.retries),
            **{family: len(entries) for family, entries in found.entries.items()},
        }


def _dead_letter(subject: Subject) -> Callable[[dict], Any]:
    """A dead letter's verdict: False (not theirs), None (delete), or its replacement."""

    def decide(fields: dict) -> Any:
        if fields.get("kind") == "kafka":  # raw bytes no contract parsed: by substring
            return None if subject.user_id in fields.get("body", "") else False
        body = json.loads(fields.get("body") or "{}")
        if not subject.matches(body):
            return False
        rest = subject.without(body)
        return None if rest is None else {**fields, "body": finite_json.dumps(rest, sort_keys=True)}

    return decide


def _feedback(subject: Subject) -> Callable[[dict], Any]:
    return lambda fields: None if fields.get("user_id") == subject.user_id else False


def _logged_event(subject: Subject) -> Callable[[dict], Any]:
    def decide(fields: dict) -> Any:
        try:
            event = json.loads(fields.get("e") or "{}")
        except ValueError:  # a poison entry: the router dead-letters it
            return None if subject.user_id in fields.get("e", "") else False
        if not subject.matches(event):
            return False
        rest = subject.without(event)
        if rest is None:
            return None
        return {**fields, "e": finite_json.dumps(rest, separators=(",", ":"))}

    return decide


def _masked(row: Any) -> Any:
    """`row` with its device token masked (`mask`), at any depth."""
    if isinstance(row, dict):
        return {k: mask(v) if k == "token" else _masked(v) for k, v in row.items()}
    if isinstance(row, list):
        return [_masked(v) for v in row]
    return row


def _notification(notification_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """One delivery-state hash as `GET /v1/notifications/{id}` reads it, plus feedback."""
    return {
        "notification_id": notification_id,
        "meta": json.loads(fields.get("meta") or "{}"),
        "suppressed": fields.get("suppressed"),
        "feedback": {n[3:]: float(v) for n, v in fields.items() if n.startswith("fb:")},
        "deliveries": [
            {"device_id": n[2:], **json.loads(v)}
            for n, v in sorted(fields.items())
            if n.startswith("d:")
        ],
    }


def _entry(entry: Entry) -> dict[str, Any]:
    """A stream entry with its JSON fields decoded and tokens masked."""
    fields: dict[str, Any] = dict(entry.fields)
    for name in ("body", "e"):
        try:
            fields[name] = json.loads(fields[name])
        except (KeyError, ValueError):
            pass
    return {"id": entry.entry_id, **_masked(fields)}
