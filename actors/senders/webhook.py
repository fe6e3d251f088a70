"""The fallback channel: an HTTP webhook (typically an email or SMS service) that gets an
order update when no push reached the user. JSON in, any 2xx means delivered. The JSON
carries the delivery's `rich` extras as given, so the receiver can use the image or the
deeplink in its email or text."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import polars as pl
import pyarrow as pa

from actors.senders.base import Answer, answer_table, refused
from cluster.settings import HeraldSettings
from cluster.tables.deliveries import Rich, conform, parse_rich

# status code class → outcome; decided once, like the push providers' tables.
RETRYABLE = {408, 425, 429}


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status in RETRYABLE or status >= 500:
        return "retry"
    return "failed"


def webhook_body(row: dict[str, Any], rich: Rich) -> dict[str, Any]:
    """The JSON posted for one delivery: its content, and its `rich` extras as given
    (`Rich.present`) when it has any — a row without extras posts what it always did."""
    body = {
        "notification_id": row["notification_id"],
        "user_id": row["user_id"],
        "title": row["title"],
        "body": row["body"],
        "data": json.loads(row["data"]),
    }
    if row["rich"] is not None:
        body["rich"] = rich.present()
    return body


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
        """Every row posted concurrently; 2xx delivered, 408/425/429/5xx retried; a row
        whose `rich` is outside the contract is answered failed and not posted."""
        frame = conform(pl.from_arrow(batch))
        riches, errors = parse_rich(frame["rich"])
        rows = frame.iter_rows(named=True)
        answers = await asyncio.gather(
            *[
                self._post(row, rich) if error is None else refused(error)
                for row, rich, error in zip(rows, riches, errors, strict=True)
            ]
        )
        return answer_table(frame["delivery_id"].to_arrow(), answers)

    async def _post(self, row: dict[str, Any], rich: Rich) -> Answer:
        try:
            answer = await self.client.post(
                self.settings.fallback.webhook_url,
                json=webhook_body(row, rich),
                headers={"Idempotency-Key": row["delivery_id"]},
            )
        except httpx.HTTPError as exc:
            return "retry", type(exc).__name__, None, time.time()
        retry_after = answer.headers.get("retry-after")
        return (
            outcome_of(answer.status_code),
            None if answer.is_success else f"HTTP {answer.status_code}",
            float(retry_after) if retry_after and retry_after.isdigit() else None,
            time.time(),
        )

    async def close(self) -> None:
        """Close the httpx client's connections."""
        if self.client is not None:
            await self.client.aclose()
