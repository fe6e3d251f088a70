"""Device tokens for deliveries that come back without one, part of the delivery step.

The retry set and the dead letters keep a delivery's device id, never its token
(`cluster.state.retries.UNSTORED`). When such a row is sent again, its push token is looked
up afresh in the shard that owns its user (`UserShard.tokens_for`: one call per shard, all
in parallel): the device's token as of now, matched on device *and* user, so a phone that
changed hands since is not pushed to for its former owner. A device no longer active there
is `device_gone`: recorded `dead` (the token is gone) with that reason, counted, not sent.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
import redis.asyncio as aioredis

from actors.flows.shards import Shards
from cluster import metrics
from cluster.sharding import shard_of
from cluster.state.deliveries import DeliveryState
from cluster.vocabulary import PUSH_CHANNELS

GONE_ERROR = "device gone: unregistered, or its token died, since the retry was scheduled"


async def with_tokens(
    shards: Shards, deliveries: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(`deliveries` with every token filled in, the push rows whose device is gone).

    Rows that carry a token keep it; a non-push row without one gets "" (inbox, webhook)."""
    if "token" not in deliveries.columns:
        deliveries = deliveries.with_columns(token=pl.lit(None, dtype=pl.String))
    push = pl.col("channel").is_in(PUSH_CHANNELS)
    missing = pl.col("token").is_null()
    deliveries = deliveries.with_columns(
        token=pl.when(missing & ~push).then(pl.lit("")).otherwise(pl.col("token"))
    )
    wanted = deliveries.filter(missing)
    if wanted.height == 0:
        return deliveries, deliveries.clear()
    found = await _active_tokens(shards, wanted)
    joined = wanted.drop("token").join(found, on=["device_id", "user_id"], how="left")
    resolved = joined.filter(pl.col("token").is_not_null()).select(deliveries.columns)
    gone = joined.filter(pl.col("token").is_null()).select(deliveries.columns)
    return pl.concat([deliveries.filter(~missing), resolved]), gone


async def _active_tokens(shards: Shards, rows: pl.DataFrame) -> pl.DataFrame:
    """(device_id, user_id, token) of the rows' devices still active, from their shards."""
    owners = shard_of(rows["user_id"].to_list(), shards.settings.topology.shards)
    device_ids = np.asarray(rows["device_id"].to_list(), dtype=object)
    calls = [
        shards.shard(int(s)).tokens_for.remote(device_ids[owners == s].tolist())
        for s in np.unique(owners)
    ]
    tables: list[pa.Table] = await asyncio.gather(*calls)
    found = pl.concat([pl.from_arrow(t) for t in tables], how="vertical_relaxed")
    return found.unique(["device_id", "user_id"], keep="last")


def record_gone(
    state: DeliveryState, counts: Counter[str], gone: pl.DataFrame, pipe: aioredis.client.Pipeline
) -> None:
    """Queue the gone rows' status (`dead`, with why) on `pipe`, and count them."""
    if gone.height == 0:
        return
    state.record_results(
        gone.with_columns(
            outcome=pl.lit("dead_token"),
            error=pl.lit(GONE_ERROR),
            acked_at=pl.lit(None, dtype=pl.Float64),
            attempts=pl.col("attempt"),
        ),
        pipe,
        status="dead",
    )
    counts["device_gone"] += gone.height
    for (lane,), group in gone.group_by("lane"):
        metrics.count_suppressed(lane, "device_gone", group.height)
