"""The campaign pipeline's pure steps on a synthetic population, no cluster: the shards'
top-k merged is the global top-k, rendered deliveries carry valid content, and batches never
split a user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cluster.sharding import shard_of
from models.ranker import load_ranker
from models.synth import REFERENCE_TIME, load_population, synthesize
from pipelines import campaigns
from pipelines.templates import parse

NOW = REFERENCE_TIME + 14 * 3600
CAMPAIGN = {
    "campaign_id": "spring",
    "segment": {"active_within_days": 60},
    "variants": [
        {"variant_id": "a", "title": "Spring", "body": "New in", "style": "plain"},
        {
            "variant_id": "b",
            "title": "Hurry",
            "body": 'Say "now"',
            "style": "urgent",
            "deeplink": 'shop://sale?x="1"&y=\\\\',
        },
    ],  # fmt: skip
    "channels": ["push", "inbox"],
    "category": "home",
    "audience_limit": 700,
    "exploration": 0.0,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = Path(tmp_path_factory.mktemp("pop"))
    paths = synthesize(6_000, seed=5, out_dir=out)
    users = load_population(out).with_columns(
        push=True,
        inbox=pl.int_range(pl.len()) % 7 != 0,
        cat_marketing=True,
        quiet_start_min=pl.lit(None, pl.Int16),
        quiet_end_min=pl.lit(None, pl.Int16),
        max_marketing_per_day=pl.lit(3, pl.Int32),
        has_push_device=pl.col("platforms").list.len() > 0,
    )
    devices = pl.read_parquet(paths.devices).with_columns(
        device_id=pl.format("d{}", pl.int_range(pl.len()))
    )
    return users, devices


def _plan(users: pl.DataFrame) -> pl.DataFrame:
    hit = campaigns.targeted(users, CAMPAIGN, NOW)
    chosen, counts = campaigns.plan(
        hit, CAMPAIGN, now=NOW, ranker=load_ranker(), variant_stats=None,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    assert counts["selected"] == chosen.height <= CAMPAIGN["audience_limit"]
    return chosen


def test_shards_top_k_merged_is_the_global_top_k(world):
    users, _ = world
    whole = _plan(users)
    owners = shard_of(users["user_id"].to_arrow(), 3)
    parts = [_plan(users.filter(pl.Series(owners == s))) for s in range(3)]
    merged = campaigns.top(pl.concat(parts), CAMPAIGN["audience_limit"])
    assert merged.height == whole.height == CAMPAIGN["audience_limit"]
    assert set(merged["user_id"]) == set(whole["user_id"])
    assert whole["score"].is_sorted(descending=True)


def test_render_and_batches(world):
    users, devices = world
    chosen = _plan(users)
    rows = campaigns.render(chosen, devices, CAMPAIGN, NOW)
    # a push per device of each chosen user with devices, an inbox item where allowed
    mine = devices.join(chosen.select("user_id"), on="user_id", how="semi")
    inbox = users.join(chosen.select("user_id"), on="user_id", how="semi")["inbox"].sum()
    assert rows.height == mine.height + inbox
    assert rows["delivery_id"].n_unique() == rows.height
    assert set(rows["channel"]) <= {"apns", "fcm", "inbox"}
    platform = dict(zip(mine["device_id"], mine["platform"], strict=True))
    for row in rows.filter(pl.col("channel") != "inbox").head(200).iter_rows(named=True):
        assert row["channel"] == ("apns" if platform[row["device_id"]] == "ios" else "fcm")
    variants = {v["variant_id"]: v for v in CAMPAIGN["variants"]}
    for row in rows.iter_rows(named=True):
        data = json.loads(row["data"])
        user = row["notification_id"].split("~", 1)[1]
        assert data["notification_id"] == f"spring~{user}" == row["notification_id"]
        assert data["campaign_id"] == "spring" and data["type"] == "campaign"
        variant = variants[data["variant_id"]]
        assert data["deeplink"] == (variant.get("deeplink") or "")
        assert (row["title"], row["body"]) == (variant["title"], variant["body"])
        assert row["variant_id"] == data["variant_id"]
    # batches: about 50 rows, never splitting a user's rows, covering every row once
    batches = list(campaigns.batches(rows, 50))
    assert sum(b.height for b in batches) == rows.height
    assert all(b.height <= 50 for b in batches)
    seen: set[str] = set()
    for batch in batches:
        users_here = set(batch["notification_id"])
        assert not users_here & seen
        seen |= users_here


SALE = {
    "template_id": "spring.sale", "category": "marketing", "version": 2,
    "variables": {"pct": {"type": "integer"}},
    "locales": {"en": {"title": "Spring sale", "body": "{pct}% off", "subtitle": "Today"},
                "de": {"title": "Frühling", "body": "{pct} % Rabatt"}},
}  # fmt: skip
TEMPLATED = {**CAMPAIGN, "variants": [
    CAMPAIGN["variants"][0],
    {"variant_id": "t", "template_id": "spring.sale", "variables": {"pct": 20}, "style": "urgent"},
]}  # fmt: skip


def test_a_template_variant_reads_in_each_recipients_language(world):
    """Device locale, else the profile's, else the default (the inbox: the profile's, else a
    device's); inline variants as written."""
    users, devices = world
    every = pl.int_range(pl.len())
    chosen = _plan(users).with_columns(
        variant_id=pl.when(every % 2 == 0).then(pl.lit("t")).otherwise(pl.lit("a"))
    )
    profiles = users.select("user_id", locale=pl.when(every % 3 == 0).then(pl.lit("de-DE")))
    german = profiles.filter(pl.col("locale").is_not_null())["user_id"].implode()
    # one device of a templated user whose profile has no locale speaks German
    reader = chosen.filter((pl.col("variant_id") == "t") & ~pl.col("user_id").is_in(german))
    device = devices.join(reader, on="user_id", how="semi")["device_id"][0]
    devices = devices.with_columns(
        device_locale=pl.when(pl.col("device_id") == device).then(pl.lit("de-AT"))
    )
    owner = devices.filter(pl.col("device_id") == device)["user_id"][0]
    found = campaigns.variant_templates(TEMPLATED, {"spring.sale": parse(SALE)})
    rows = campaigns.render(chosen, devices, TEMPLATED, NOW, templates=found, profiles=profiles)
    inbox_of_owner = (pl.col("user_id") == owner) & (pl.col("device_id") == "inbox")
    rows = rows.with_columns(
        expect=pl.when(pl.col("variant_id") == "a").then(pl.lit(None))
        .when(pl.col("user_id").is_in(german) | (pl.col("device_id") == device) | inbox_of_owner)
        .then(pl.lit("de")).otherwise(pl.lit("en"))
    )  # fmt: skip
    assert rows["locale"].eq_missing(rows["expect"]).all()
    text = {r[0]: r[1:] for r in rows.select("locale", "title", "body", "template_version")
            .unique().rows()}  # fmt: skip
    assert text == {"de": ("Frühling", "20 % Rabatt", 2), "en": ("Spring sale", "20% off", 2),
                    None: ("Spring", "New in", None)}  # fmt: skip
    rich = rows.group_by("locale").agg(pl.col("rich").unique())
    assert {r[0]: r[1] for r in rich.rows()} == {
        "de": [None], "en": ['{"subtitle":"Today"}'], None: [None]}  # fmt: skip


def test_a_campaign_whose_templates_cannot_render_is_refused():
    with pytest.raises(campaigns.CampaignRefused, match="variant t: no template 'spring.sale'"):
        campaigns.variant_templates(TEMPLATED, {})
    wrong = {**TEMPLATED, "variants": [{**TEMPLATED["variants"][1], "variables": {"pc": 2}}]}
    with pytest.raises(campaigns.CampaignRefused, match="variable pct .*: missing"):
        campaigns.variant_templates(wrong, {"spring.sale": parse(SALE)})
