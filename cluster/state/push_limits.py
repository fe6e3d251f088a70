"""Per-user push counts per minute, behind `HERALD_USER_PUSH_LIMIT_PER_MIN`.

`<prefix>{push_minute:<epoch minute>}` is one hash a minute, user id → transactional
notifications with a push routed to that user in that minute (a fixed window: simple,
shared by every router, and one script call per batch). It expires two minutes after its
minute began. Counting is done before the limit is applied, so notifications over the
limit count too: a user flooded by a runaway producer stays limited for the window.
"""

from __future__ import annotations

import time

import polars as pl
import redis.asyncio as aioredis

from cluster.settings import HeraldSettings
from cluster.state import keys

# KEYS[1]: the minute's hash; ARGV[1]: TTL; then (user, n) pairs. Returns each user's count
# before this batch.
_COUNT = """
local before = {}
for i = 2, #ARGV, 2 do
  local after = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  before[#before + 1] = after - tonumber(ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return before
"""


class PushLimits:
    def __init__(self, settings: HeraldSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self._count = client.register_script(_COUNT)

    async def count(self, pushes: pl.DataFrame) -> pl.DataFrame:
        """Add `pushes` (one row per notification with a push: `user_id`) to this minute's
        counts; answer (user_id, count) with each user's count before them."""
        per_user = pushes.group_by("user_id", maintain_order=True).len()
        if per_user.height == 0:
            return pl.DataFrame(schema={"user_id": pl.String, "count": pl.Int64})
        minute = int(time.time() // 60)
        args: list[str | int] = [120]
        for user_id, n in per_user.iter_rows():
            args += [user_id, n]
        before = await self._count(keys=[keys.push_minute(self.settings, minute)], args=args)
        return per_user.select("user_id").with_columns(
            count=pl.Series([int(b) for b in before], dtype=pl.Int64)
        )
