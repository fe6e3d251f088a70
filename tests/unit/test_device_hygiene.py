"""Device hygiene without the stack: the polars rules (`pipelines.device_hygiene`), the
reasons a notification that reaches no device is given, and a real `UserShard` on a real
Redis with a fake clock — removal leaves nothing in Redis, dead tokens are kept
`dead_token_keep_days` then deleted, heartbeats move `last_seen_at`, rows stored before
`last_seen_at` existed are read as seen at their `updated_at`."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest

from actors.user_shard import UserShard
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.tables.devices import device_id_for
from ops.embedded_redis import EmbeddedRedis
from pipelines import eligibility, order_updates
from pipelines.device_hygiene import (
    DAY_S,
    STALE_COLUMN,
    dead_expired,
    is_stale,
    seen_at,
    skipped,
    split_stale,
    stale_cutoff,
    with_stale_counts,
)

NOW = 1_900_000_000.0


def devices(**columns) -> pl.DataFrame:
    return pl.DataFrame(columns, schema_overrides={"last_seen_at": pl.Float64})


# --- the rules ---------------------------------------------------------------------------
def test_stale_is_older_than_the_cutoff_and_never_unknown():
    cutoff = stale_cutoff(NOW, 270)
    assert cutoff == NOW - 270 * DAY_S
    frame = devices(
        device_id=["old", "edge", "new", "unknown"],
        user_id=["u1", "u1", "u1", "u2"],
        last_seen_at=[cutoff - 1, cutoff, NOW, None],
    )
    assert frame.select(is_stale(cutoff)).to_series().to_list() == [True, False, False, False]
    fresh, stale = split_stale(frame, cutoff)
    assert fresh["device_id"].to_list() == ["edge", "new", "unknown"]
    assert stale["device_id"].to_list() == ["old"]


def test_stale_counts_per_user_and_skipped_once_per_user():
    stale = devices(device_id=["a", "b", "c"], user_id=["u1", "u1", "u2"], last_seen_at=[0, 0, 0])
    rows = pl.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "device_id": ["x", "y", None, None]})
    counted = with_stale_counts(rows, stale)
    assert counted[STALE_COLUMN].to_list() == [2, 2, 1, 0]
    assert counted["device_id"].to_list() == ["x", "y", None, None]  # order and rows kept
    assert skipped(counted) == 3  # u1's two once (not per row), u2's one
    assert skipped(rows) == 0


def test_dead_tokens_expire_after_keep_days_and_at_once_with_zero():
    frame = pl.DataFrame(
        {
            "device_id": ["dead-long", "dead-recent", "alive-old"],
            "active": [False, False, True],
            "updated_at": [NOW - 31 * DAY_S, NOW - 1 * DAY_S, NOW - 400 * DAY_S],
        }
    )
    assert frame.filter(dead_expired(NOW, 30))["device_id"].to_list() == ["dead-long"]
    assert frame.filter(dead_expired(NOW, 0))["device_id"].to_list() == [
        "dead-long",
        "dead-recent",
    ]


def test_missing_last_seen_at_is_the_registration_else_now():
    frame = pl.DataFrame({"updated_at": [10.0, 20.0], "last_seen_at": [None, 30.0]})
    assert seen_at(frame, NOW)["last_seen_at"].to_list() == [10.0, 30.0]
    assert seen_at(frame.drop("last_seen_at"), NOW)["last_seen_at"].to_list() == [10.0, 20.0]
    assert seen_at(pl.DataFrame({"device_id": ["d"]}), NOW)["last_seen_at"].to_list() == [NOW]


# --- the reasons ---------------------------------------------------------------------------
def wanted(stale: list[int] | None) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "notification_id": ["n1", "n2"],
            "user_id": ["u1", "u2"],
            "push": [True, True],
            "inbox": [False, False],
            "cat_order": [True, True],
        }
    )
    return frame if stale is None else frame.with_columns(pl.Series(STALE_COLUMN, stale))


def test_an_order_update_reaching_only_stale_devices_says_so():
    empty = pl.DataFrame({"notification_id": []}, schema={"notification_id": pl.String})
    for frame, reasons in (
        (wanted([2, 0]), ["stale_device", "no_active_device"]),
        (wanted(None), ["no_active_device", "no_active_device"]),
    ):
        out = order_updates.suppressed(frame, empty, empty, pl.col("cat_order"), "category")
        assert out["reason"].to_list() == reasons


def campaign_users(stale: list[int] | None) -> pl.DataFrame:
    """Three users push cannot reach (no fresh device), two of them with the inbox off."""
    frame = pl.DataFrame(
        {
            "user_id": ["stale", "none", "inboxed"],
            "timezone": ["UTC"] * 3,
            "push": [True] * 3,
            "inbox": [False, False, True],
            "cat_marketing": [True] * 3,
            "quiet_start_min": pl.Series([None] * 3, dtype=pl.Int16),
            "quiet_end_min": pl.Series([None] * 3, dtype=pl.Int16),
            "max_marketing_per_day": [3] * 3,
            "has_push_device": [False] * 3,
        }
    )
    return frame if stale is None else frame.with_columns(pl.Series(STALE_COLUMN, stale))


def test_a_campaign_counts_stale_device_only_when_it_happens():
    kept, suppressed, counts = eligibility.split(
        campaign_users([1, 0, 3]), now=NOW, channels=["push", "inbox"], respect_quiet_hours=False
    )
    assert dict(suppressed.select("user_id", "reason").rows()) == {
        "stale": "stale_device",
        "none": "no_reachable_channel",
    }
    assert counts["stale_device"] == 1 and counts["no_reachable_channel"] == 1
    assert kept["user_id"].to_list() == ["inboxed"]  # its inbox still goes
    _, _, without = eligibility.split(
        campaign_users(None), now=NOW, channels=["push", "inbox"], respect_quiet_hours=False
    )
    assert sorted(without) == sorted(eligibility.REASONS)
    assert without["no_reachable_channel"] == 2


# --- a real shard on a real Redis ------------------------------------------------------------
@pytest.fixture
def redis_url(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server.url
    server.stop()


def shard_settings(url: str, tmp_path, **extra) -> HeraldSettings:
    return HeraldSettings(
        redis_url=url, data_dir=tmp_path / "data", dev_mode=True, key_prefix="t:", **extra
    )


def register(shard: UserShard, user: str, token: str, **row) -> str:
    device_id = device_id_for("ios", "default", token)
    base = {"device_id": device_id, "user_id": user, "platform": "ios", "token": token}
    base |= {"app_id": "default", "active": True, "updated_at": time.time()}
    shard.upsert_devices(pl.DataFrame([base | row]).to_arrow())
    return device_id


def stored(shard: UserShard) -> dict[bytes, bytes]:
    return shard.store.redis.hgetall(keys.shard_table(shard.settings, shard.index, "devices"))


def test_removed_devices_leave_memory_and_redis(redis_url, tmp_path):
    shard = UserShard(shard_settings(redis_url, tmp_path), 0)
    gone, kept = register(shard, "u1", "a" * 64), register(shard, "u1", "b" * 64)
    assert shard.remove_devices([gone]) == 1
    assert shard.device(gone) is None and shard.device(kept) is not None
    assert set(stored(shard)) == {kept.encode()}
    assert shard.remove_devices([kept], user_id="someone-else") == 0  # not that user's
    again = UserShard(shard.settings, 0)  # a restarted shard rebuilds without it
    assert again.device(gone) is None and again.device(kept)["token"] == "b" * 64


def test_dead_tokens_are_kept_then_swept_with_their_owner_entry(redis_url, tmp_path):
    shard = UserShard(shard_settings(redis_url, tmp_path), 0)
    dead = register(shard, "u1", "c" * 64)
    owners = keys.device_owners(shard.settings)
    shard.store.redis.hset(owners, dead, "u1")
    assert shard.deactivate_devices([dead]) == 1
    switched_off = shard.device(dead)["updated_at"]
    assert shard.device(dead)["active"] is False  # kept: a late re-registration finds it
    assert shard.sweep_dead_devices(now=switched_off + 29 * DAY_S) == 0
    assert shard.device(dead) is not None
    assert shard.sweep_dead_devices(now=switched_off + 30 * DAY_S) == 1
    assert shard.device(dead) is None and stored(shard) == {}
    assert shard.store.redis.hget(owners, dead) is None


def test_zero_keep_days_deletes_a_dead_token_at_once(redis_url, tmp_path):
    shard = UserShard(shard_settings(redis_url, tmp_path, dead_token_keep_days=0), 0)
    dead = register(shard, "u1", "d" * 64)
    assert shard.deactivate_devices([dead]) == 1
    assert shard.device(dead) is None and stored(shard) == {}


def test_heartbeats_move_last_seen_at_and_bring_stale_devices_back(redis_url, tmp_path):
    shard = UserShard(shard_settings(redis_url, tmp_path), 0)
    stale = register(shard, "u1", "e" * 64, last_seen_at=time.time() - 300 * DAY_S)
    fresh = register(shard, "u1", "f" * 64)
    registered = shard.device(fresh)
    assert registered["last_seen_at"] == registered["updated_at"]  # seen at registration
    lookup = pl.from_arrow(shard.lookup(["u1"]))
    assert lookup["device_id"].to_list() == [fresh] and lookup[STALE_COLUMN].to_list() == [1]
    assert shard.stats()["stale_devices"] == 1
    now = time.time() + 1
    assert shard.heartbeat([stale, "dev_unknown"], now=now) == [stale]
    assert shard.device(stale)["last_seen_at"] == now
    assert shard.heartbeat([stale], now=now - 10) == [stale]  # never back in time
    assert shard.device(stale)["last_seen_at"] == now
    row = json.loads(stored(shard)[stale.encode()])
    assert row["last_seen_at"] == now  # written through
    lookup = pl.from_arrow(shard.lookup(["u1"]))
    assert sorted(lookup["device_id"].to_list()) == sorted([stale, fresh])


def test_rows_stored_before_last_seen_at_read_as_seen_at_updated_at(redis_url, tmp_path):
    shard = UserShard(shard_settings(redis_url, tmp_path), 0)
    device = register(shard, "u1", "9" * 64)
    key = keys.shard_table(shard.settings, 0, "devices")
    row = json.loads(stored(shard)[device.encode()])
    del row["last_seen_at"]
    row["updated_at"] = 1234.0
    shard.store.redis.hset(key, device, json.dumps(row))
    assert UserShard(shard.settings, 0).device(device)["last_seen_at"] == 1234.0


def test_snapshots_leave_stale_devices_out_and_expire_when_one_turns_stale(redis_url, tmp_path):
    shard = UserShard(shard_settings(redis_url, tmp_path), 0)
    old = time.time() - 300 * DAY_S
    register(shard, "only-stale", "1" * 64, last_seen_at=old)
    mixed = register(shard, "mixed", "2" * 64)
    register(shard, "mixed", "3" * 64, platform="android", last_seen_at=old)
    users, devices = shard._snapshot_frames()
    assert devices["device_id"].to_list() == [mixed]
    by_user = {row["user_id"]: row for row in users.iter_rows(named=True)}
    assert by_user["only-stale"]["has_push_device"] is False
    assert by_user["only-stale"][STALE_COLUMN] == 1
    assert by_user["mixed"]["platforms"] == ["ios"] and by_user["mixed"][STALE_COLUMN] == 1
    seen = shard.device(mixed)["last_seen_at"]
    assert shard._snapshot_fresh_until == seen + 270 * DAY_S
