"""The in-app inbox channel: Redis is the provider (`cluster.state.inbox.InboxStore` keeps
the per-user list and publishes to the live WebSocket feed), so this client only turns a
DELIVERIES batch into inbox items and answers every row delivered.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state.clients import async_client
from cluster.state.inbox import InboxStore
from cluster.tables.deliveries import RESULTS


def inbox_items(frame: pl.DataFrame) -> pl.DataFrame:
    """(user_id, notification_id, created_at, item) per delivery; the item is the JSON
    `GET /v1/users/{id}/inbox` answers. `data` is already a JSON object: it is spliced in
    rather than decoded and encoded again."""
    head = pl.struct(
        "notification_id", "title", "body", created_at="accepted_at"
    ).struct.json_encode()
    return frame.select(
        "user_id",
        "notification_id",
        pl.col("accepted_at").alias("created_at"),
        pl.concat_str(
            [head.str.strip_suffix("}"), pl.lit(',"data":'), pl.col("data"), pl.lit("}")]
        ).alias("item"),
    )


class InboxClient:
    """ProviderClient for the inbox: a Redis write is final, so every answer is delivered
    (the store's add is idempotent, so a redelivered batch adds nothing twice)."""

    def __init__(self, settings: HeraldSettings) -> None:
        self.settings = settings
        self.redis: aioredis.Redis | None = None
        self.store: InboxStore | None = None

    async def start(self) -> None:
        self.redis = async_client(self.settings)
        self.store = InboxStore(self.settings, self.redis)

    async def send(self, batch: pa.Table) -> pa.Table:
        frame = pl.from_arrow(batch)
        await self.store.add(inbox_items(frame))
        now = time.time()
        return pa.table(
            {
                "delivery_id": frame["delivery_id"].to_arrow(),
                "outcome": pa.array(["delivered"] * frame.height, pa.string()),
                "error": pa.nulls(frame.height, pa.string()),
                "retry_after_s": pa.nulls(frame.height, pa.float64()),
                "acked_at": pa.array([now] * frame.height, pa.float64()),
            },
            schema=RESULTS,
        )

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
