"""Feedback actions (`POST /v1/feedback`) in Redis, on their way to the Parquet log.

An action is counted once per (notification, action): a flag on the notification's hash
decides, and only a first action bumps the campaign variant's count (what Thompson sampling
reads) and joins the feedback stream. Router 0 moves the stream to the Parquet feedback log
(`pipelines.feedback_log`) a batch at a time and saves how far it got after each file, so a
crash in between writes a batch twice — harmless, training counts any action once.
"""

from __future__ import annotations

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys


class FeedbackStore:
    def __init__(self, settings: HeraldSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis

    async def record(
        self,
        notification_id: str,
        user_id: str,
        action: str,
        meta: dict,
        campaign_id: str | None,
        now: float,
    ) -> bool:
        """Count one action; False when this notification already had it."""
        record = keys.notification(self.settings, notification_id)
        first = await self.redis.hsetnx(record, f"fb:{action}", now)
        if not first:
            return False
        pipe = self.redis.pipeline(transaction=False)
        if campaign_id is not None and meta.get("variant_id"):
            field = f"variant:{meta['variant_id']}:{action}"
            pipe.hincrby(keys.campaign(self.settings, campaign_id), field, 1)
        pipe.xadd(
            keys.feedback(self.settings),
            {
                "notification_id": notification_id,
                "user_id": user_id,
                "action": action,
                "type": meta.get("type") or "",
                "campaign_id": campaign_id or "",
                "variant_id": meta.get("variant_id") or "",
                "at": now,
            },
            maxlen=self.settings.feedback.stream_max,
            approximate=True,
        )
        await pipe.execute()
        return True

    async def next_batch(self, schema: dict, count: int = 10_000) -> tuple[pl.DataFrame, str]:
        """The actions after the saved position, as columns of `schema`, and the stream id
        of the last one (save it with `mark_exported` once they are written)."""
        last = (await self.redis.get(keys.feedback_exported(self.settings)) or b"0-0").decode()
        entries = await self.redis.xrange(keys.feedback(self.settings), min=f"({last}", count=count)
        if not entries:
            return pl.DataFrame(schema=schema), last
        rows = pl.DataFrame(
            [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
        ).select(*[pl.col(name).cast(dtype) for name, dtype in schema.items()])
        position = entries[-1][0]
        return rows, position.decode() if isinstance(position, bytes) else position

    async def mark_exported(self, position: str) -> None:
        await self.redis.set(keys.feedback_exported(self.settings), position)
