"""How long a push may still go out, and how many pushes a user may get a minute.

A push's deadline is `accepted_at + ttl_s`: `ttl_s` is the event's (kept in the row's
`rich`, where the senders read it for `apns-expiration` / `android.ttl`), else the default
of its kind — order updates and requested notifications a day, price drops six hours, a
campaign until its `ends_at` — written into `rich` at routing, so the provider is told the
same deadline Herald keeps. Counting from `accepted_at` means a retry or a quiet-hours hold
never extends it.

Past the deadline a push is *expired*: dropped, recorded, counted — never sent late and
never dead-lettered (there is nothing to replay: the moment has gone). A first attempt
with `ttl_s: 0` ("now or never") is still sent once; everything scheduled (a retry, a held
push) and every first attempt of a positive TTL that is already past is expired.

Only push channels (APNs, FCM) expire; the inbox keeps its item.

All of it is column expressions over a batch: no Python loop per delivery.
"""

from __future__ import annotations

import polars as pl

from cluster.vocabulary import PUSH_CHANNELS

_TTL = pl.col("rich").str.json_path_match("$.ttl_s").cast(pl.Int64, strict=False)


def with_default_ttl(deliveries: pl.DataFrame, ttl_s: pl.Expr | int | None) -> pl.DataFrame:
    """`deliveries` whose push rows without a `ttl_s` in `rich` get `ttl_s` (an int, or an
    Int64 expression per row such as a campaign's `ends_at - accepted_at`; negative means
    0). Rows that already say keep theirs; inbox rows are left as they are."""
    if ttl_s is None or deliveries.height == 0:
        return deliveries
    ttl = (pl.lit(ttl_s) if isinstance(ttl_s, int) else ttl_s).cast(pl.Int64)
    ttl = pl.when(ttl < 0).then(0).otherwise(ttl)
    needs = pl.col("channel").is_in(PUSH_CHANNELS) & _TTL.is_null()
    # `rich` is a JSON object (or null): the key goes in front, so no other key moves.
    rich = pl.col("rich")
    key = pl.lit('{"ttl_s":') + ttl.cast(pl.String)
    filled = (
        pl.when(rich.is_null() | (rich.str.strip_chars() == "{}"))
        .then(key + pl.lit("}"))
        .otherwise(key + pl.lit(",") + rich.str.strip_chars().str.slice(1))
    )
    return deliveries.with_columns(rich=pl.when(needs).then(filled).otherwise(rich))


def deadline() -> pl.Expr:
    """Epoch seconds after which the row's push is expired; null for no deadline."""
    return (pl.col("accepted_at") + _TTL).alias("deadline")


def expired(now: float, scheduled: bool) -> pl.Expr:
    """Whether each row's push is past its deadline at `now`. `scheduled`: the rows come
    from the retry set (retries, released quiet-hours holds), where even `ttl_s: 0` is
    past; a fresh first attempt of `ttl_s: 0` is sent once."""
    past = deadline() < now
    if not scheduled:
        past = past & ((pl.col("attempt") > 0) | (_TTL > 0))
    return (pl.col("channel").is_in(PUSH_CHANNELS) & past).fill_null(False)


def held_past_deadline(send_after: pl.Expr) -> pl.Expr:
    """A quiet-hours hold that would end after the push's deadline: expired at once, not
    kept in the retry set until the window ends only to be dropped then."""
    return (pl.col("channel").is_in(PUSH_CHANNELS) & (send_after > deadline())).fill_null(False)


def over_limit(pushes: pl.DataFrame, before: pl.DataFrame, limit: int) -> pl.Series:
    """Per row of `pushes` (one row per notification with a push: `notification_id`,
    `user_id`, in the batch's order), whether it is over the user's `limit` a minute,
    given `before` (user_id, count): what each user had this minute before the batch.
    The batch's own notifications count in order, so the first ones of a user go out."""
    ranked = pushes.with_columns(_n=pl.int_range(1, pl.len() + 1).over("user_id"))
    counted = ranked.join(before, on="user_id", how="left", maintain_order="left")
    return counted.select((pl.col("count").fill_null(0) + pl.col("_n")) > limit).to_series()
