"""The in-app inbox channel: Redis is the provider (`cluster.state.inbox.InboxStore` keeps
the per-user list and publishes to the live WebSocket feed), so this client only turns a
DELIVERIES batch into inbox items and answers every row it stored delivered.

Of a row's `rich` extras the item keeps what an inbox can show — `subtitle`, `image_url`,
`deeplink`, each only when present; the rest (sound, badge, priority, …) is about how a
phone is woken, which an inbox never does. A silent (`push_type: background`) row has
nothing to show and should never be routed here: it is answered failed
(`BackgroundPushInInbox`) and not stored, like a row whose `rich` is outside the contract.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa
import redis.asyncio as aioredis

from actors.senders.base import Answer, answer_table
from cluster.settings import HeraldSettings
from cluster.state.clients import async_client
from cluster.state.inbox import InboxStore
from cluster.tables.deliveries import Rich, conform, parse_rich, with_present

# The extras an inbox item carries, when present.
ITEM_EXTRAS = ("subtitle", "image_url", "deeplink")
BACKGROUND_REFUSED = "BackgroundPushInInbox"


def inbox_items(frame: pl.DataFrame, riches: list[Rich] | None = None) -> pl.DataFrame:
    """(user_id, notification_id, created_at, item) per delivery; the item is the JSON
    `GET /v1/users/{id}/inbox` answers. `data` is already a JSON object: it is spliced in
    rather than decoded and encoded again. `riches` (one per row, None when no row has
    extras) add `ITEM_EXTRAS` where given."""
    head = pl.struct(
        "notification_id", "title", "body", created_at="accepted_at"
    ).struct.json_encode()
    item = pl.concat_str(
        [head.str.strip_suffix("}"), pl.lit(',"data":'), pl.col("data"), pl.lit("}")]
    )
    if riches is not None:
        frame = frame.with_columns(
            pl.Series(key, [getattr(r, key) for r in riches], dtype=pl.String)
            for key in ITEM_EXTRAS
        )
        item = with_present(item, ITEM_EXTRAS)
    return frame.select(
        "user_id",
        "notification_id",
        pl.col("accepted_at").alias("created_at"),
        item.alias("item"),
    )


def refusals(riches: list[Rich], errors: list[str | None]) -> list[str | None]:
    """Per row, why it is not stored (None: stored): `rich` outside the contract, or a
    silent push, which has nothing to show."""
    return [
        error or (BACKGROUND_REFUSED if rich.background else None)
        for rich, error in zip(riches, errors, strict=True)
    ]


class InboxClient:
    """ProviderClient for the inbox: a Redis write is final, so every stored row is
    delivered (the store's add is idempotent, so a redelivered batch adds nothing twice)."""

    def __init__(self, settings: HeraldSettings) -> None:
        self.settings = settings
        self.redis: aioredis.Redis | None = None
        self.store: InboxStore | None = None

    async def start(self) -> None:
        self.redis = async_client(self.settings)
        self.store = InboxStore(self.settings, self.redis)

    async def send(self, batch: pa.Table) -> pa.Table:
        """Store the batch's items (one pipeline); rows not stored are answered failed."""
        frame = conform(pl.from_arrow(batch))
        riches, errors = parse_rich(frame["rich"])
        refused = refusals(riches, errors)
        if frame["rich"].null_count() == frame.height:
            items = inbox_items(frame)
        else:
            stored = pl.Series([e is None for e in refused], dtype=pl.Boolean)
            kept = [r for r, e in zip(riches, refused, strict=True) if e is None]
            items = inbox_items(frame.filter(stored), kept)
        await self.store.add(items)
        now = time.time()
        answers: list[Answer] = [
            ("delivered", None, None, now) if e is None else ("failed", e, None, now)
            for e in refused
        ]
        return answer_table(frame["delivery_id"].to_arrow(), answers)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
