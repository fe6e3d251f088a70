"""The shop's templates in Redis, and the cache routers render from.

Layout (`cluster.state.keys`, one `{templates}` hash tag so each script touches one slot):
`{prefix}{templates}` is a hash template_id → the template's JSON (without its version);
`{prefix}{templates}:versions` a hash template_id → the last version put, kept after a
delete, so a template put again after a delete never reuses a version a notification
already recorded; `{prefix}{templates}:generation` a counter bumped by every put and every
delete that removed something — one GET tells a router whether anything changed.

The store deals in JSON-shaped dicts and does not validate them: `cluster` is below
`pipelines`, where the template model lives (`pipelines.templates.parse`). Whoever puts
(the API) validates first; whoever reads through a `TemplateCache` hands it the parser and
the shipped defaults (`pipelines.templates.cache` wires both).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

log = logging.getLogger("herald.templates")
T = TypeVar("T")

# KEYS: items, versions, generation. ARGV: template_id, JSON. → the new version.
_PUT = """
local version = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[3])
return version
"""
# KEYS: items, generation. ARGV: template_id. → 1 when it existed.
_DELETE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
"""


def _decode(template_id: bytes | str, raw: bytes, version: bytes | None) -> dict[str, Any]:
    template = json.loads(raw)
    template["template_id"] = (
        template_id.decode() if isinstance(template_id, bytes) else template_id
    )
    template["version"] = int(version) if version is not None else 0
    return template


class TemplateStore:
    """put / get / list / delete of the shop's templates, and the generation counter."""

    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.redis = client
        self.items_key = keys.templates(settings)
        self.versions_key = keys.template_versions(settings)
        self.generation_key = keys.templates_generation(settings)
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    async def put(self, template: Mapping[str, Any]) -> int:
        """Store (or replace) a template, atomically with a new version for its id (1, 2,
        …; never reused), and bump the generation. Returns the version. A `version` key in
        `template` is ignored: the store assigns it."""
        body = {k: v for k, v in template.items() if k not in ("version", "template_id")}
        text = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        keys_ = [self.items_key, self.versions_key, self.generation_key]
        return int(await self._put(keys=keys_, args=[template["template_id"], text]))

    async def get(self, template_id: str) -> dict[str, Any] | None:
        """The template as put, with `template_id` and `version`; None when there is none."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(self.items_key, template_id)
        pipe.hget(self.versions_key, template_id)
        raw, version = await pipe.execute()
        return _decode(template_id, raw, version) if raw is not None else None

    async def list(self) -> list[dict[str, Any]]:
        """Every stored template (as `get` returns them), by template_id."""
        return (await self.snapshot())[1]

    async def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """The generation and every template, read in one transaction: the templates are
        exactly those of that generation (what a cache must record)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.generation_key)
        pipe.hgetall(self.items_key)
        pipe.hgetall(self.versions_key)
        generation, items, versions = await pipe.execute()
        templates = [_decode(i, raw, versions.get(i)) for i, raw in sorted(items.items())]
        return int(generation or 0), templates

    async def delete(self, template_id: str) -> bool:
        """Remove a template (its version counter stays); False when there was none."""
        args = [template_id]
        return bool(await self._delete(keys=[self.items_key, self.generation_key], args=args))

    async def generation(self) -> int:
        """The change counter: any put or delete since a read makes it differ."""
        return int(await self.redis.get(self.generation_key) or 0)


class TemplateCache(Generic[T]):
    """Every template a router renders with — the shop's laid over the shipped defaults —
    held in memory, so a batch costs at most one GET (the generation), not a read of
    every template.

    `templates()` checks the generation when the last check is older than `max_age_s`
    (0: on every call) and reloads everything, in one transaction, when it changed; so a
    put or delete is seen within `max_age_s` plus one round trip. `parse` turns a stored
    dict into what callers use (`pipelines.templates.parse`: a validated `Template`); a
    stored template it refuses is logged and skipped, leaving the default of that id (if
    any) in force — one bad row must not stop every notification.
    """

    def __init__(
        self,
        store: TemplateStore,
        *,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
        parse: Callable[[dict[str, Any]], T] = dict,  # type: ignore[assignment]
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.parse = parse
        self.max_age_s = max_age_s
        self.clock = clock
        self.defaults: dict[str, T] = {
            template_id: parse({**template, "template_id": template_id, "version": 0})
            for template_id, template in (defaults or {}).items()
        }
        self.generation: int | None = None  # of the templates held; None: never loaded
        self._templates: dict[str, T] = dict(self.defaults)
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def templates(self) -> Mapping[str, T]:
        """template_id → template, fresh to within `max_age_s` (see the class doc)."""
        if self.clock() - self._checked_at < self.max_age_s:
            return self._templates
        async with self._lock:  # a router's concurrent loops share one check
            if self.clock() - self._checked_at >= self.max_age_s:
                if await self.store.generation() != self.generation:
                    await self.refresh()
                self._checked_at = self.clock()
        return self._templates

    async def templates_for(self, template_ids: Iterable[str]) -> Mapping[str, T]:
        """`templates()`, except that an id the held snapshot lacks forces the generation
        check now: an event may name a template put a moment ago (the door checked it in
        the store), and rendering from a snapshot up to `max_age_s` old would suppress it
        as `template_unavailable`."""
        held = await self.templates()
        if all(t in held for t in template_ids):
            return held
        async with self._lock:
            if await self.store.generation() != self.generation:
                await self.refresh()
            self._checked_at = self.clock()
        return self._templates

    async def get(self, template_id: str) -> T | None:
        return (await self.templates()).get(template_id)

    async def refresh(self) -> Mapping[str, T]:
        """Reload now, whatever the generation says."""
        generation, stored = await self.store.snapshot()
        merged = dict(self.defaults)
        for template in stored:
            try:
                merged[template["template_id"]] = self.parse(template)
            except ValueError as error:  # pydantic's ValidationError is a ValueError
                log.warning(
                    "stored template %s (version %s) does not parse, skipped: %s",
                    template["template_id"],
                    template.get("version"),
                    error,
                    extra={"template_id": template["template_id"]},
                )
        self._templates, self.generation = merged, generation
        self._checked_at = self.clock()
        return merged
