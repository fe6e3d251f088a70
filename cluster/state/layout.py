"""Moving a deployment's keys from the layout before Redis Cluster hash tags to today's.

Before hash tags every key was `<prefix><name>` (`ntf:<id>`, `retry`, `shard:0:devices`,
`inbox:<user>`…). Today's names (`cluster.state.keys`) differ, so a deployment upgraded in
place would start with its devices, inboxes, retries, dead letters and campaigns out of
sight — "lost" to every reader. `migrate` renames each old key to its new name once, at
bootstrap, before any router or shard reads: `RENAMENX`, so a key already written under
the new name is never overwritten, and running it again finds nothing to do.

Only a single Redis can hold the old layout (its multi-key scripts never ran on a
cluster), so this runs there only. The event log's own old keys (`stream:<lane>`,
`event:<id>`) are not renamed: the partitioned log drains the old streams and reads old
idempotency keys where they are (`cluster.eventlog`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import redis

from cluster.settings import HeraldSettings
from cluster.state import keys

# Old name (without the prefix) → new key. Most specific first; a name no rule matches
# is left alone (today's keys, the log's, a tenant's other keys under the same prefix).
Rule = tuple[re.Pattern[str], Callable[[HeraldSettings, re.Match[str]], str]]
RULES: tuple[Rule, ...] = (
    (re.compile(r"ntf:(?P<id>.+)"), lambda s, m: keys.notification(s, m["id"])),
    (re.compile(r"retry"), lambda s, m: keys.retries(s, "transactional")),
    (re.compile(r"retry:(?P<lane>\w+)"), lambda s, m: keys.retries(s, m["lane"])),
    (re.compile(r"dlq"), lambda s, m: keys.dead_letters(s)),
    (re.compile(r"campaigns:due"), lambda s, m: keys.campaigns_due(s)),
    (re.compile(r"campaigns:cancelled"), lambda s, m: keys.campaigns_cancelled(s)),
    (
        re.compile(r"campaign:(?P<id>[A-Za-z0-9._@\-]+):(?P<part>shards_done|plan|users)"),
        lambda s, m: keys.campaign(s, m["id"], m["part"]),
    ),
    (re.compile(r"campaign:(?P<id>[A-Za-z0-9._@\-]+)"), lambda s, m: keys.campaign(s, m["id"])),
    (
        re.compile(r"price_drop:(?P<id>.+):users"),
        lambda s, m: keys.price_drop_users(s, m["id"]),
    ),
    (re.compile(r"freq:(?P<day>\d{4}-\d{2}-\d{2})"), lambda s, m: keys.frequency(s, m["day"])),
    (re.compile(r"devices:owner"), lambda s, m: keys.device_owners(s)),
    (re.compile(r"feedback"), lambda s, m: keys.feedback(s)),
    (re.compile(r"feedback:exported"), lambda s, m: keys.feedback_exported(s)),
    (re.compile(r"inbox:(?P<user>.+):items"), lambda s, m: keys.inbox_items(s, m["user"])),
    (re.compile(r"inbox:(?P<user>.+)"), lambda s, m: keys.inbox(s, m["user"])),
    (
        re.compile(r"shard:(?P<index>\d+):(?P<table>\w+)"),
        lambda s, m: keys.shard_table(s, int(m["index"]), m["table"]),
    ),
    (re.compile(r"fanout:used_at"), lambda s, m: keys.fanout_used_at(s)),
    (re.compile(r"senders"), lambda s, m: keys.sender_pool(s)),
)
_SCAN_COUNT = 1_000
# Written to `keys.layout_version` once every old key is moved.
VERSION = "2"


def new_name(settings: HeraldSettings, key: str) -> str | None:
    """Today's name for an old key (full key, prefix included), None when it is not one."""
    prefix = settings.state.key_prefix
    if not key.startswith(prefix) or "{" in key:
        return None
    name = key[len(prefix) :]
    for pattern, build in RULES:
        if match := pattern.fullmatch(name):
            target = build(settings, match)
            return target if target != key else None
    return None


def _old_keys(client: redis.Redis, settings: HeraldSettings) -> Iterator[str]:
    pattern = settings.state.key_prefix.replace("*", r"\*") + "*"
    for key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
        name = key.decode() if isinstance(key, bytes) else key
        if "{" not in name:
            yield name


def migrate(client: redis.Redis, settings: HeraldSettings) -> dict[str, int]:
    """Rename every old-layout key under the prefix to today's name: {"renamed": n,
    "kept": m} (kept: the new name already existed, the old key is left for an operator).
    One pipeline per scan page; skipped once the layout version says it was done, and on a
    cluster (which cannot hold the old layout)."""
    marker = keys.layout_version(settings)
    if settings.state.redis_cluster or client.get(marker) == VERSION.encode():
        return {"renamed": 0, "kept": 0}
    renamed = kept = 0
    page: list[tuple[str, str]] = []

    def flush() -> None:
        nonlocal renamed, kept
        pipe = client.pipeline(transaction=False)
        for old, new in page:
            pipe.renamenx(old, new)
        # Another Herald process migrating at the same time may have moved a key first:
        # its "no such key" is not an error here.
        for done in pipe.execute(raise_on_error=False):
            if not isinstance(done, Exception):
                renamed, kept = renamed + bool(done), kept + (not done)
        page.clear()

    for old in _old_keys(client, settings):
        if (new := new_name(settings, old)) is not None:
            page.append((old, new))
            if len(page) >= _SCAN_COUNT:
                flush()
    if page:
        flush()
    client.set(marker, VERSION)
    return {"renamed": renamed, "kept": kept}
