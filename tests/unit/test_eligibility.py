"""Campaign eligibility: quiet hours across zones and DST nights, local days, frequency caps and
the suppression reasons with their precedence. Pure unit tests: no Ray, no Redis."""

from __future__ import annotations

import math
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.eligibility import REASONS, eligible, local_day, quiet_until

NY = "America/New_York"


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


def users(*rows: dict) -> pl.DataFrame:
    """Candidate users; every column defaults to a reachable, consenting user without quiet
    hours, so each test states only what it is about."""
    base = {
        "user_id": None,
        "timezone": "UTC",
        "push": True,
        "inbox": True,
        "cat_marketing": True,
        "quiet_start_min": None,
        "quiet_end_min": None,
        "max_marketing_per_day": 3,
        "has_push_device": True,
    }
    full = [{**base, "user_id": f"u{i}", **row} for i, row in enumerate(rows)]
    return pl.DataFrame(
        full,
        schema={
            "user_id": pl.String,
            "timezone": pl.String,
            "push": pl.Boolean,
            "inbox": pl.Boolean,
            "cat_marketing": pl.Boolean,
            "quiet_start_min": pl.Int16,
            "quiet_end_min": pl.Int16,
            "max_marketing_per_day": pl.Int32,
            "has_push_device": pl.Boolean,
        },
        orient="row",
    )


def quiet(zone: str | None, start: int | None, end: int | None) -> dict:
    return {"timezone": zone, "quiet_start_min": start, "quiet_end_min": end}


def until(zone: str | None, start: int | None, end: int | None, now: float) -> float | None:
    return quiet_until(users(quiet(zone, start, end)), now)[0]


NIGHT = (22 * 60, 7 * 60)  # 22:00–07:00, wraps past midnight


# --- quiet hours across zones ---------------------------------------------------------------


def test_kolkata_half_hour_offset() -> None:
    # 17:00 UTC = 22:30 IST → quiet until 07:00 IST next day = 01:30 UTC
    assert until("Asia/Kolkata", *NIGHT, utc(2026, 6, 15, 17)) == utc(2026, 6, 16, 1, 30)
    # 16:00 UTC = 21:30 IST → not yet quiet
    assert until("Asia/Kolkata", *NIGHT, utc(2026, 6, 15, 16)) is None


def test_wrapping_window_after_midnight_ends_the_same_local_day() -> None:
    # 08:00 UTC = 04:00 EDT → 07:00 EDT = 11:00 UTC
    assert until(NY, *NIGHT, utc(2026, 6, 15, 8)) == utc(2026, 6, 15, 11)


def test_wrapping_window_before_midnight_ends_the_next_local_day() -> None:
    # 2026-06-16 03:00 UTC = 23:00 EDT on the 15th → 07:00 EDT on the 16th = 11:00 UTC
    assert until(NY, *NIGHT, utc(2026, 6, 16, 3)) == utc(2026, 6, 16, 11)


def test_non_wrapping_window_is_start_inclusive_end_exclusive() -> None:
    lunch = (13 * 60, 15 * 60)  # 13:00–15:00 EDT = 17:00–19:00 UTC
    assert until(NY, *lunch, utc(2026, 6, 15, 17)) == utc(2026, 6, 15, 19)
    assert until(NY, *lunch, utc(2026, 6, 15, 18, 59, 59)) == utc(2026, 6, 15, 19)
    assert until(NY, *lunch, utc(2026, 6, 15, 19)) is None
    assert until(NY, *lunch, utc(2026, 6, 15, 16, 59, 59)) is None
    assert until(NY, *lunch, utc(2026, 6, 16, 3)) is None  # 23:00: outside a non-wrapping window


def test_no_window_when_null_or_empty() -> None:
    now = utc(2026, 6, 15, 3)  # 03:00 UTC, inside 22:00–07:00 in UTC
    assert until("UTC", None, 420, now) is None
    assert until("UTC", 1320, None, now) is None
    assert until("UTC", 420, 420, now) is None


def test_unknown_or_missing_zone_counts_as_utc() -> None:
    now = utc(2026, 6, 15, 3)
    assert until("Mars/Olympus_Mons", *NIGHT, now) == utc(2026, 6, 15, 7)
    assert until(None, *NIGHT, now) == utc(2026, 6, 15, 7)
    assert until("localtime", *NIGHT, now) == utc(2026, 6, 15, 7)


def test_mixed_zones_keep_row_order() -> None:
    now = utc(2026, 6, 15, 3)  # 23:00 EDT, 08:30 IST, 03:00 UTC
    frame = users(quiet(NY, *NIGHT), quiet("Asia/Kolkata", *NIGHT), quiet("UTC", *NIGHT))
    assert quiet_until(frame, now).to_list() == [utc(2026, 6, 15, 11), None, utc(2026, 6, 15, 7)]


# --- DST ------------------------------------------------------------------------------------


def test_new_york_spring_forward_night() -> None:
    # 2026-03-08: 02:00 EST → 03:00 EDT. 22:00 EST on the 7th = 03:00 UTC; the window still
    # ends at 07:00 local, now EDT = 11:00 UTC (not 12:00, as a fixed -5 h would say).
    assert until(NY, *NIGHT, utc(2026, 3, 8, 3)) == utc(2026, 3, 8, 11)
    assert until(NY, *NIGHT, utc(2026, 3, 8, 6, 30)) == utc(2026, 3, 8, 11)  # 01:30 EST
    assert until(NY, *NIGHT, utc(2026, 3, 8, 7, 30)) == utc(2026, 3, 8, 11)  # 03:30 EDT
    assert until(NY, *NIGHT, utc(2026, 3, 8, 11)) is None


def test_new_york_fall_back_night() -> None:
    # 2026-11-01: 02:00 EDT → 01:00 EST. Both 01:30s are in the window, which ends at 07:00
    # EST = 12:00 UTC.
    assert until(NY, *NIGHT, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 1, 12)  # 01:30 EDT
    assert until(NY, *NIGHT, utc(2026, 11, 1, 6, 30)) == utc(2026, 11, 1, 12)  # 01:30 EST
    assert until(NY, *NIGHT, utc(2026, 11, 1, 2, 30)) == utc(2026, 11, 1, 12)  # 22:30 EDT
    assert until(NY, *NIGHT, utc(2026, 11, 1, 11, 59)) == utc(2026, 11, 1, 12)
    assert until(NY, *NIGHT, utc(2026, 11, 1, 12)) is None


def test_berlin_spring_forward_night() -> None:
    # 2026-03-29: 02:00 CET → 03:00 CEST at 01:00 UTC. 23:00 CET on the 28th = 22:00 UTC; the
    # window ends at 07:00 CEST = 05:00 UTC.
    assert until("Europe/Berlin", *NIGHT, utc(2026, 3, 28, 22)) == utc(2026, 3, 29, 5)
    assert until("Europe/Berlin", *NIGHT, utc(2026, 3, 29, 4, 59)) == utc(2026, 3, 29, 5)
    assert until("Europe/Berlin", *NIGHT, utc(2026, 3, 29, 5)) is None


def test_end_skipped_by_spring_forward_ends_at_the_jump() -> None:
    # 00:00–02:30 and the clock jumps 02:00 → 03:00: the window ends when the clock first reads
    # past 02:30, at the jump (03:00 EDT = 07:00 UTC; 03:00 CEST = 01:00 UTC).
    assert until(NY, 0, 150, utc(2026, 3, 8, 6, 45)) == utc(2026, 3, 8, 7)  # 01:45 EST
    assert until("Europe/Berlin", 0, 150, utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1)
    # Lord Howe jumps 30 minutes, 02:00 → 02:30 (+10:30 → +11) at 15:30 UTC on 2026-10-03.
    assert until("Australia/Lord_Howe", 0, 135, utc(2026, 10, 3, 15, 15)) == utc(
        2026, 10, 3, 15, 30
    )
    # ... and the user is indeed out of quiet hours then.
    assert until(NY, 0, 150, utc(2026, 3, 8, 7)) is None


def test_end_repeated_by_fall_back_is_the_next_occurrence() -> None:
    # 00:00–01:30 and 01:00–02:00 happens twice: the first 01:30 (EDT) when now is before it,
    # the second (EST) when now is in the repeated hour.
    assert until(NY, 0, 90, utc(2026, 11, 1, 5, 10)) == utc(2026, 11, 1, 5, 30)  # 01:10 EDT
    assert until(NY, 0, 90, utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 1, 6, 30)  # 01:10 EST
    assert until(NY, 0, 90, utc(2026, 11, 1, 5, 40)) is None  # 01:40 EDT: past the end


# --- local day ------------------------------------------------------------------------------


def test_local_day_follows_the_users_zone() -> None:
    now = utc(2026, 6, 15, 13)  # 01:00 NZST on the 16th; 06:00 PDT on the 15th
    frame = users(
        {"timezone": "Pacific/Auckland"},
        {"timezone": "UTC"},
        {"timezone": "America/Los_Angeles"},
        {"timezone": None},
    )
    assert local_day(frame, now).to_list() == [
        "2026-06-16",
        "2026-06-15",
        "2026-06-15",
        "2026-06-15",
    ]
    assert local_day(frame, utc(2026, 6, 15, 3))[2] == "2026-06-14"  # 20:00 PDT on the 14th


# --- eligibility ----------------------------------------------------------------------------

NOW = utc(2026, 6, 15, 12)


def run(frame: pl.DataFrame, **kw: object) -> tuple[pl.DataFrame, dict[str, int]]:
    args: dict = {"now": NOW, "channels": ["push", "inbox"], "respect_quiet_hours": True}
    return eligible(frame, **(args | kw))


def reason_of(row: dict, **kw: object) -> str | None:
    kept, counts = run(users(row), **kw)
    assert len(kept) + sum(counts.values()) == 1
    assert sorted(counts) == sorted(REASONS)
    hits = [r for r, n in counts.items() if n]
    return hits[0] if hits else None


def test_each_reason_alone() -> None:
    assert reason_of({}) is None
    assert reason_of({"cat_marketing": False}) == "category_opt_out"
    assert reason_of({}, already_sent=pl.Series(["u0"])) == "already_sent"
    assert reason_of({"push": False, "inbox": False}) == "channel_opt_out"
    assert reason_of({"inbox": False}, channels=["inbox"]) == "channel_opt_out"
    assert reason_of({"inbox": False, "has_push_device": False}) == "no_reachable_channel"
    assert reason_of({"has_push_device": False}, channels=["push"]) == "no_reachable_channel"
    sent = pl.DataFrame({"user_id": ["u0"], "count": [3]})
    assert reason_of({}, sent_today=sent) == "frequency_cap"


def test_reason_precedence() -> None:
    sent = pl.DataFrame({"user_id": ["u0"], "count": [9]})
    again = pl.Series(["u0"])
    everything = {"cat_marketing": False, "push": False, "inbox": False}
    assert reason_of(everything, already_sent=again, sent_today=sent) == "category_opt_out"
    no_channel = {"push": False, "inbox": False}
    assert reason_of(no_channel, already_sent=again, sent_today=sent) == "already_sent"
    assert reason_of(no_channel, sent_today=sent) == "channel_opt_out"
    unreachable = {"inbox": False, "has_push_device": False}
    assert reason_of(unreachable, sent_today=sent) == "no_reachable_channel"


def test_frequency_cap_boundary() -> None:
    frame = users({"max_marketing_per_day": 2}, {"max_marketing_per_day": 2}, {}, {}, {})
    sent = pl.DataFrame({"user_id": ["u0", "u1", "u2", "u3"], "count": [2, 1, 3, 2]})
    kept, counts = run(frame, sent_today=sent)
    # u0: 2 ≥ 2 capped; u1: 1 < 2; u2: 3 ≥ 3 capped; u3: 2 < 3; u4: nothing sent today
    assert kept["user_id"].to_list() == ["u1", "u3", "u4"]
    assert counts["frequency_cap"] == 2


def test_null_cap_means_three_and_duplicate_counts_add_up() -> None:
    frame = users({"max_marketing_per_day": None}, {"max_marketing_per_day": None})
    sent = pl.DataFrame({"user_id": ["u0", "u0", "u1"], "count": [1, 2, 2]})
    kept, counts = run(frame, sent_today=sent)
    assert kept["user_id"].to_list() == ["u1"]
    assert counts["frequency_cap"] == 1


def test_channels_each_user_gets() -> None:
    frame = users(
        {},
        {"has_push_device": False},  # push allowed but no device: inbox only
        {"push": False},
        {"inbox": False},
        {"push": None, "inbox": None, "cat_marketing": None},  # null preferences allow
    )
    kept, _ = run(frame)
    assert kept.select("user_id", "send_push", "send_inbox").rows() == [
        ("u0", True, True),
        ("u1", False, True),
        ("u2", False, True),
        ("u3", True, False),
        ("u4", True, True),
    ]
    kept, counts = run(frame, channels=["push"])
    assert kept.select("user_id", "send_push", "send_inbox").rows() == [
        ("u0", True, False),
        ("u3", True, False),
        ("u4", True, False),
    ]
    assert counts["no_reachable_channel"] == 1 and counts["channel_opt_out"] == 1


def test_quiet_hours_defer_rather_than_drop() -> None:
    # NOW = 12:00 UTC = 08:00 EDT = 17:30 IST
    frame = users(quiet(NY, 0, 9 * 60), quiet("Asia/Kolkata", 0, 9 * 60), {})
    kept, counts = run(frame)
    assert kept["user_id"].to_list() == ["u0", "u1", "u2"]
    assert kept["send_after"].to_list() == [utc(2026, 6, 15, 13), None, None]
    assert kept.schema["send_after"] == pl.Float64
    assert sum(counts.values()) == 0
    kept, _ = run(frame, respect_quiet_hours=False)
    assert kept["send_after"].to_list() == [None, None, None]


def test_kept_keeps_input_columns_and_rows_in_order() -> None:
    frame = users({}, {"cat_marketing": False}, {})
    kept, _ = run(frame)
    assert kept.columns == [*frame.columns, "send_push", "send_inbox", "send_after"]
    assert kept.drop("send_push", "send_inbox", "send_after").equals(frame[[0, 2]])


def test_empty_shard() -> None:
    kept, counts = run(users())
    assert kept.height == 0 and counts == dict.fromkeys(REASONS, 0)


def test_unknown_or_empty_channels_are_rejected() -> None:
    with pytest.raises(ValueError):
        run(users({}), channels=["email"])
    with pytest.raises(ValueError):
        run(users({}), channels=[])


# --- properties -----------------------------------------------------------------------------

ZONES = [
    NY,
    "Europe/Berlin",
    "Asia/Kolkata",
    "Pacific/Auckland",
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Santiago",
    "America/Sao_Paulo",
    "UTC",
    "No/Such_Zone",
    None,
]
# Days with DST transitions in the zones above; `now` is drawn within ±36 h of them or anywhere.
ANCHORS = [
    date(2026, 3, 8),
    date(2026, 11, 1),
    date(2026, 3, 29),
    date(2026, 10, 25),
    date(2026, 4, 5),
    date(2026, 9, 27),
    date(2026, 10, 4),
    date(2026, 9, 6),
]
MINUTES = st.one_of(
    st.integers(0, 1439),
    st.sampled_from([0, 60, 90, 120, 135, 150, 165, 180, 195, 240, 420, 1320, 1439]),
)


def reference_quiet_until(zone: str | None, start: int | None, end: int | None, now: int):
    """Plain zoneinfo/datetime: the first instant after `now` whose local wall clock reads
    `end` or later on the end's local date."""
    try:
        tz = zoneinfo.ZoneInfo(zone) if zone else zoneinfo.ZoneInfo("UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = zoneinfo.ZoneInfo("UTC")
    if start is None or end is None or start == end:
        return None
    local = datetime.fromtimestamp(now, tz)
    t = local.hour * 3600 + local.minute * 60 + local.second
    s, e = start * 60, end * 60
    if s < e:
        in_quiet, day = s <= t < e, local.date()
    else:
        in_quiet = t >= s or t < e
        day = local.date() + timedelta(days=1 if t >= s else 0)
    if not in_quiet:
        return None
    wall = datetime.combine(day, time()) + timedelta(minutes=end)
    readings = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=tz, fold=fold).timestamp()
        if datetime.fromtimestamp(instant, tz).replace(tzinfo=None) == wall:
            readings.append(instant)
    later = [r for r in readings if r > now]
    if later:
        return min(later)
    instant = math.floor(now / 60) * 60 + 60  # skipped by a jump: walk to the first minute past it
    while datetime.fromtimestamp(instant, tz).replace(tzinfo=None) < wall:
        instant += 60
    return float(instant)


@st.composite
def nows(draw: st.DrawFn) -> int:
    if draw(st.booleans()):
        anchor = datetime.combine(draw(st.sampled_from(ANCHORS)), time(), tzinfo=UTC).timestamp()
        minute = draw(st.integers(-36 * 60, 36 * 60))
    else:
        anchor = utc(2020, 1, 1)
        minute = draw(st.integers(0, 12 * 366 * 24 * 60))
    return int(anchor) + minute * 60 + draw(st.sampled_from([0, 0, 1, 30, 59]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(ZONES), st.none() | MINUTES, st.none() | MINUTES),
        min_size=1,
        max_size=8,
    ),
    now=nows(),
)
def test_quiet_until_matches_zoneinfo_reference(rows: list[tuple], now: int) -> None:
    frame = users(*(quiet(*row) for row in rows))
    got = quiet_until(frame, float(now)).to_list()
    assert got == [reference_quiet_until(*row, now) for row in rows]


def reference_reason(row: dict, channels: set[str], again: set[str], sent: dict[str, int]):
    allow_push = "push" in channels and row["push"] is not False
    allow_inbox = "inbox" in channels and row["inbox"] is not False
    cap = 3 if row["max_marketing_per_day"] is None else row["max_marketing_per_day"]
    if row["cat_marketing"] is False:
        return "category_opt_out"
    if row["user_id"] in again:
        return "already_sent"
    if not (allow_push or allow_inbox):
        return "channel_opt_out"
    if not ((allow_push and row["has_push_device"] is True) or allow_inbox):
        return "no_reachable_channel"
    if sent.get(row["user_id"], 0) >= cap:
        return "frequency_cap"
    return None


maybe_bool = st.sampled_from([True, False, None])


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "push": maybe_bool,
                "inbox": maybe_bool,
                "cat_marketing": maybe_bool,
                "has_push_device": maybe_bool,
                "max_marketing_per_day": st.none() | st.integers(0, 4),
            }
        ),
        max_size=12,
    ),
    channels=st.sampled_from([{"push"}, {"inbox"}, {"push", "inbox"}]),
    again=st.sets(st.sampled_from([f"u{i}" for i in range(14)])),
    sent=st.dictionaries(st.sampled_from([f"u{i}" for i in range(14)]), st.integers(0, 5)),
)
def test_every_user_is_kept_or_counted_once_under_the_first_reason(
    rows: list[dict], channels: set[str], again: set[str], sent: dict[str, int]
) -> None:
    frame = users(*rows)
    kept, counts = eligible(
        frame,
        now=NOW,
        channels=sorted(channels),
        respect_quiet_hours=False,
        sent_today=pl.DataFrame(
            {"user_id": list(sent), "count": list(sent.values())},
            schema={"user_id": pl.String, "count": pl.Int64},
        ),
        already_sent=pl.Series(sorted(again), dtype=pl.String),
    )
    expected = [reference_reason(r, channels, again, sent) for r in frame.to_dicts()]
    assert len(kept) + sum(counts.values()) == len(frame)
    assert counts == {r: expected.count(r) for r in REASONS}
    assert kept["user_id"].to_list() == [
        u for u, r in zip(frame["user_id"], expected, strict=True) if r is None
    ]
