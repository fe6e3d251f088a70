"""Bulk loads that bypass HTTP: whole Arrow tables of devices or wishlists partitioned by
shard, one actor call per shard per chunk (the base of `herald import`, used by benchmarks
and by tests that need thousands of users)."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import redis

from cluster.names import shard_name
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from cluster.tables.devices import device_id_for


def import_devices(settings: HeraldSettings, devices: pa.Table, chunk_rows: int = 50_000) -> int:
    """Register (user_id, platform, token[, app_id]) rows; returns the number written.

    Device ids follow the same rule as `POST /v1/devices`, so a later HTTP registration of
    the same token updates the imported row."""
    if "app_id" not in devices.column_names:
        devices = devices.append_column("app_id", pa.array(["default"] * devices.num_rows))
    ids = [
        device_id_for(p, a, t)
        for p, a, t in zip(
            devices["platform"].to_pylist(),
            devices["app_id"].to_pylist(),
            devices["token"].to_pylist(),
            strict=True,
        )
    ]
    devices = devices.append_column("device_id", pa.array(ids, pa.string()))
    devices = devices.append_column("active", pa.array(np.ones(devices.num_rows, dtype=bool)))
    devices = devices.append_column("updated_at", pa.array(np.full(devices.num_rows, time.time())))
    owners = shard_of(devices["user_id"], settings.shards)
    handles = [
        ray.get_actor(shard_name(i), namespace=settings.namespace) for i in range(settings.shards)
    ]
    calls = []
    for shard in np.unique(owners):
        part = devices.filter(pa.array(owners == shard))
        for start in range(0, part.num_rows, chunk_rows):
            calls.append(handles[int(shard)].upsert_devices.remote(part.slice(start, chunk_rows)))
    written = sum(ray.get(calls))
    client = redis.Redis.from_url(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    key = settings.key("devices", "owner")
    for start in range(0, devices.num_rows, 10_000):
        chunk = devices.slice(start, 10_000)
        pipe.hset(
            key,
            mapping=dict(
                zip(chunk["device_id"].to_pylist(), chunk["user_id"].to_pylist(), strict=True)
            ),
        )
    pipe.execute()
    return written


def import_wishlists(
    settings: HeraldSettings, wishlists: pa.Table, chunk_users: int = 50_000
) -> int:
    """Replace the wishlists of every user in (user_id, product_id) rows, like
    `PUT /v1/users/{id}/wishlist` does for one user; returns the number of rows written.

    One actor call per shard per chunk of users; a user's rows never straddle two calls
    (each call replaces its users' whole lists)."""
    frame = pl.from_arrow(wishlists.select(["user_id", "product_id"]))
    users = frame["user_id"].unique(maintain_order=True)
    owners = shard_of(users.to_arrow(), settings.shards)
    calls = []
    for shard in np.unique(owners):
        handle = ray.get_actor(shard_name(int(shard)), namespace=settings.namespace)
        mine = users.filter(pl.Series(owners == shard))
        for start in range(0, mine.len(), chunk_users):
            part = mine.slice(start, chunk_users)
            rows = frame.filter(pl.col("user_id").is_in(part))
            calls.append(handle.replace_wishlists.remote(rows.to_arrow(), part.to_list()))
    return sum(ray.get(calls))
