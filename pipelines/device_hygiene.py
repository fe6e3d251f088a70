"""Device hygiene as polars expressions over a shard's devices table: which devices are too
long unseen to push to, and which dead tokens have been kept long enough.

- Stale: an active device whose `last_seen_at` (registration or the app's last heartbeat)
  is older than `settings.protection.device_stale_days` gets no pushes — an app that was
  uninstalled without the provider telling us yet, or a phone in a drawer. Its row stays: a
  heartbeat or a registration of the same token brings it back. A device without
  `last_seen_at` (null) is not stale: the shard fills the column of old rows at load, so a
  null here only comes from a caller that never had one.
- Dead: a token the provider answered Unregistered / 410 for is kept as an inactive row for
  `settings.protection.dead_token_keep_days` after it was switched off (`updated_at`), so a
  late re-registration of the same token is recognized as the same device, then deleted.

Pure functions: the shard applies them to whole columns, the unit tests to small frames.
"""

from __future__ import annotations

import polars as pl

DAY_S = 86_400.0
STALE_COLUMN = "stale_devices"  # per user: active devices skipped as stale


def stale_cutoff(now: float, stale_days: int) -> float:
    """The `last_seen_at` below which a device is stale at `now`."""
    return now - stale_days * DAY_S


def is_stale(cutoff: float) -> pl.Expr:
    """True for a device last seen before `cutoff`; never for a null `last_seen_at`."""
    return (pl.col("last_seen_at") < cutoff).fill_null(False)


def split_stale(devices: pl.DataFrame, cutoff: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(fresh, stale) rows of `devices` (any frame with `last_seen_at`), one filter each."""
    stale = is_stale(cutoff)
    return devices.filter(~stale), devices.filter(stale)


def stale_counts(stale: pl.DataFrame) -> pl.DataFrame:
    """(user_id, `STALE_COLUMN` UInt32): how many stale devices each user has."""
    return stale.group_by("user_id").agg(pl.len().cast(pl.UInt32).alias(STALE_COLUMN))


def with_stale_counts(rows: pl.DataFrame, stale: pl.DataFrame) -> pl.DataFrame:
    """`rows` (with user_id) with `STALE_COLUMN`, 0 for users without stale devices."""
    return rows.join(
        stale_counts(stale), on="user_id", how="left", maintain_order="left"
    ).with_columns(pl.col(STALE_COLUMN).fill_null(0))


def dead_expired(now: float, keep_days: int) -> pl.Expr:
    """True for an inactive device switched off (`updated_at`) `keep_days` or more ago (with
    0: every inactive device)."""
    return ~pl.col("active") & (pl.col("updated_at") <= now - keep_days * DAY_S)


def seen_at(devices: pl.DataFrame, now: float) -> pl.DataFrame:
    """`devices` with `last_seen_at` filled where missing: the row's `updated_at` (its
    registration) when it has one, else `now`."""
    fallback = pl.col("updated_at") if "updated_at" in devices.columns else pl.lit(now)
    if "last_seen_at" not in devices.columns:
        return devices.with_columns(last_seen_at=fallback.cast(pl.Float64))
    return devices.with_columns(
        last_seen_at=pl.coalesce(pl.col("last_seen_at"), fallback).cast(pl.Float64)
    )


def skipped(rows: pl.DataFrame) -> int:
    """Stale devices left out of `rows` (lookup or wisher rows, several per user): each
    user's `STALE_COLUMN` once; 0 without the column."""
    if STALE_COLUMN not in rows.columns or rows.height == 0:
        return 0
    return int(rows.unique("user_id")[STALE_COLUMN].sum())
