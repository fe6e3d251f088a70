"""The Redis clients every Herald process uses, configured once.

A Redis restart leaves every pooled connection dead, and redis-py only finds out when a
command fails on one ("Connection lost" while writing): a fan-out, a sender call or a
lease renewal then fails although Redis is back. So a connection idle for a few seconds is
pinged before it is used (`health_check_interval`), and connection errors and timeouts are
retried on a fresh connection with a short backoff. A retried write can run twice; every
write Herald makes is idempotent or a counter, where that is accepted.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from cluster.settings import HeraldSettings

HEALTH_CHECK_S = 5
RETRIES = 3


def _options(settings: HeraldSettings, retry_class: type[Retry] | type[AsyncRetry]) -> dict:
    """The one configuration of both clients (see the module docstring); only the Retry
    class differs, because redis-py's asyncio client needs its own."""
    return {
        "url": settings.state.redis_url,
        "health_check_interval": HEALTH_CHECK_S,
        "retry": retry_class(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


def async_client(settings: HeraldSettings) -> aioredis.Redis:
    """For the actors and the API, which run on an event loop."""
    return aioredis.Redis.from_url(**_options(settings, AsyncRetry))


def sync_client(settings: HeraldSettings) -> redis.Redis:
    """For drivers and scripts (the CLI, bulk imports, tests) that run no event loop."""
    return redis.Redis.from_url(**_options(settings, Retry))


async def ping(client: aioredis.Redis, timeout_s: float = 2.0) -> bool:
    """Whether Redis answers within `timeout_s` (readiness); an error is a no, not a raise."""
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=timeout_s))
    except Exception:
        return False
