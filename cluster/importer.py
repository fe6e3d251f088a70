"""Bulk loads that bypass HTTP: whole Arrow tables of devices partitioned by shard, one
actor call per shard per chunk (the base of `herald import`, used by benchmarks)."""

from __future__ import annotations

import time

import numpy as np
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
