"""The naive way to plan a campaign, for comparison: one Python loop over users, each user
checked against the segment, the preferences and quiet hours (zoneinfo), scored per variant
with the same model (one small predict per user), given the best variant if it clears the
threshold, and joined to its devices from a dict. Same data, same model, same campaign as
`bench/fanout.py`, which imports `naive_rate` and runs it beside the columnar plan at
every size (`--naive-sample` users of each)."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.features import features  # noqa: E402
from models.ranker import Ranker  # noqa: E402

DAY_S = 86_400.0


def _matches(condition: dict[str, Any], user: dict[str, Any], now: float) -> bool:
    """The segment conditions the benchmark campaign uses, one user at a time."""
    (kind, arg), *_ = condition.items()
    if kind == "all":
        return all(_matches(c, user, now) for c in arg)
    if kind == "any":
        return any(_matches(c, user, now) for c in arg)
    if kind == "not":
        return not _matches(arg, user, now)
    if kind == "active_within_days":
        last = user.get("last_active_at")
        return last is not None and last >= now - arg * DAY_S
    if kind == "attr":
        value = (user.get("attributes") or {}).get(arg["name"])
        return value is not None and arg["op"] == "eq" and value == arg["value"]
    raise ValueError(f"the naive baseline does not know {kind!r}")


def _quiet(user: dict[str, Any], now: float) -> bool:
    start, end = user.get("quiet_start_min"), user.get("quiet_end_min")
    if start is None or end is None or start == end:
        return False
    local = datetime.fromtimestamp(now, ZoneInfo(user.get("timezone") or "UTC"))
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start < end else minute >= start or minute < end


def plan_naive(
    users: pl.DataFrame,
    devices: pl.DataFrame,
    ranker: Ranker,
    campaign: dict[str, Any],
    now: float,
) -> list[dict[str, Any]]:
    by_user: dict[str, list[dict[str, Any]]] = {}
    for device in devices.iter_rows(named=True):
        by_user.setdefault(device["user_id"], []).append(device)
    variants = pl.DataFrame(
        {
            "variant_id": [v["variant_id"] for v in campaign["variants"]],
            "style": [v["style"] for v in campaign["variants"]],
        }
    )
    deliveries = []
    for i, user in enumerate(users.iter_rows(named=True)):
        if not _matches(campaign["segment"], user, now):
            continue
        if not user["cat_marketing"] or not (user["push"] or user["inbox"]):
            continue
        deferred = campaign["respect_quiet_hours"] and _quiet(user, now)
        scores = ranker.predict(
            features(users.slice(i, 1), variants, category=campaign["category"], now=now)
        )
        best = int(np.argmax(scores))
        if scores[best] < campaign["score_threshold"]:
            continue
        variant = {**campaign["variants"][best], "deferred": deferred}
        nid = f"{campaign['campaign_id']}~{user['user_id']}"
        for device in by_user.get(user["user_id"], []) if user["push"] else []:
            deliveries.append({"notification_id": nid, "token": device["token"], **variant})
        if user["inbox"]:
            deliveries.append({"notification_id": nid, "token": "", **variant})
    return deliveries


def naive_rate(
    users: pl.DataFrame,
    devices: pl.DataFrame,
    ranker: Ranker,
    campaign: dict[str, Any],
    now: float,
    sample: int,
) -> float:
    """Users per second of `plan_naive` over the first `sample` users."""
    part = users.head(sample)
    mine = devices.join(part.select("user_id"), on="user_id", how="semi")
    start = time.perf_counter()
    plan_naive(part, mine, ranker, campaign, now)
    return part.height / (time.perf_counter() - start)
