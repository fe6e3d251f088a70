"""Bulk import (ops/importer.py) into UserShard actors and their snapshots: an embedded
Redis and a small Ray of this module's own (or the session's, when one already runs), two
shards in a fresh Ray namespace under a fresh Redis key prefix."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import ray

from actors.user_shard import SNAPSHOT_PREFERENCES, UserShard
from cluster.names import shard_name
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from cluster.state import keys
from cluster.state.clients import sync_client
from cluster.state.sealing import kid_of
from cluster.tables.devices import device_id_for
from cluster.tables.preferences import DEFAULTS
from models import synth
from ops.embedded_redis import EmbeddedRedis
from ops.importer import import_devices, import_users, import_wishlists, running_shards

USERS = 2_000
SHARDS = 2
AFFINITY = [f"affinity_{c}" for c in synth.CATEGORIES]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[dict]:
    redis_server = EmbeddedRedis(tmp_path_factory.mktemp("import-redis")).start()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    tag = uuid.uuid4().hex[:8]
    settings = HeraldSettings(
        redis_url=redis_server.url,
        key_prefix=f"test-import-{tag}:",
        namespace=f"test-import-{tag}",
        shards=SHARDS,
        # the shards seal tokens at rest: a generated data key, as on the local stack
        data_dir=tmp_path_factory.mktemp("import-data"),
        dev_mode=True,
    )
    # num_cpus=0: schedulable next to a session stack that holds every CPU.
    shards = [
        ray.remote(UserShard)
        .options(name=shard_name(i), namespace=settings.topology.namespace, num_cpus=0)
        .remote(settings, i)
        for i in range(SHARDS)
    ]
    ray.get([s.ping.remote() for s in shards])
    paths = synth.synthesize(USERS, seed=7, out_dir=tmp_path_factory.mktemp("import-synth"))
    tables = {name: pq.read_table(getattr(paths, name)) for name in ("users", "devices")}
    tables["wishlists"] = pq.read_table(paths.wishlists)
    counts = {
        "users": import_users(settings, tables["users"], chunk_rows=700),
        "devices": import_devices(settings, tables["devices"], chunk_rows=700),
        "wishlists": import_wishlists(settings, tables["wishlists"], chunk_users=700),
    }
    try:
        yield {
            "settings": settings,
            "shards": shards,
            "tables": {k: pl.from_arrow(v) for k, v in tables.items()},
            "counts": counts,
        }
    finally:
        for shard in shards:
            ray.kill(shard, no_restart=True)
        if owns_ray:
            ray.shutdown()
        redis_server.stop()


def _snapshots(shards) -> list[dict]:
    return ray.get([s.snapshot.remote() for s in shards])


def _frames(snapshot: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.from_arrow(ray.get(snapshot["users"])), pl.from_arrow(ray.get(snapshot["devices"]))


def test_import_counts(env):
    tables = env["tables"]
    assert env["counts"] == {
        "users": USERS,
        "devices": tables["devices"].height,
        "wishlists": tables["wishlists"].height,
    }


def test_every_user_in_its_own_shard_snapshot_with_its_values(env):
    snapshots = _snapshots(env["shards"])
    frames = []
    for index, snap in enumerate(snapshots):
        users, _ = _frames(snap)
        assert snap["users_count"] == users.height
        assert isinstance(snap["version"], int)
        owners = shard_of(users["user_id"].to_arrow(), SHARDS)
        assert (owners == index).all()
        frames.append(users)
    users = pl.concat(frames)
    assert users.height == USERS
    assert users["user_id"].n_unique() == USERS

    source = env["tables"]["users"]
    joined = source.join(users, on="user_id", how="left", suffix="_snap")
    for column in ["country", "locale", "timezone", "last_active_at", *AFFINITY]:
        assert (joined[column] == joined[f"{column}_snap"]).all(), column
    assert users.schema["last_active_at"] == pl.Float64
    assert all(users.schema[c] == pl.Float32 for c in AFFINITY)
    assert users.schema["timezone"] == pl.String
    tiers = source["attributes"].str.json_decode().struct.field("tier")
    assert (joined["attributes_snap"].struct.field("tier") == tiers).all()

    # Nobody set preferences: every user has the defaults.
    for column in SNAPSHOT_PREFERENCES:
        expected = DEFAULTS[column]
        if expected is None:
            assert users[column].null_count() == USERS, column
        else:
            assert (users[column] == expected).all(), column
    assert users.schema["quiet_start_min"] == pl.Int16
    assert users.schema["max_marketing_per_day"] == pl.Int32

    # has_push_device and platforms agree with the devices file.
    devices = env["tables"]["devices"]
    with_devices = set(devices["user_id"].unique().to_list())
    expected_push = users["user_id"].is_in(list(with_devices))
    assert (users["has_push_device"] == expected_push).all()
    assert users.schema["has_push_device"] == pl.Boolean
    platforms = devices.group_by("user_id").agg(pl.col("platform").unique().sort())
    check = users.join(platforms, on="user_id", how="inner", suffix="_src")
    assert check.height == len(with_devices)
    assert (check["platforms"] == check["platform"]).all()

    # Wishlists made it into the snapshot.
    wished = env["tables"]["wishlists"].group_by("user_id").agg(pl.len().alias("n"))
    check = users.join(wished, on="user_id", how="inner")
    assert check.height == wished.height
    assert (check["wishlist"].list.len() == check["n"]).all()


def test_imported_tokens_reach_redis_sealed_and_the_snapshot_opened(env):
    source = env["tables"]["devices"]
    client = sync_client(env["settings"])
    stored = [
        json.loads(value)
        for s in range(SHARDS)
        for value in client.hvals(keys.shard_table(env["settings"], s, "devices"))
    ]
    assert len(stored) == source.height
    assert all(kid_of(row["token"]) is not None for row in stored)
    assert not set(source["token"]) & {row["token"] for row in stored}
    snapshot = pl.concat([_frames(s)[1] for s in _snapshots(env["shards"])])
    assert set(snapshot["token"]) == set(source["token"])


def test_devices_snapshot_active_only_with_http_ids(env):
    source = env["tables"]["devices"]
    frames = [_frames(s)[1] for s in _snapshots(env["shards"])]
    devices = pl.concat(frames)
    assert devices.columns == ["user_id", "device_id", "platform", "token"]
    assert devices.height == source.height == sum(f.height for f in frames)
    expected = {
        device_id_for(p, a, t)
        for p, a, t in source.select("platform", "app_id", "token").iter_rows()
    }
    assert set(devices["device_id"].to_list()) == expected
    for index, frame in enumerate(frames):
        assert (shard_of(frame["user_id"].to_arrow(), SHARDS) == index).all()

    # A deactivated device leaves the devices snapshot, and its user's push flag follows.
    shard = env["shards"][0]
    before = ray.get(shard.snapshot.remote())
    victim = frames[0].row(0, named=True)
    assert ray.get(shard.deactivate_devices.remote([victim["device_id"]])) == 1
    after = ray.get(shard.snapshot.remote())
    assert after["version"] != before["version"]
    assert after["devices_count"] == before["devices_count"] - 1
    users, devices = _frames(after)
    assert victim["device_id"] not in devices["device_id"].to_list()
    left = devices.filter(pl.col("user_id") == victim["user_id"]).height
    flag = users.filter(pl.col("user_id") == victim["user_id"])["has_push_device"].item()
    assert flag == (left > 0)


def test_snapshot_version_changes_on_write_only(env):
    shard = env["shards"][1]
    first = ray.get(shard.snapshot.remote())
    again = ray.get(shard.snapshot.remote())
    assert again["version"] == first["version"]
    assert again["users"] == first["users"] and again["devices"] == first["devices"]

    users, _ = _frames(first)
    user = users["user_id"][0]
    prefs = pl.DataFrame(
        {
            "user_id": [user],
            "push": [False],
            "inbox": [True],
            "email": [False],
            "cat_order": [True],
            "cat_price_alert": [True],
            "cat_marketing": [False],
            "quiet_start_min": [22 * 60],
            "quiet_end_min": [7 * 60],
            "max_marketing_per_day": [1],
            "updated_at": [time.time()],
        }
    ).to_arrow()
    assert ray.get(shard.upsert_preferences.remote(prefs)) == 1
    changed = ray.get(shard.snapshot.remote())
    assert changed["version"] != first["version"]
    assert changed["users"] != first["users"]
    row = _frames(changed)[0].filter(pl.col("user_id") == user).row(0, named=True)
    assert (row["push"], row["email"], row["cat_marketing"]) == (False, False, False)
    assert (row["quiet_start_min"], row["quiet_end_min"]) == (22 * 60, 7 * 60)
    assert row["max_marketing_per_day"] == 1
    # The old snapshot's objects are still readable while someone holds their refs.
    assert ray.get(first["users"]).num_rows == first["users_count"]

    version = changed["version"]
    now = pl.DataFrame({"user_id": [user], "last_active_at": [synth.REFERENCE_TIME]})
    assert ray.get(shard.upsert_activity.remote(now.to_arrow())) == 1
    scores = pl.DataFrame({"user_id": [user], "affinity_home": [0.9]}).to_arrow()
    assert ray.get(shard.upsert_affinities.remote(scores)) == 1
    latest = ray.get(shard.snapshot.remote())
    assert latest["version"] != version
    row = _frames(latest)[0].filter(pl.col("user_id") == user).row(0, named=True)
    assert row["last_active_at"] == synth.REFERENCE_TIME
    assert row["affinity_home"] == pytest.approx(0.9)
    assert row["affinity_fashion"] is None  # an upsert replaces the user's whole row


def test_restarted_shard_rebuilds_the_same_snapshot(env):
    for index, shard in enumerate(env["shards"]):
        live_users, live_devices = _frames(ray.get(shard.snapshot.remote()))
        reborn = UserShard(env["settings"], index)  # a new instance over the same Redis
        snap = reborn.snapshot()
        users, devices = _frames(snap)
        assert snap["users_count"] == live_users.height
        assert users.sort("user_id").equals(live_users.sort("user_id"))
        assert devices.sort("device_id").equals(live_devices.sort("device_id"))
        assert reborn.snapshot()["version"] == snap["version"]


def test_empty_shard_snapshot(env):
    settings = env["settings"].with_overrides(key_prefix=f"test-import-empty-{uuid.uuid4().hex}:")
    snap = UserShard(settings, 0).snapshot()
    assert snap["users_count"] == 0 and snap["devices_count"] == 0
    users, devices = _frames(snap)
    assert users.height == 0 and "has_push_device" in users.columns
    assert devices.columns == ["user_id", "device_id", "platform", "token"]


def test_cli_finds_running_shards(env):
    assert running_shards(env["settings"].topology.namespace) == SHARDS
    assert running_shards(f"nobody-{uuid.uuid4().hex}") == 0


def test_shard_of_is_deterministic_for_import():
    ids = [f"s{i}" for i in range(100)]
    assert np.array_equal(shard_of(ids, SHARDS), shard_of(ids, SHARDS))


def test_cli_import_needs_files(tmp_path):
    from typer.testing import CliRunner

    from ops.cli import app

    result = CliRunner().invoke(app, ["import", str(tmp_path)])
    assert result.exit_code == 2
    assert "no users/devices/wishlists" in result.output
