"""Deadlines and per-user limits as column rules (`pipelines.deadlines`)."""

from __future__ import annotations

import json

import polars as pl

from cluster.tables.deliveries import Rich
from pipelines import deadlines


def rows(**columns) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "channel": ["apns"] * n,
        "accepted_at": [1000.0] * n,
        "attempt": [0] * n,
        "rich": [None] * n,
    }
    return pl.DataFrame({**base, **columns}, schema_overrides={"rich": pl.String})


def test_default_ttl_fills_only_pushes_that_do_not_say():
    frame = rows(
        channel=["apns", "fcm", "inbox", "apns", "apns"],
        rich=[None, '{"collapse_key":"order:1"}', None, '{"ttl_s":5}', "{}"],
    )
    out = deadlines.with_default_ttl(frame, 86400)["rich"].to_list()
    assert json.loads(out[0]) == {"ttl_s": 86400}
    assert json.loads(out[1]) == {"ttl_s": 86400, "collapse_key": "order:1"}
    assert out[2] is None  # the inbox has no deadline
    assert json.loads(out[3]) == {"ttl_s": 5}  # the event's own wins
    assert json.loads(out[4]) == {"ttl_s": 86400}
    # what the senders parse
    assert Rich.parse(out[1]).ttl_s == 86400


def test_a_per_row_ttl_never_goes_negative():
    frame = rows(accepted_at=[1000.0, 5000.0])
    ttl = (pl.lit(4000.0) - pl.col("accepted_at")).ceil().cast(pl.Int64)
    out = deadlines.with_default_ttl(frame, ttl)["rich"].to_list()
    assert [json.loads(r)["ttl_s"] for r in out] == [3000, 0]


def test_expired_after_the_deadline_only():
    frame = rows(rich=['{"ttl_s":10}'] * 3 + [None], attempt=[0, 1, 0, 3])
    frame = frame.with_columns(accepted_at=pl.Series([1000.0, 1000.0, 995.0, 0.0]))
    assert frame.select(deadlines.expired(1009.0, scheduled=True)).to_series().to_list() == [
        False,
        False,
        True,
        False,  # no ttl_s: no deadline
    ]


def test_now_or_never_is_sent_once_but_never_retried():
    frame = rows(rich=['{"ttl_s":0}', '{"ttl_s":0}'], attempt=[0, 1])
    fresh = frame.select(deadlines.expired(1000.5, scheduled=False)).to_series().to_list()
    assert fresh == [False, True]
    held = frame.select(deadlines.expired(1000.5, scheduled=True)).to_series().to_list()
    assert held == [True, True]


def test_inbox_rows_never_expire():
    frame = rows(channel=["inbox"], rich=['{"ttl_s":1}'])
    assert not frame.select(deadlines.expired(5000.0, scheduled=True)).item()


def test_a_hold_ending_after_the_deadline_is_expired_at_once():
    frame = rows(rich=['{"ttl_s":3600}', '{"ttl_s":3600}', None])
    ends = pl.Series([1000.0 + 7200, 1000.0 + 60, 1000.0 + 7200])
    got = frame.with_columns(send_after=ends).select(
        deadlines.held_past_deadline(pl.col("send_after"))
    )
    assert got.to_series().to_list() == [True, False, False]


def test_over_limit_counts_in_batch_order_on_top_of_the_minute_so_far():
    pushes = pl.DataFrame(
        {"notification_id": ["n1", "n2", "n3", "m1", "k1"], "user_id": ["a", "a", "a", "b", "c"]}
    )
    before = pl.DataFrame({"user_id": ["a", "b"], "count": [1, 5]})
    got = deadlines.over_limit(pushes, before, limit=2).to_list()
    assert got == [False, True, True, True, False]


def test_a_template_defaults_ttl_and_priority_the_event_did_not_set():
    import pytest
    from pydantic import ValidationError

    from pipelines.localized import with_template_options
    from pipelines.template_model import Template

    content = {"en": {"title": "Back", "body": "It is back"}}
    templates = {
        "restock": Template(template_id="restock", locales=content, ttl_s=600, priority="normal"),
        "plain": Template(template_id="plain", locales=content),
    }
    rows = pl.DataFrame(
        {
            "template_id": ["restock", "restock", "plain", "gone"],
            "ttl_s": [None, 30, None, None],
            "priority": [None, "high", None, None],
        },
        schema_overrides={"ttl_s": pl.Int64, "priority": pl.String},
    )
    out = with_template_options(rows, templates)
    assert out["ttl_s"].to_list() == [600, 30, None, None]
    assert out["priority"].to_list() == ["normal", "high", None, None]
    assert out.columns == rows.columns
    with pytest.raises(ValidationError, match="ttl_s"):
        Template(template_id="x", locales=content, ttl_s=29 * 24 * 3600)
