"""Every Redis key carries a hash tag, and the keys each multi-key script (or MULTI) touches
together share one Redis Cluster slot — what lets Herald run on a Redis Cluster."""

from __future__ import annotations

import inspect

import pytest
from redis.crc import key_slot

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.campaigns import CampaignStore
from cluster.state.inbox import inbox_keys
from cluster.state.templates import TemplateStore

SETTINGS = HeraldSettings(key_prefix="herald:")

# Sample values by parameter name; any other parameter gets a plain id.
SAMPLES = {"lane": "transactional", "partition": 3, "index": 1, "minute": 29_000_000,
           "part": "users", "day": "2026-12-02"}  # fmt: skip

# Key functions allowed no tag, with why (single-key commands only; never in a script).
UNTAGGED: dict[str, str] = {}


def key_functions() -> list[tuple[str, object]]:
    """Public functions of `keys` whose first parameter is the settings."""
    return [
        (name, fn)
        for name, fn in inspect.getmembers(keys, inspect.isfunction)
        if not name.startswith("_")
        and fn.__module__ == keys.__name__
        and next(iter(inspect.signature(fn).parameters), None) == "settings"
    ]


def build(fn) -> str:
    params = list(inspect.signature(fn).parameters)[1:]
    return fn(SETTINGS, **{p: SAMPLES.get(p, f"id-{p}") for p in params})


def tag(key: str) -> str | None:
    """Redis's hash tag of `key` (first `{` to the next `}`), None when it has none."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else None


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize(
    ("name", "fn"), key_functions(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_key_carries_a_hash_tag(name, fn):
    if name in UNTAGGED:
        pytest.skip(UNTAGGED[name])
    key = build(fn)
    assert key.startswith(SETTINGS.state.key_prefix)
    assert tag(key), f"keys.{name} builds {key!r}, without a hash tag"


def test_the_tag_separates_what_should_spread():
    """Different users, orders, notifications, campaigns, lanes, shards land on their own
    tags (else one master would hold everything)."""
    pairs = [
        (keys.inbox(SETTINGS, "u1"), keys.inbox(SETTINGS, "u2")),
        (keys.order_latest(SETTINGS, "o1"), keys.order_latest(SETTINGS, "o2")),
        (keys.notification(SETTINGS, "n1"), keys.notification(SETTINGS, "n2")),
        (keys.campaign(SETTINGS, "c1", "users"), keys.campaign(SETTINGS, "c2", "users")),
        (keys.retries(SETTINGS, "transactional"), keys.retries(SETTINGS, "marketing")),
        (keys.shard_table(SETTINGS, 0, "devices"), keys.shard_table(SETTINGS, 1, "devices")),
    ]
    for a, b in pairs:
        assert tag(a) != tag(b), (a, b)


def test_a_users_keys_share_one_slot():
    """The inbox scripts touch a user's inbox, items and read state together."""
    user = "user-42"
    family = [*inbox_keys(SETTINGS, user)]
    for name in ("inbox_read", "user_stream_slots"):
        if hasattr(keys, name):
            family.append(getattr(keys, name)(SETTINGS, user))
    assert len({slot(k) for k in family}) == 1, family


class _ScriptsOnly:
    """A client stand-in: stores register their scripts at construction, nothing more."""

    def register_script(self, script):
        return script


def test_campaign_scripts_and_transactions_touch_one_slot():
    """create (hash + schedule), cancel (hash + schedule + cancelled) and the finish /
    give-up transactions (hash + schedule) each run on one slot."""
    store = CampaignStore(SETTINGS, _ScriptsOnly())
    together = [store.key("spring-sale"), store.due_key, store.cancelled_key]
    assert len({slot(k) for k in together}) == 1, together
    parts = [store.shards_done_key("spring-sale"), store.users_key("spring-sale"),
             store.plan_key("spring-sale")]  # fmt: skip
    assert len({slot(k) for k in parts}) == 1, parts


def test_template_scripts_touch_one_slot():
    store = TemplateStore(SETTINGS, _ScriptsOnly())
    together = [store.items_key, store.versions_key, store.generation_key]
    assert len({slot(k) for k in together}) == 1, together


def test_an_order_and_a_log_partition_each_keep_to_one_slot():
    """The order's keys; and the append script's idempotency key and stream, and the
    partition's lease, when the key functions take a partition."""
    assert tag(keys.order_latest(SETTINGS, "o-1")) == "o:o-1"
    params = inspect.signature(keys.event).parameters
    if "partition" not in params:
        pytest.skip("the event log is not partitioned yet")
    partition = [
        keys.event(SETTINGS, "e-1", lane="marketing", partition=5),
        keys.stream(SETTINGS, "marketing", partition=5),
    ]
    if hasattr(keys, "lease"):
        partition.append(keys.lease(SETTINGS, "marketing", 5))
    assert len({slot(k) for k in partition}) == 1, partition
