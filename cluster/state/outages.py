"""What counts as an outage of the ground rather than a fault of the work: the one list of
Redis and Ray errors that code above may wait out instead of blaming an entry for, so no
layer above the stores names Redis's exception classes itself."""

from __future__ import annotations

import ray
from redis import exceptions as redis_errors

# Failures of the ground, not of the entry: Redis (a master down or failing over) or an
# actor being restarted. They never count toward `poison_attempts`: an outage longer than
# the retries must not dead-letter good events (seen with a Redis Cluster master killed).
OUTAGES = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.BusyLoadingError,
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is an outage, as above."""
    while exc is not None:
        if isinstance(exc, OUTAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
