"""The plain-Python reference and the checks `test_campaigns` holds a campaign's outcome
to: who should be targeted, suppressed, held, chosen (scored here from the shards' own
snapshots), counted and logged."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import ray
import redis

from cluster.names import shard_name
from cluster.state import keys
from cluster.state.clients import sync_client
from models.ranker import load_ranker
from pipelines import feedback_log
from tests.cluster.test_api import fields_of
from tests.cluster.test_dead_letters import wait_for


def expected_outcome(population) -> dict:
    """The reference, one user at a time in plain Python."""
    users, prefs = population["users"], population["prefs"]
    devices = population["devices"].group_by("user_id").agg(pl.col("token"), pl.col("platform"))
    tokens = dict(zip(devices["user_id"], devices["token"].to_list(), strict=True))
    counts = {"targeted": 0, "eligible": 0, "deferred_users": set(), "eligible_users": []}
    reasons = dict.fromkeys(
        ["category_opt_out", "already_sent", "channel_opt_out", "no_reachable_channel",
         "frequency_cap"], 0,
    )  # fmt: skip
    for user, attributes, p in zip(
        users["user_id"], users["attributes"], prefs.iter_rows(named=True), strict=True
    ):
        if json.loads(attributes)["tier"] == "vip":
            continue
        counts["targeted"] += 1
        has_device = bool(tokens.get(user))
        if not p["cat_marketing"]:
            reasons["category_opt_out"] += 1
        elif not p["push"] and not p["inbox"]:
            reasons["channel_opt_out"] += 1
        elif not p["inbox"] and not has_device:
            reasons["no_reachable_channel"] += 1
        elif p["max_marketing_per_day"] == 0:
            reasons["frequency_cap"] += 1
        else:
            counts["eligible"] += 1
            counts["eligible_users"].append(user)
            if p["quiet_start_min"] is not None:
                counts["deferred_users"].add(user)
    counts["suppressed"] = reasons
    counts["tokens"] = tokens
    return counts


def reference_scores(stack, expected: dict, started_at: float):
    """The eligible users of the shards' snapshots, the variants and the ranker's scores
    of them at the campaign's start."""
    snapshots = ray.get(
        [
            ray.get_actor(
                shard_name(s), namespace=stack.settings.topology.namespace
            ).snapshot.remote()
            for s in range(stack.settings.topology.shards)
        ]
    )
    frames = [pl.from_arrow(ray.get(s["users"])) for s in snapshots]
    eligible = pl.concat(frames, how="diagonal_relaxed").filter(
        pl.col("user_id").is_in(expected["eligible_users"])
    )
    variants = pl.DataFrame(
        {"variant_id": ["plain", "urgent", "perso"], "style": ["plain", "urgent", "personalized"]}
    )
    scores = load_ranker().score(eligible, variants, category="fashion", now=started_at)
    return eligible, variants, scores


def assert_best_scored_were_sent(stack, cid: str, eligible, scores, limit: int) -> set[str]:
    """The campaign reached exactly `limit` users, the top by best-variant score (ties at the
    cutoff either way); returns them."""
    best = scores.max(axis=1)
    cutoff = np.sort(best)[::-1][limit - 1]
    sure = set(eligible.filter(pl.Series(best > cutoff + 1e-9))["user_id"])
    maybe = set(eligible.filter(pl.Series(best >= cutoff - 1e-6))["user_id"])
    sent_users = {
        m.decode() for m in stack_redis(stack).smembers(keys.campaign(stack.settings, cid, "users"))
    }
    assert len(sent_users) == limit
    assert sure <= sent_users <= maybe
    return sent_users


def assert_counted_once_today(stack, sent_users: set[str], limit: int) -> None:
    """Each one now counts once toward today's marketing frequency cap (their local day)."""
    r = stack_redis(stack)
    days = list(r.scan_iter(match=keys.frequency(stack.settings, "*")))
    pipe = r.pipeline(transaction=False)
    for user in sorted(sent_users):
        for day in days:
            pipe.hget(day, user)
    counts = pipe.execute()
    per_user = [sum(int(c or 0) for c in counts[i : i + len(days)])
                for i in range(0, len(counts), len(days))]  # fmt: skip
    assert per_user == [1] * limit


def assert_feedback_counted_once(api, cid: str, user: str) -> None:
    """Feedback: counted once per action, only from the notification's user, and it steers
    the variant counts."""
    nid = f"{cid}~{user}"
    first = api.post("/v1/feedback", json={"notification_id": nid, "user_id": user,
                                            "action": "opened"})  # fmt: skip
    again = api.post("/v1/feedback", json={"notification_id": nid, "user_id": user,
                                            "action": "opened"})  # fmt: skip
    assert first.json()["counted"] is True and again.json()["counted"] is False
    wrong = api.post("/v1/feedback", json={"notification_id": nid, "user_id": "someone",
                                            "action": "opened"})  # fmt: skip
    assert wrong.status_code == 422 and "user_id" in fields_of(wrong)
    status = api.get(f"/v1/campaigns/{cid}").json()
    assert sum(v.get("opened", 0) for v in status["variants"].values()) == 1


def assert_feedback_logged(
    stack, api, cid: str, sent_users: set[str], opener: str, limit: int
) -> None:
    """The feedback log: every send with its features as scored, the open joined to it."""
    root = stack.settings.feedback_root
    model_version = api.get(f"/v1/campaigns/{cid}").json()["model_version"]

    def logged() -> list[pl.DataFrame]:
        rows = feedback_log.training_rows(root)
        rows = rows.filter(pl.col("campaign_id") == cid) if rows.height else rows
        return [rows] if rows.height and rows["opened"].any() else []

    [rows] = wait_for(logged, timeout_s=30)
    assert rows.height == limit
    assert set(rows["user_id"]) == sent_users
    assert set(rows["model_version"]) == {model_version}
    assert rows.filter(pl.col("opened"))["user_id"].to_list() == [opener]
    assert rows["affinity_fashion"].null_count() == 0 and "last_active_at" in rows.columns


def stack_redis(stack) -> redis.Redis:
    return sync_client(stack.settings)
