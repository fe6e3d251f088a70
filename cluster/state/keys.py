"""Every Redis key Herald uses, built in one place so the layout is visible and testable.

Each key starts with the deployment's `HERALD_KEY_PREFIX`, so tests and tenants can share a
Redis, and carries one Redis Cluster hash tag (`{...}`, the part of the key that alone
decides its slot): per user `{u:<user_id>}`, per order `{o:<order_id>}`, per notification,
per campaign, per shard, per day, or one tag per store for a store's few global keys. Keys
a Lua script or a `MULTI` touches together share a tag, so each runs on one slot; a batch
over many users or orders is split by slot first (`cluster.state.slots`). The prefix must
hold no `{`: Redis would take the tag from it, and every key would land in one slot. The
layout, by owner (prefix left out):

| key | type | written by |
|---|---|---|
| `event:{<lane>:<partition>}:<event_id>` | string (accepted_at) | event log (idempotency window) |
| `{accepted:<event_id>}` | string (accepted_at) | event log (status display only) |
| `stream:{<lane>:<partition>}` | stream | Redis Streams event log, one per partition |
| `lease:{<lane>:<partition>}` | string (holder) | the router reading that partition |
| `{routers}:alive` | sorted set router index → heartbeat | partition leases (who shares) |
| `stream:<lane>`, `event:<event_id>` | stream, string | before partitions (still read) |
| `{ntf:<notification_id>}` | hash | delivery state (`state.deliveries`) |
| `{retry:<lane>}` | sorted set | retry schedule, one per lane |
| `{dlq}` | stream | dead letters |
| `{campaigns}:campaign:<id>`, `{campaigns}:due`, `:cancelled` | hash, zset, set | campaigns |
| `{c:<id>}:shards_done`, `{c:<id>}:plan`, `{c:<id>}:users` | set, hash, set | campaigns |
| `{pd:<event_id>}:users` | set | price-drop flow (users already reached) |
| `{freq:<day>}` | hash user → marketing sends | frequency counters |
| `{devices}:owner` | hash device_id → user_id | devices |
| `{feedback}`, `{feedback}:exported` | stream, string | feedback |
| `{u:<user>}:inbox`, `{u:<user>}:inbox:items`, `{u:<user>}:stream` | zset, hash, pub/sub | inbox |
| `{u:<user>}:inbox:read`, `{u:<user>}:streams` | set, zset | inbox read state, live streams |
| `{shard:<index>}:<table>` | hash | UserShard write-through |
| `{pools}:fanout:used_at`, `{pools}:senders` | string, hash | fan-out and sender pools |
| `{templates}` (+ `:versions`, `:generation`) | hash id → JSON, hash, counter | templates |
| `{o:<order_id>}:latest` | hash: newest update routed | order updates (`state.orders`) |
| `{push_minute:<epoch minute>}` | hash user → transactional pushes | per-user push limit |
| `{erasures}`, `{erasures}:lock` | stream, string | erasure audit and lock |

Every key of one log partition carries the hash tag `{<lane>:<partition>}`, so the append
script (idempotency key + XADD) and a lease's scripts each touch one Redis Cluster slot.
"""

from __future__ import annotations

from cluster.settings import HeraldSettings


def _key(settings: HeraldSettings, *parts: str | int) -> str:
    return settings.state.key_prefix + ":".join(str(p) for p in parts)


def partition_tag(lane: str, partition: int) -> str:
    """The hash tag every key of one log partition carries: its Redis Cluster slot."""
    return "{" + f"{lane}:{partition}" + "}"


def event(
    settings: HeraldSettings, event_id: str, lane: str | None = None, partition: int | None = None
) -> str:
    """An event's idempotency key, in its log partition's slot (a replay has the same
    partition key, so it lands in the same partition and meets this key). Without a
    partition: the untagged key deployments before partitions wrote (read for status)."""
    if lane is None or partition is None:
        return _key(settings, "event", event_id)
    return _key(settings, "event", partition_tag(lane, partition), event_id)


def accepted(settings: HeraldSettings, event_id: str) -> str:
    """When an event was accepted, findable from its id alone (the status endpoint knows no
    partition). Written after the append script, outside its slot: display only, never
    the idempotency check. Its own tag: one slot per event, spread over the masters."""
    return _tagged(settings, f"accepted:{event_id}")


def stream(settings: HeraldSettings, lane: str, partition: int | None = None) -> str:
    """One partition's stream of a lane's log; without a partition, the single stream per
    lane of deployments before partitions (router 0 still reads what is left in it)."""
    if partition is None:
        return _key(settings, "stream", lane)
    return _key(settings, "stream", partition_tag(lane, partition))


def lease(settings: HeraldSettings, lane: str, partition: int) -> str:
    """Which router reads this partition now (`state.leases`); in the partition's slot."""
    return _key(settings, "lease", partition_tag(lane, partition))


def routers_alive(settings: HeraldSettings) -> str:
    """The routers alive now and when each last said so (`state.leases`)."""
    return _key(settings, "{routers}", "alive")


def _tagged(settings: HeraldSettings, tag: str, *parts: str | int) -> str:
    """`<prefix>{<tag>}:<parts>`: the tag alone decides the key's Redis Cluster slot."""
    return settings.state.key_prefix + "{" + tag + "}" + "".join(f":{p}" for p in parts)


def notification(settings: HeraldSettings, notification_id: str) -> str:
    """One notification's delivery state. Tagged by the notification, not its user: no
    script touches it with another key, and callers holding only an id can build it."""
    return _tagged(settings, f"ntf:{notification_id}")


def retries(settings: HeraldSettings, lane: str = "transactional") -> str:
    """One sorted set per lane, each its own slot (the lanes' sets may sit on different
    masters)."""
    return _tagged(settings, f"retry:{lane}")


def dead_letters(settings: HeraldSettings) -> str:
    return _tagged(settings, "dlq")


def campaign(settings: HeraldSettings, campaign_id: str, part: str | None = None) -> str:
    """The campaign's hash, or one of its parts (`shards_done`, `plan`, `users`).

    The hash shares the `{campaigns}` slot with the schedule and the cancelled set, because
    creating and cancelling a campaign change it and them in one script; the parts, which
    grow with the audience, are tagged `{c:<id>}` and spread over the cluster."""
    if part is None:
        return _tagged(settings, "campaigns", "campaign", campaign_id)
    return _tagged(settings, f"c:{campaign_id}", part)


def campaigns_due(settings: HeraldSettings) -> str:
    return _tagged(settings, "campaigns", "due")


def campaigns_cancelled(settings: HeraldSettings) -> str:
    return _tagged(settings, "campaigns", "cancelled")


def price_drop_users(settings: HeraldSettings, event_id: str) -> str:
    return _tagged(settings, f"pd:{event_id}", "users")


def frequency(settings: HeraldSettings, day: str) -> str:
    """One hash per day: a single slot per day (HMGET over a batch's users stays one
    command); a deployment outgrowing one master's share would bucket it by user."""
    return _tagged(settings, f"freq:{day}")


def device_owners(settings: HeraldSettings) -> str:
    return _tagged(settings, "devices", "owner")


def feedback(settings: HeraldSettings) -> str:
    return _tagged(settings, "feedback")


def feedback_exported(settings: HeraldSettings) -> str:
    return _tagged(settings, "feedback", "exported")


def inbox(settings: HeraldSettings, user_id: str) -> str:
    """The user's inbox; every per-user key carries `{u:<user_id>}`, so the inbox scripts
    (add, trim, read state) touch one slot."""
    return _tagged(settings, f"u:{user_id}", "inbox")


def inbox_items(settings: HeraldSettings, user_id: str) -> str:
    return _tagged(settings, f"u:{user_id}", "inbox", "items")


def user_stream(settings: HeraldSettings, user_id: str) -> str:
    """The user's pub/sub channel. Classic PUBLISH reaches every node's subscribers in a
    Redis Cluster, so the tag only keeps the name in the per-user family."""
    return _tagged(settings, f"u:{user_id}", "stream")


def inbox_read(settings: HeraldSettings, user_id: str) -> str:
    """The ids of the user's inbox items read (a set, always a subset of the inbox)."""
    return _key(settings, "{u:" + user_id + "}", "inbox", "read")


def user_stream_slots(settings: HeraldSettings, user_id: str) -> str:
    """The user's open live streams, across replicas: a sorted set of connection ids
    scored by when each lapses unless its heartbeat renews it."""
    return _key(settings, "{u:" + user_id + "}", "streams")


def shard_table(settings: HeraldSettings, index: int, table: str) -> str:
    """A UserShard's tables share the shard's slot; different shards spread out."""
    return _tagged(settings, f"shard:{index}", table)


def fanout_used_at(settings: HeraldSettings) -> str:
    return _tagged(settings, "pools", "fanout", "used_at")


def sender_pool(settings: HeraldSettings) -> str:
    return _tagged(settings, "pools", "senders")


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


def push_minute(settings: HeraldSettings, minute: int) -> str:
    """Transactional pushes per user in one minute (epoch minute): a single hash, so the
    per-batch count script touches one key (one slot on Redis Cluster)."""
    return _tagged(settings, f"push_minute:{minute}")


def layout_version(settings: HeraldSettings) -> str:
    """Which key layout the deployment's data is in (`cluster.state.layout`): set once the
    move to hash-tagged keys is done, so later starts skip the scan."""
    return _key(settings, "{layout}", "version")


def erasure_audit(settings: HeraldSettings) -> str:
    """The erasure audit stream (`state.erasure`): who erased which user (hashed) when,
    and what was removed. Its own tag: nothing else is written with it."""
    return _tagged(settings, "erasures")


# SCAN patterns of the key families an erasure sweeps (`state.erasure`). Each matches only
# keys the builder above of the same family makes; prefix and ids are glob-escaped.
def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def notifications_match(settings: HeraldSettings) -> str:
    """Every notification's delivery state (`notification`)."""
    return _glob(settings.state.key_prefix) + "{ntf:*}"


def campaign_reach_match(settings: HeraldSettings) -> str:
    """Every campaign's set of users reached (`campaign(..., "users")`)."""
    return _glob(settings.state.key_prefix) + "{c:*}:users"


def price_drop_reach_match(settings: HeraldSettings) -> str:
    """Every price drop's set of users reached (`price_drop_users`)."""
    return _glob(settings.state.key_prefix) + "{pd:*}:users"


def frequency_match(settings: HeraldSettings) -> str:
    """Every day's marketing counters (`frequency`)."""
    return _glob(settings.state.key_prefix) + "{freq:*}"


def push_minute_match(settings: HeraldSettings) -> str:
    """Every minute's push counters (`push_minute`)."""
    return _glob(settings.state.key_prefix) + "{push_minute:*}"


def order_latest_match(settings: HeraldSettings) -> str:
    """Every order's newest update (`order_latest`)."""
    return _glob(settings.state.key_prefix) + "{o:*}:latest"


def user_keys_match(settings: HeraldSettings, user_id: str) -> str:
    """Every per-user key of one user (`{u:<user_id>}:…`: inbox, read set, stream slots)."""
    return _glob(settings.state.key_prefix) + "{u:" + _glob(user_id) + "}:*"


def erasure_lock(settings: HeraldSettings) -> str:
    """Held while an erasure rewrites the feedback log's files: two at once would each
    write back the other's user (`state.erasure_audit`)."""
    return _tagged(settings, "erasures", "lock")
