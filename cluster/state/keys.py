"""Every Redis key Herald uses, built in one place so the layout is visible and testable.

Each key starts with the deployment's `HERALD_KEY_PREFIX`, so tests and tenants can share a
Redis. The layout, by owner:

| key | type | written by |
|---|---|---|
| `event:<event_id>` | string (accepted_at) | event log (idempotency window) |
| `stream:<lane>` | stream | Redis Streams event log |
| `ntf:<notification_id>` | hash | delivery state (`state.deliveries`) |
| `retry` / `retry:<lane>` | sorted set | retry schedule (transactional keeps the bare name) |
| `dlq` | stream | dead letters |
| `campaign:<id>` (+ `:shards_done`, `:plan`, `:users`) | hash, set, hash, set | campaigns |
| `campaigns:due`, `campaigns:cancelled` | sorted set, set | campaigns |
| `price_drop:<event_id>:users` | set | price-drop flow (users already reached) |
| `freq:<day>` | hash user → marketing sends | frequency counters |
| `devices:owner` | hash device_id → user_id | devices |
| `feedback`, `feedback:exported` | stream, string | feedback |
| `inbox:<user>`, `inbox:<user>:items`, `stream:user:<user>` | zset, hash, pub/sub | inbox |
| `shard:<index>:<table>` | hash | UserShard write-through |
| `fanout:used_at`, `senders` | string, hash | fan-out and sender pools |
| `{templates}` (+ `:versions`, `:generation`) | hash id → JSON, hash, counter | templates |
| `{o:<order_id>}:latest` | hash: newest update routed | order updates (`state.orders`) |

The Redis Streams log's Lua script builds `event:` and `stream:` from the prefix it is
handed; those two spellings must stay in step with `event` and `stream` below.
"""

from __future__ import annotations

from cluster.settings import HeraldSettings


def _key(settings: HeraldSettings, *parts: str | int) -> str:
    return settings.state.key_prefix + ":".join(str(p) for p in parts)


def event(settings: HeraldSettings, event_id: str) -> str:
    return _key(settings, "event", event_id)


def stream(settings: HeraldSettings, lane: str) -> str:
    return _key(settings, "stream", lane)


def notification(settings: HeraldSettings, notification_id: str) -> str:
    return _key(settings, "ntf", notification_id)


def retries(settings: HeraldSettings, lane: str = "transactional") -> str:
    """Transactional retries keep the bare `retry` name older deployments use."""
    return _key(settings, "retry") if lane == "transactional" else _key(settings, "retry", lane)


def dead_letters(settings: HeraldSettings) -> str:
    return _key(settings, "dlq")


def campaign(settings: HeraldSettings, campaign_id: str, part: str | None = None) -> str:
    """The campaign's hash, or one of its parts (`shards_done`, `plan`, `users`)."""
    if part is None:
        return _key(settings, "campaign", campaign_id)
    return _key(settings, "campaign", campaign_id, part)


def campaigns_due(settings: HeraldSettings) -> str:
    return _key(settings, "campaigns", "due")


def campaigns_cancelled(settings: HeraldSettings) -> str:
    return _key(settings, "campaigns", "cancelled")


def price_drop_users(settings: HeraldSettings, event_id: str) -> str:
    return _key(settings, "price_drop", event_id, "users")


def frequency(settings: HeraldSettings, day: str) -> str:
    return _key(settings, "freq", day)


def device_owners(settings: HeraldSettings) -> str:
    return _key(settings, "devices", "owner")


def feedback(settings: HeraldSettings) -> str:
    return _key(settings, "feedback")


def feedback_exported(settings: HeraldSettings) -> str:
    return _key(settings, "feedback", "exported")


def inbox(settings: HeraldSettings, user_id: str) -> str:
    return _key(settings, "inbox", user_id)


def inbox_items(settings: HeraldSettings, user_id: str) -> str:
    return _key(settings, "inbox", user_id, "items")


def user_stream(settings: HeraldSettings, user_id: str) -> str:
    return _key(settings, "stream", "user", user_id)


def shard_table(settings: HeraldSettings, index: int, table: str) -> str:
    return _key(settings, "shard", index, table)


def fanout_used_at(settings: HeraldSettings) -> str:
    return _key(settings, "fanout", "used_at")


def sender_pool(settings: HeraldSettings) -> str:
    return _key(settings, "senders")


def templates(settings: HeraldSettings) -> str:
    """The shop's templates. The `{templates}` hash tag keeps the three template keys in
    one Redis Cluster slot, so the store's put and delete scripts may touch them together."""
    return _key(settings, "{templates}")


def template_versions(settings: HeraldSettings) -> str:
    return _key(settings, "{templates}", "versions")


def templates_generation(settings: HeraldSettings) -> str:
    return _key(settings, "{templates}", "generation")


def order_latest(settings: HeraldSettings, order_id: str) -> str:
    """The newest update routed for one order. The `{o:<order_id>}` hash tag puts every key
    of one order in one Redis Cluster slot, for any later per-order key beside it."""
    return _key(settings, "{o:" + order_id + "}", "latest")
