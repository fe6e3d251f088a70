"""The fallback channel: an HTTP webhook (typically an email or SMS service) that gets an
order update when no push reached the user. JSON in, any 2xx means delivered."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import polars as pl
import pyarrow as pa

from cluster.settings import HeraldSettings
from cluster.tables.deliveries import RESULTS

# status code class → outcome; decided once, like the push providers' tables.
RETRYABLE = {408, 425, 429}


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status in RETRYABLE or status >= 500:
        return "retry"
    return "failed"


class WebhookClient:
    """`ProviderClient` for the fallback webhook: one POST per delivery, with the delivery
    id as `Idempotency-Key` so the receiver can drop a resend."""

    def __init__(self, settings: HeraldSettings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """One pooled httpx client for the sender's life."""
        self.client = httpx.AsyncClient(timeout=self.settings.fallback.timeout_s)

    async def send(self, batch: pa.Table) -> pa.Table:
        """Every row posted concurrently; 2xx delivered, 408/425/429/5xx retried."""
        frame = pl.from_arrow(batch)

        async def one(row: dict) -> tuple[str, str, str | None, float | None, float]:
            body = {
                "notification_id": row["notification_id"],
                "user_id": row["user_id"],
                "title": row["title"],
                "body": row["body"],
                "data": json.loads(row["data"]),
            }
            try:
                answer = await self.client.post(
                    self.settings.fallback.webhook_url,
                    json=body,
                    headers={"Idempotency-Key": row["delivery_id"]},
                )
            except httpx.HTTPError as exc:
                return row["delivery_id"], "retry", type(exc).__name__, None, time.time()
            retry_after = answer.headers.get("retry-after")
            return (
                row["delivery_id"],
                outcome_of(answer.status_code),
                None if answer.is_success else f"HTTP {answer.status_code}",
                float(retry_after) if retry_after and retry_after.isdigit() else None,
                time.time(),
            )

        rows = await asyncio.gather(*[one(r) for r in frame.iter_rows(named=True)])
        columns = list(zip(*rows, strict=True)) if rows else [[]] * 5
        return pa.table(
            dict(zip(RESULTS.names, [list(c) for c in columns], strict=True)), schema=RESULTS
        )

    async def close(self) -> None:
        """Close the httpx client's connections."""
        if self.client is not None:
            await self.client.aclose()
