"""Bulk loads that bypass HTTP: whole Arrow tables of users, devices or wishlists
partitioned by shard, one actor call per shard per chunk, every call in flight at once (the
base of `herald import`, used by benchmarks and by tests that need thousands of users).

No Python loop per row except where a hash has no vectorized form: device ids are blake2b
(`device_id_for`, shared with `POST /v1/devices`), which neither polars nor Arrow computes
column-wise, so their input strings are built column-wise and hashed in one list
comprehension (≈ 0.7 µs per device here)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import polars as pl
import pyarrow as pa
import ray

from cluster.names import shard_name
from cluster.settings import HeraldSettings
from cluster.sharding import shard_of
from cluster.state.clients import sync_client
from cluster.state.devices import write_owners
from cluster.tables.devices import device_id_for


def device_ids(platform, app_id, token) -> pa.Array:
    """`device_id_for(platform, app_id, token)` of whole columns (Arrow or polars); the
    `platform|app_id|token` strings are built by polars, only blake2b runs per row."""
    inputs = pl.select(
        pl.concat_str(
            [pl.lit(pl.Series(c)).cast(pl.String) for c in (platform, app_id, token)],
            separator="|",
        )
    ).to_series()
    blake2b = hashlib.blake2b
    ids = ["dev_" + blake2b(k.encode(), digest_size=12).hexdigest() for k in inputs.to_list()]
    return pa.array(ids, pa.string())


assert device_ids(["ios"], ["a"], ["t"])[0].as_py() == device_id_for("ios", "a", "t")


def running_shards(namespace: str) -> int:
    """How many UserShard actors the running cluster has in `namespace`: rows are routed by
    shard count, so an import must use the running stack's, which only Ray knows."""
    prefix = shard_name(0).removesuffix("0")
    found = [
        int(actor["name"].removeprefix(prefix))
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == namespace
        and actor["name"].startswith(prefix)
        and actor["name"].removeprefix(prefix).isdigit()
    ]
    return max(found) + 1 if found else 0


def _handles(settings: HeraldSettings) -> list:
    return [
        ray.get_actor(shard_name(i), namespace=settings.topology.namespace)
        for i in range(settings.topology.shards)
    ]


def _per_shard(settings: HeraldSettings, table: pa.Table, method: str, chunk_rows: int) -> list:
    """Call `method` of each row's owning shard (by `user_id`) with chunks of at most
    `chunk_rows` rows; all calls in flight at once. Returns their object refs."""
    owners = shard_of(table["user_id"], settings.topology.shards)
    handles = _handles(settings)
    order = np.argsort(owners, kind="stable")
    table = table.take(pa.array(order))
    bounds = np.searchsorted(owners[order], np.arange(settings.topology.shards + 1))
    calls = []
    for shard in range(settings.topology.shards):
        begin, end = int(bounds[shard]), int(bounds[shard + 1])
        for start in range(begin, end, chunk_rows):
            part = table.slice(start, min(chunk_rows, end - start))
            calls.append(getattr(handles[shard], method).remote(part))
    return calls


def import_users(settings: HeraldSettings, users: pa.Table, chunk_rows: int = 50_000) -> int:
    """Write user rows in the synth `users.parquet` shape — user_id, country, locale,
    timezone, attributes (JSON object string), last_active_at, affinity_<category> — to the
    owning shards' profiles, activity and affinities (`UserShard.upsert_users`: one actor
    call per shard per chunk of `chunk_rows`, all in parallel). Returns the users written."""
    if users.num_rows == 0:
        return 0
    if "updated_at" not in users.column_names:
        now = np.full(users.num_rows, time.time())
        users = users.append_column("updated_at", pa.array(now))
    return sum(ray.get(_per_shard(settings, users, "upsert_users", chunk_rows)))


def import_devices(settings: HeraldSettings, devices: pa.Table, chunk_rows: int = 50_000) -> int:
    """Register (user_id, platform, token[, app_id, last_seen_at]) rows; returns the number
    written. `last_seen_at` (epoch s, the app's last sign of life) defaults to now.

    Device ids follow the same rule as `POST /v1/devices`, so a later HTTP registration of
    the same token updates the imported row. The tokens reach Redis sealed, as a
    registration's do: the shards' write-through seals them (`cluster.state.shards`)."""
    if devices.num_rows == 0:
        return 0
    if "app_id" not in devices.column_names:
        devices = devices.append_column("app_id", pa.array(["default"] * devices.num_rows))
    ids = device_ids(devices["platform"], devices["app_id"], devices["token"])
    devices = devices.append_column("device_id", ids)
    devices = devices.append_column("active", pa.array(np.ones(devices.num_rows, dtype=bool)))
    devices = devices.append_column("updated_at", pa.array(np.full(devices.num_rows, time.time())))
    if "last_seen_at" not in devices.column_names:  # an import's own timestamps are kept
        seen = pa.array(np.full(devices.num_rows, time.time()))
        devices = devices.append_column("last_seen_at", seen)
    calls = _per_shard(settings, devices, "upsert_devices", chunk_rows)
    # device → owner, for `DELETE /v1/devices/{id}` and dead tokens; written while the
    # shards work (an owner entry whose shard write then fails points at no device, which
    # a DELETE answers like an unknown id).
    write_owners(settings, sync_client(settings), ids.to_pylist(), devices["user_id"].to_pylist())
    return sum(ray.get(calls))


def import_wishlists(
    settings: HeraldSettings, wishlists: pa.Table, chunk_users: int = 50_000
) -> int:
    """Replace the wishlists of every user in (user_id, product_id) rows, like
    `PUT /v1/users/{id}/wishlist` does for one user; returns the number of rows written.

    One actor call per shard per chunk of users; a user's rows never straddle two calls
    (each call replaces its users' whole lists)."""
    frame = pl.from_arrow(wishlists.select(["user_id", "product_id"]))
    users = frame["user_id"].unique(maintain_order=True)
    owners = shard_of(users.to_arrow(), settings.topology.shards)
    calls = []
    for shard in np.unique(owners):
        handle = ray.get_actor(shard_name(int(shard)), namespace=settings.topology.namespace)
        mine = users.filter(pl.Series(owners == shard))
        for start in range(0, mine.len(), chunk_users):
            part = mine.slice(start, chunk_users)
            rows = frame.filter(pl.col("user_id").is_in(part))
            calls.append(handle.replace_wishlists.remote(rows.to_arrow(), part.to_list()))
    return sum(ray.get(calls))
