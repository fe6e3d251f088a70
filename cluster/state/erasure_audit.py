"""The erasure audit stream and the erasure lock (`api.erasure`).

Every `DELETE /v1/users/{id}` adds one entry to `{erasures}`, erased or not: when, who (a
fingerprint of the API key — the first 16 hex digits of its SHA-256 — never the key), the
user as the SHA-256 of their id (hex), and the counts removed per store. The user is
hashed, not kept, because the audit must not hold the very id it proves gone; an operator
asked "was user X erased?" hashes X (`printf %s X | sha256sum`) and looks, which is what
`recent(user_id=...)` does. A guessable id can be found by hashing guesses: the stream is
admin-only, and a keyed hash would need a key of its own. The stream is not trimmed: it is
the evidence, and it grows by one small entry per erasure.

The lock (`{erasures}:lock`, a lease with a random holder) keeps two erasures from
rewriting the same feedback-log file at once — each would write back the other's user.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from cluster import finite_json
from cluster.settings import HeraldSettings
from cluster.state import keys

LOCK_LEASE_MS = 300_000  # longer than any erasure; a crashed holder frees it after this
LOCK_POLL_S = 0.1
SCAN_BATCH = 1_000

# KEYS[1]: the lock; ARGV[1]: our holder id. Delete only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def user_hash(user_id: str) -> str:
    """How the audit names a user: SHA-256 of the id, hex."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def key_fingerprint(api_key: str) -> str:
    """How the audit names the caller: never the key, a prefix of its SHA-256."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class LockBusy(Exception):
    """Another erasure held the lock for longer than the caller would wait."""


class ErasureAudit:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.key = keys.erasure_audit(settings)
        self.lock_key = keys.erasure_lock(settings)
        self._release = client.register_script(_RELEASE)

    async def record(
        self, api_key: str, user_id: str, removed: dict[str, int], notes: list[str]
    ) -> dict[str, Any]:
        """Add the audit entry of one erasure; answers it as `recent` lists it."""
        entry = {
            "at": repr(time.time()),
            "by": key_fingerprint(api_key),
            "user_sha256": user_hash(user_id),
            "removed": finite_json.dumps(removed, sort_keys=True),
            "notes": finite_json.dumps(notes),
        }
        entry_id = await self.redis.xadd(self.key, entry)
        return _decoded(entry_id, entry)

    async def recent(self, limit: int, user_id: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` entries, newest first; with `user_id`, only that user's."""
        wanted = user_hash(user_id) if user_id is not None else None
        found: list[dict[str, Any]] = []
        high = "+"
        while len(found) < limit:
            batch = await self.redis.xrevrange(self.key, max=high, min="-", count=SCAN_BATCH)
            for entry_id, fields in batch:
                entry = _decoded(entry_id, fields)
                if wanted is None or entry["user_sha256"] == wanted:
                    found.append(entry)
            if len(batch) < SCAN_BATCH:
                break
            high = "(" + _text(batch[-1][0])
        return found[:limit]

    @asynccontextmanager
    async def lock(self, wait_s: float) -> AsyncIterator[None]:
        """Hold the erasure lock (waiting up to `wait_s`, else `LockBusy`)."""
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while not await self.redis.set(self.lock_key, holder, nx=True, px=LOCK_LEASE_MS):
            if time.monotonic() > deadline:
                raise LockBusy("another erasure is running")
            await asyncio.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            await self._release(keys=[self.lock_key], args=[holder])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(entry_id: Any, fields: dict) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in fields.items()}
    return {
        "id": _text(entry_id),
        "at": float(fields["at"]),
        "by": fields["by"],
        "user_sha256": fields["user_sha256"],
        "removed": json.loads(fields["removed"]),
        "notes": json.loads(fields.get("notes") or "[]"),
    }
