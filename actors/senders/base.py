"""The one interface every channel's provider client implements.

A provider client turns a `DELIVERIES` batch into provider requests and sorts every answer
into exactly one outcome (see `cluster.tables.deliveries.OUTCOMES`): *delivered*, *retry*
(429 with Retry-After, 5xx, connection errors), *dead_token* (the token will never work
again) or *failed* (payload/auth errors: retrying cannot help). The sorting table lives in
each provider's own module so it is decided once.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa


class ProviderClient(Protocol):
    """A long-lived client of one push provider, created inside the running event loop."""

    async def start(self) -> None:
        """Open connections; called once inside the actor's event loop."""

    async def send(self, batch: pa.Table) -> pa.Table:
        """Send every row of a DELIVERIES batch concurrently; answer a RESULTS table."""

    async def close(self) -> None:
        """Close connections."""
