"""The Redis clients every Herald process uses, configured once.

A Redis restart leaves every pooled connection dead, and redis-py only finds out when a
command fails on one ("Connection lost" while writing): a fan-out, a sender call or a
lease renewal then fails although Redis is back. So a connection idle for a few seconds is
pinged before it is used (`health_check_interval`), and connection errors and timeouts are
retried on a fresh connection with a short backoff. A retried write can run twice; every
write Herald makes is idempotent or a counter, where that is accepted.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from cluster.settings import HeraldSettings

HEALTH_CHECK_S = 5
RETRIES = 3


def async_client(settings: HeraldSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.state.redis_url,
        health_check_interval=HEALTH_CHECK_S,
        retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        retry_on_error=[ConnectionError, TimeoutError],
    )


def sync_client(settings: HeraldSettings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.state.redis_url,
        health_check_interval=HEALTH_CHECK_S,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        retry_on_error=[ConnectionError, TimeoutError],
    )
