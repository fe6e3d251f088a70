"""Campaign eligibility: which users of one shard may get a marketing campaign now, later (quiet
hours) or not at all (and why) — pure functions over a polars frame of candidate users, no
Python loop over users (only over the few hundred distinct time zones). Price drops go
through the same functions, with their own category (`price_alert`) and one row per (event,
wisher) notification (`split`, `repeat`, `over_cap_in_batch`).

Input columns: `user_id` String; `timezone` String (IANA name; null or unknown → UTC); `push`,
`inbox`, `cat_marketing` Boolean (null → True); `quiet_start_min`, `quiet_end_min` Int16
(minutes after local midnight, 0–1439; null, equal, or out of range → no quiet hours);
`max_marketing_per_day` Int32 (null → 3); `has_push_device` Boolean (null → False);
optionally `stale_devices` (devices skipped as stale: a user push cannot reach only because
of them is suppressed as `stale_device` rather than `no_reachable_channel`).

Quiet hours are wall-clock rules: a user is quiet at `now` when the local time of day (in
their zone, at `now`) lies in `[start, end)`, or in `[start, 24:00) ∪ [00:00, end)` when the
window wraps past midnight. The window then ends at the first instant after `now` at which
the local wall clock reads `end` (or later) on the right local date — today, or tomorrow
when the user is in the part of a wrapping window before midnight. Two DST consequences:

- ambiguous end (clock falls back, the end time happens twice): the first occurrence after
  `now` — the earlier one unless `now` already lies past it, in the repeated hour;
- nonexistent end (clock springs forward over it): the instant of the jump, when the wall
  clock first reads past the end — e.g. a window ending 02:30 on a night that jumps from
  02:00 to 03:00 ends at 03:00 (not 03:30), so the user is out of quiet hours exactly when
  `quiet_until` says.

A wall-clock rule also means that when the clock falls back into a window (e.g. end 01:30,
clock goes 01:59 → 01:00), the user is quiet again for the repeated part.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

REASONS: tuple[str, ...] = (
    "category_opt_out",
    "channel_opt_out",
    "no_reachable_channel",
    "already_sent",
    "frequency_cap",
)
# Counted only when it happens (callers compare the fixed REASONS' counts as a whole): a
# user push could reach but for devices skipped as stale (an input `stale_devices` count,
# `pipelines.device_hygiene`), who would otherwise be `no_reachable_channel`.
STALE_REASON = "stale_device"
CHANNELS: frozenset[str] = frozenset({"push", "inbox"})
DEFAULT_MAX_MARKETING_PER_DAY = 3
_MINUTES_PER_DAY = 1440
_US = 1_000_000


def quiet_until(users: pl.DataFrame, now: float) -> pl.Series:
    """Float64 epoch seconds at which each user's current quiet window ends, null when the user
    is not in quiet hours at `now` (epoch s); the DST rules are in the module docstring. Only
    the users who have a window get a clock, so a shard where few set quiet hours pays little."""
    now_us = _to_us(now)
    start = pl.col("quiet_start_min").cast(pl.Int64)
    end = pl.col("quiet_end_min").cast(pl.Int64)
    has_window = (
        start.is_between(0, _MINUTES_PER_DAY - 1)
        & end.is_between(0, _MINUTES_PER_DAY - 1)
        & (start != end)
    ).fill_null(False)
    windows = users.select(
        "timezone", "quiet_start_min", "quiet_end_min", has_window.alias("_has")
    ).with_row_index("_row")
    windows = windows.filter(pl.col("_has"))
    out = np.full(users.height, np.nan)
    if windows.height:
        frame = _with_clock(windows["timezone"], now_us).with_columns(
            windows["_row"], windows["quiet_start_min"], windows["quiet_end_min"]
        )
        start_s, end_s, t = start * 60, end * 60, pl.col("_local_s")
        wraps = start_s > end_s
        quiet = (
            pl.when(wraps)
            .then((t >= start_s) | (t < end_s))
            .otherwise((t >= start_s) & (t < end_s))
        )
        ends_tomorrow = (wraps & (t >= start_s)).cast(pl.Int64)
        in_quiet = frame.filter(quiet).select(
            "_idx",
            "_row",
            "_zone",
            _end=pl.col("_local_date").cast(pl.Datetime("us"))
            + pl.duration(days=ends_tomorrow, minutes=end),
        )
        for (zone,), group in in_quiet.partition_by("_zone", as_dict=True).items():
            ends = _end_instants(group, zone, now_us)
            rows = group["_row"].to_numpy()
            out[rows] = ends["_us"].to_numpy() / _US
    return pl.Series("quiet_until", out, dtype=pl.Float64).fill_nan(None)


def local_day(users: pl.DataFrame, now: float) -> pl.Series:
    """String 'YYYY-MM-DD' of `now` in each user's zone: the day a frequency cap counts in."""
    codes, zones = _zone_codes(users["timezone"])
    clocks = _zone_clocks(zones, _to_us(now))
    days = clocks["_local_date"].dt.to_string("%Y-%m-%d")
    return days.gather(codes).alias("local_day")


def eligible(
    users: pl.DataFrame,
    *,
    now: float,
    channels: Sequence[str],
    respect_quiet_hours: bool,
    sent_today: pl.DataFrame | None = None,
    already_sent: pl.Series | None = None,
    category: str = "marketing",
    repeat: pl.Series | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Returns (kept, suppressed_counts). `kept` = the input rows that may receive the campaign,
    plus `send_push`, `send_inbox` (Boolean: which of the campaign's channels each user gets)
    and `send_after` (Float64, null = send now, else the end of the user's quiet window —
    deferred, not dropped, when `respect_quiet_hours`). `suppressed_counts` has every key of
    REASONS (and STALE_REASON when some user has it); each suppressed user is counted once,
    under the first reason in the order category_opt_out → already_sent → channel_opt_out
    → stale_device → no_reachable_channel → frequency_cap, so that len(kept) +
    sum(counts) == len(users). `sent_today` (user_id, count) is what each user already got
    on their local day (see `local_day`).

    `category` names the preference column checked for the category opt-out
    (`cat_<category>`; campaigns: marketing, price drops: price_alert). `repeat` (Boolean
    per row, null → False) marks rows already sent, for callers whose rows are notifications
    rather than users (a price drop's row is one (event, wisher)); it adds to
    `already_sent`, which is per user."""
    rules = (now, channels, respect_quiet_hours, sent_today, already_sent, category, repeat)
    kept, _, counts = _classify(users, *rules)
    return kept, counts


def split(
    users: pl.DataFrame,
    *,
    now: float,
    channels: Sequence[str],
    respect_quiet_hours: bool,
    sent_today: pl.DataFrame | None = None,
    already_sent: pl.Series | None = None,
    category: str = "marketing",
    repeat: pl.Series | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """`eligible`, plus the suppressed rows themselves: (kept, suppressed, counts), where
    `suppressed` is the input rows that may not receive it with a String `reason` column
    (one of REASONS or STALE_REASON, as counted) — for callers that record why each one
    was suppressed."""
    rules = (now, channels, respect_quiet_hours, sent_today, already_sent, category, repeat)
    kept, reasons, counts = _classify(users, *rules)
    suppressed = users.with_columns(reasons.alias("reason")).filter(pl.col("reason").is_not_null())
    return kept, suppressed, counts


def _classify(
    users: pl.DataFrame,
    now: float,
    channels: Sequence[str],
    respect_quiet_hours: bool,
    sent_today: pl.DataFrame | None,
    already_sent: pl.Series | None,
    category: str,
    repeat: pl.Series | None,
    /,
) -> tuple[pl.DataFrame, pl.Series, dict[str, int]]:
    """(kept, reason per input row — null for kept rows —, counts): see `eligible`. The
    rules are positional, in the order of `eligible`'s keywords, so the two public entry
    points pass them through as one tuple."""
    wanted = set(channels)
    if not wanted or not wanted <= CHANNELS:
        raise ValueError(f"channels must be a non-empty subset of {sorted(CHANNELS)}: {channels}")
    allows_push = pl.lit("push" in wanted) & pl.col("push").fill_null(True)
    allows_inbox = pl.lit("inbox" in wanted) & pl.col("inbox").fill_null(True)
    send_push = allows_push & pl.col("has_push_device").fill_null(False)
    repeat_expr = _repeated(already_sent, repeat)
    cap = pl.col("max_marketing_per_day").fill_null(DEFAULT_MAX_MARKETING_PER_DAY)
    stale = (
        pl.col("stale_devices").fill_null(0) > 0
        if "stale_devices" in users.columns
        else pl.lit(False)
    )
    reason = (
        pl.when(~pl.col(f"cat_{category}").fill_null(True))
        .then(pl.lit("category_opt_out"))
        .when(repeat_expr)
        .then(pl.lit("already_sent"))
        .when(~(allows_push | allows_inbox))
        .then(pl.lit("channel_opt_out"))
        .when(~(send_push | allows_inbox) & stale)
        .then(pl.lit(STALE_REASON))
        .when(~(send_push | allows_inbox))
        .then(pl.lit("no_reachable_channel"))
        .when(_sent_counts(users["user_id"], sent_today) >= cap)
        .then(pl.lit("frequency_cap"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    reasons = users.select(reason).to_series()
    found = dict(reasons.drop_nulls().value_counts().iter_rows())
    counts = {r: int(found.get(r, 0)) for r in REASONS}
    if found.get(STALE_REASON):
        counts[STALE_REASON] = int(found[STALE_REASON])
    kept = users.filter(reasons.is_null()).with_columns(
        send_push=send_push, send_inbox=allows_inbox
    )
    send_after = (
        quiet_until(kept, now)
        if respect_quiet_hours
        else pl.repeat(None, kept.height, dtype=pl.Float64, eager=True)
    )
    return kept.with_columns(send_after.alias("send_after")), reasons, counts


def _repeated(already_sent: pl.Series | None, repeat: pl.Series | None) -> pl.Expr:
    """True for a user who had this notification already (`already_sent` ids, or the
    per-row `repeat` flags)."""
    expr = (
        pl.col("user_id")
        .is_in(already_sent.cast(pl.String).drop_nulls().implode())
        .fill_null(False)
        if already_sent is not None
        else pl.lit(False)
    )
    if repeat is not None:
        expr = expr | pl.lit(repeat.cast(pl.Boolean).fill_null(False))
    return expr


def over_cap_in_batch(
    rows: pl.DataFrame, sent_today: pl.DataFrame | None, *, order: str
) -> pl.Series:
    """Boolean per row of `rows` (user_id, max_marketing_per_day, `order`), for callers with
    several rows per user in one batch (several price drops a user wishes for): True where
    the user's cap is reached counting what they got today plus their rows before this one,
    best `order` first (ties: row order). A user at count c with cap m keeps at most m − c
    rows; `eligible` already dropped users with c ≥ m, so this only trims the extra rows."""
    out = np.zeros(rows.height, dtype=bool)
    repeated = rows["user_id"].is_duplicated()
    if repeated.any():  # only users with several rows can go over; usually few or none
        several = rows.with_row_index("_row").filter(repeated)
        cap = pl.col("max_marketing_per_day").fill_null(DEFAULT_MAX_MARKETING_PER_DAY)
        before = pl.col(order).rank("ordinal", descending=True).over("user_id").cast(pl.Int64)
        prior = _sent_counts(several["user_id"], sent_today)
        over = several.select(pl.lit(prior) + before - 1 >= cap).to_series()
        out[several["_row"].filter(over).to_numpy()] = True
    return pl.Series("over_cap", out, dtype=pl.Boolean)


def _sent_counts(user_ids: pl.Series, sent_today: pl.DataFrame | None) -> pl.Series:
    """Today's count per row of `user_ids` (0 when absent); duplicate rows in `sent_today` add up,
    so callers may pass raw per-notification counts."""
    if sent_today is None:
        return pl.repeat(0, len(user_ids), dtype=pl.Int64, eager=True)
    totals = sent_today.group_by(pl.col("user_id").cast(pl.String)).agg(
        pl.col("count").cast(pl.Int64).sum()
    )
    return (
        user_ids.to_frame("user_id")
        .join(totals, on="user_id", how="left", maintain_order="left")
        .select(pl.col("count").fill_null(0))
        .to_series()
    )


def _to_us(now: float) -> int:
    return round(now * _US)


@functools.cache
def _zoneinfo_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "Factory"}


@functools.lru_cache(maxsize=4096)
def _known_zone(name: str) -> bool:
    """A zone both zoneinfo and polars (which bundles its own tz database) understand; anything
    else is treated as UTC rather than failing the whole shard."""
    if name not in _zoneinfo_names():
        return False
    try:
        pl.Series([datetime(2000, 1, 1)]).dt.replace_time_zone(name)
    except Exception:
        return False
    return True


def _zone_codes(timezone: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's index into a list of distinct known zones (unknown and null → "UTC"): the
    per-zone work happens once per zone and reaches the rows by a gather, not a join."""
    timezone = timezone.cast(pl.String)
    names = timezone.drop_nulls().unique().to_list()
    zones = sorted({n if _known_zone(n) else "UTC" for n in names} | {"UTC"})
    index = {z: i for i, z in enumerate(zones)}
    lookup = np.array([index[n if _known_zone(n) else "UTC"] for n in names], dtype=np.int64)
    utc = index["UTC"]
    if not names:
        return np.full(len(timezone), utc, dtype=np.int64), zones
    raw = timezone.cast(pl.Enum(names)).to_physical().fill_null(len(names)).to_numpy()
    return np.append(lookup, utc)[raw], zones


def _zone_clocks(zones: Iterable[str], now_us: int) -> pl.DataFrame:
    """Local date and wall-clock seconds since local midnight at `now`, one row per zone."""
    return _zone_clocks_cached(tuple(zones), now_us)


@functools.lru_cache(maxsize=64)
def _zone_clocks_cached(zones: tuple[str, ...], now_us: int) -> pl.DataFrame:
    instant = pl.Series([now_us], dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
    rows: list[tuple[str, date, float]] = []
    for zone in zones:
        local: datetime = instant.dt.convert_time_zone(zone).dt.replace_time_zone(None)[0]
        midnight = datetime.combine(local.date(), datetime.min.time())
        rows.append((zone, local.date(), (local - midnight) / timedelta(seconds=1)))
    return pl.DataFrame(
        rows,
        schema={"_zone": pl.String, "_local_date": pl.Date, "_local_s": pl.Float64},
        orient="row",
    )


def _with_clock(timezone: pl.Series, now_us: int) -> pl.DataFrame:
    codes, zones = _zone_codes(timezone)
    clocks = _zone_clocks(zones, now_us)
    return pl.DataFrame(
        {
            "_idx": pl.int_range(len(codes), dtype=pl.UInt32, eager=True),
            "_zone": clocks["_zone"].gather(codes),
            "_local_date": clocks["_local_date"].gather(codes),
            "_local_s": clocks["_local_s"].gather(codes),
        }
    )


def _end_instants(group: pl.DataFrame, zone: str, now_us: int) -> pl.DataFrame:
    """Local end wall times of one zone → UTC epoch µs, by the module docstring's DST rules."""
    end = pl.col("_end")
    earliest = end.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    latest = end.dt.replace_time_zone(zone, ambiguous="latest", non_existent="null")
    out = group.with_columns(
        _us=pl.when(earliest.dt.epoch("us") > now_us)
        .then(earliest.dt.epoch("us"))
        .otherwise(latest.dt.epoch("us"))
    )
    gaps = out.filter(pl.col("_us").is_null())["_end"].unique().to_list()
    if gaps:
        jumps = {wall: _jump_instant_us(zone, wall) for wall in gaps}
        out = out.with_columns(
            pl.col("_us").fill_null(end.replace_strict(jumps, default=None, return_dtype=pl.Int64))
        )
    return out.select("_idx", "_us")


@functools.lru_cache(maxsize=4096)
def _jump_instant_us(zone: str, wall: datetime) -> int:
    """The instant a forward clock jump skips over `wall`: the first moment the wall clock reads
    `wall` or later. Only for the rare nonexistent end times, one call per distinct (zone, end
    time), never per user; bisects between the two offsets' readings of `wall`."""
    tz = zoneinfo.ZoneInfo(zone)
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())  # offset after the jump: before it
    hi = int(wall.replace(tzinfo=tz, fold=0).timestamp())  # offset before the jump: after it
    if lo >= hi:  # zoneinfo's database sees no gap here; take its reading
        return hi * _US
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi * _US
