"""The synthetic population and its hidden engagement model (models/synth/): plain unit
tests, no Ray, no stack."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tzdata
from typer.testing import CliRunner

from api.schemas import APNS_TOKEN, FCM_TOKEN
from cluster.tables.devices import DEVICES
from cluster.tables.profiles import PROFILES
from models import synth
from ops.cli import app
from pipelines.segments import select_users

USERS = 20_000


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> synth.SynthPaths:
    return synth.synthesize(USERS, seed=42, out_dir=tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def frame(population) -> pl.DataFrame:
    return synth.load_population(population.out_dir)


def test_files_schema_and_counts(population):
    users = pl.read_parquet(population.users)
    devices = pl.read_parquet(population.devices)
    wishlists = pl.read_parquet(population.wishlists)
    products = pl.read_parquet(population.products)
    affinity = {f"affinity_{c}": pl.Float32 for c in synth.CATEGORIES}
    assert users.schema == pl.Schema(
        {
            "user_id": pl.String,
            "country": pl.String,
            "locale": pl.String,
            "timezone": pl.String,
            "attributes": pl.String,
            "last_active_at": pl.Float64,
            **affinity,
        }
    )
    assert devices.schema == pl.Schema(
        {"user_id": pl.String, "platform": pl.String, "token": pl.String, "app_id": pl.String}
    )
    assert wishlists.schema == pl.Schema({"user_id": pl.String, "product_id": pl.String})
    assert products.schema == pl.Schema(
        {
            "product_id": pl.String,
            "category": pl.String,
            "price": pl.Float64,
            "popularity": pl.Float64,
        }
    )
    assert population.rows == {
        "users": users.height,
        "devices": devices.height,
        "wishlists": wishlists.height,
        "products": products.height,
    }

    # Users: s0 … s<N-1>, every column filled; profile columns are the shard's PROFILES.
    assert users.height == USERS
    assert users["user_id"].to_list()[:3] == ["s0", "s1", "s2"]
    assert users["user_id"].n_unique() == USERS
    assert users.null_count().sum_horizontal().item() == 0
    assert set(users.columns) >= set(PROFILES.names) - {"updated_at"}
    attrs = users["attributes"].str.json_decode()
    assert set(attrs.struct.field("tier").unique()) <= set(synth.TIERS)
    assert attrs.struct.field("orders").min() >= 0
    idle_days = (synth.REFERENCE_TIME - users["last_active_at"]) / synth.DAY_S
    assert idle_days.min() >= 0 and idle_days.max() <= synth.MAX_IDLE_DAYS
    # A skewed country mix: the US is the biggest market by far, every country appears.
    shares = users["country"].value_counts(normalize=True, sort=True)
    assert shares["country"][0] == "US" and 0.22 < shares["proportion"][0] < 0.30
    assert set(shares["country"]) == set(synth.COUNTRIES)

    # Devices: ≈ 1.5 per user, most users have one, only known users and platforms.
    per_user = devices.height / USERS
    assert 1.4 <= per_user <= 1.6, per_user
    with_device = devices["user_id"].n_unique() / USERS
    assert 0.93 < with_device < 0.99
    assert devices.group_by("user_id").len()["len"].max() <= synth.MAX_DEVICES
    assert set(devices["platform"].unique()) == {"ios", "android", "web"}
    assert devices["user_id"].is_in(users["user_id"].implode()).all()
    assert set(devices.columns) <= set(DEVICES.names)

    # Wishlists: known users and products, no duplicate rows, within the API's limits.
    assert wishlists["user_id"].is_in(users["user_id"].implode()).all()
    assert wishlists["product_id"].is_in(products["product_id"].implode()).all()
    assert not wishlists.is_duplicated().any()
    sizes = wishlists.group_by("user_id").len()["len"]
    assert sizes.max() <= synth.WISHLIST_MAX_ITEMS
    assert 0.55 < sizes.len() / USERS < 0.75

    # Products: Zipf popularity by rank, prices > 0, every category.
    assert products["popularity"].sum() == pytest.approx(1.0)
    assert (products["popularity"].diff().drop_nulls() < 0).all()
    assert products["price"].min() > 0
    assert set(products["category"].unique()) == set(synth.CATEGORIES)


def test_tokens_have_the_shapes_the_api_accepts(population):
    devices = pl.read_parquet(population.devices)
    ios = devices.filter(pl.col("platform") == "ios")["token"]
    fcm = devices.filter(pl.col("platform") != "ios")["token"]
    assert ios.len() > 0 and fcm.len() > 0
    assert ios.str.contains(r"^[0-9a-f]{64}$").all()
    assert all(APNS_TOKEN.match(t) for t in ios.to_list())
    assert all(FCM_TOKEN.match(t) for t in fcm.to_list())
    # Same shape as ops.demo.fcm_token(): token_urlsafe(16) ":APA91b" token_urlsafe(100).
    assert fcm.str.contains(r"^[A-Za-z0-9_\-]{22}:APA91b[A-Za-z0-9_\-]{134}$").all()
    assert devices["token"].n_unique() == devices.height


def test_same_seed_same_files_other_seed_other_population(tmp_path):
    a = synth.synthesize(3_000, seed=7, out_dir=tmp_path / "a")
    b = synth.synthesize(3_000, seed=7, out_dir=tmp_path / "b")
    c = synth.synthesize(3_000, seed=8, out_dir=tmp_path / "c")
    for name in ("users", "devices", "wishlists", "products"):
        left = pl.read_parquet(getattr(a, name))
        assert left.equals(pl.read_parquet(getattr(b, name))), name
        assert not left.equals(pl.read_parquet(getattr(c, name))), name
    assert a.ground_truth.read_text() == b.ground_truth.read_text()


def test_affinities_are_a_distribution_per_user(population):
    users = pl.read_parquet(population.users)
    scores = users.select(pl.col("^affinity_.*$")).to_numpy().astype(np.float64)
    assert scores.shape[1] == len(synth.CATEGORIES)
    assert (scores >= 0).all() and (scores <= 1).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    # Category shares follow the Dirichlet's mean.
    np.testing.assert_allclose(scores.mean(axis=0), synth.CATEGORY_SHARE, atol=0.01)


def _zone_countries() -> dict[str, set[str]]:
    """tzdata's own zone.tab: which countries each zone serves (an independent source)."""
    path = Path(tzdata.__file__).parent / "zoneinfo" / "zone.tab"
    zones: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            code, _, zone = line.split("\t")[:3]
            zones.setdefault(zone, set()).add(code)
    return zones


def test_locale_and_timezone_match_the_country(population):
    users = pl.read_parquet(population.users)
    # Every locale is `ll-CC` with CC the user's country.
    assert users["locale"].str.contains(r"^[a-z]{2}-[A-Z]{2}$").all()
    assert (users["locale"].str.slice(3, 2) == users["country"]).all()
    # Every zone is one tzdata lists for the user's country.
    zone_countries = _zone_countries()
    pairs = users.select("country", "timezone").unique().rows()
    wrong = [(c, tz) for c, tz in pairs if c not in zone_countries.get(tz, set())]
    assert not wrong
    # Countries with several zones use several, weighted to the most populous one.
    us = users.filter(pl.col("country") == "US")["timezone"].value_counts(sort=True)
    assert us["timezone"][0] == "America/New_York" and us.height >= 5


def test_the_snapshot_works_with_the_segment_compiler(frame):
    assert frame.height == USERS
    assert frame.schema["attributes"] == pl.Struct({"tier": pl.String, "orders": pl.Int64})
    spec = {
        "all": [
            {"country": ["DE", "AT"]},
            {"locale": {"prefix": "de"}},
            {"active_within_days": 30},
            {"affinity": {"category": "fashion", "min": 0.3}},
            {"attr": {"name": "orders", "op": "ge", "value": 1}},
        ]
    }
    chosen = select_users(frame, spec, now=synth.REFERENCE_TIME)
    assert 0 < chosen.len() < USERS * 0.1


def test_ground_truth_file_documents_the_model(population):
    truth = json.loads(population.ground_truth.read_text())
    assert truth["model"] == "logistic" and truth["seed"] == 42
    assert truth["coefficients"] == synth.COEFFICIENTS
    assert set(truth["features"]) >= {"affinity", "recency", "evening", "platform", "style"}
    assert set(truth["variant_styles"]) == set(synth.VARIANT_STYLES)
    assert truth["tz_utc_offset_hours"]["Asia/Kolkata"] == 5.5
    # The file is a complete model: it gives what the module's defaults give.
    probs_file = synth.engagement_probability(
        synth.load_population(population.out_dir).head(500),
        "home",
        "urgent",
        18,
        model=population.ground_truth,
    )
    probs_default = synth.engagement_probability(
        synth.load_population(population.out_dir).head(500), "home", "urgent", 18
    )
    np.testing.assert_allclose(probs_file, probs_default)


def test_higher_affinity_means_more_engagement(frame):
    for category in ("fashion", "electronics"):
        for style in synth.VARIANT_STYLES:
            p = synth.engagement_probability(frame, category, style, 18)
            assert ((p > 0) & (p < 1)).all()
            affinity = frame[f"affinity_{category}"].to_numpy()
            # Mean probability rises from each affinity quintile to the next.
            edges = np.quantile(affinity, [0.2, 0.4, 0.6, 0.8])
            means = [p[np.digitize(affinity, edges) == q].mean() for q in range(5)]
            assert all(b > a for a, b in zip(means, means[1:], strict=False)), (style, means)
    # All else equal, more affinity is strictly more engagement.
    more = frame.with_columns(
        (pl.col("affinity_fashion") + 0.1).clip(upper_bound=1.0).alias("affinity_fashion")
    )
    before = synth.engagement_probability(frame, "fashion", "plain", 18)
    after = synth.engagement_probability(more, "fashion", "plain", 18)
    assert (after >= before).all() and (after > before).mean() > 0.99


def test_other_features_move_engagement_the_documented_way(frame):
    p = synth.engagement_probability(frame, "home", "plain", 18)
    now = synth.REFERENCE_TIME
    # Recently active users engage more.
    recent = frame["last_active_at"].to_numpy() > now - 7 * synth.DAY_S
    assert p[recent].mean() > p[~recent].mean()
    # The same users at 20:00 local beat 03:00 local (Berlin: UTC+1 in November).
    berlin = frame.filter(pl.col("timezone") == "Europe/Berlin")
    evening = synth.engagement_probability(berlin, "home", "plain", 19)
    night = synth.engagement_probability(berlin, "home", "plain", 2)
    assert (evening > night).all()
    # Personalized copy pays off for high-affinity users only.
    high = frame.filter(pl.col("affinity_home") > 0.8)
    low = frame.filter(pl.col("affinity_home") < 0.02)
    lift = lambda f: (  # noqa: E731
        synth.engagement_probability(f, "home", "personalized", 18)
        - synth.engagement_probability(f, "home", "plain", 18)
    ).mean()
    assert lift(high) > 0 > lift(low)
    # Per-row styles and hours broadcast like scalars.
    styles = np.array(["plain", "discount"] * (frame.height // 2))
    mixed = synth.engagement_probability(frame, "home", styles, np.full(frame.height, 18))
    np.testing.assert_allclose(
        mixed[1::2], synth.engagement_probability(frame, "home", "discount", 18)[1::2]
    )
    with pytest.raises(ValueError, match="unknown variant style"):
        synth.engagement_probability(frame, "home", "shouty", 18)


def test_simulated_feedback_follows_the_probabilities(frame):
    p = synth.engagement_probability(frame, "fashion", "personalized", 19)
    feedback = synth.simulate_feedback(frame, "fashion", "personalized", 19, seed=3)
    assert feedback.columns == [
        "user_id",
        "variant_style",
        "p_open",
        "p_click",
        "opened",
        "clicked",
    ]
    assert feedback["user_id"].equals(frame["user_id"])
    np.testing.assert_allclose(feedback["p_open"].to_numpy(), p)
    opened = feedback["opened"].to_numpy()
    clicked = feedback["clicked"].to_numpy()
    assert not (clicked & ~opened).any()
    # Overall rates within 4 standard errors of the expected ones.
    for outcome, prob in ((opened, p), (clicked, feedback["p_click"].to_numpy())):
        se = np.sqrt((prob * (1 - prob)).sum()) / len(prob)
        assert abs(outcome.mean() - prob.mean()) < 4 * se
    # Calibrated within probability deciles too.
    edges = np.quantile(p, np.linspace(0.1, 0.9, 9))
    bins = np.digitize(p, edges)
    for b in range(10):
        rows = bins == b
        se = np.sqrt((p[rows] * (1 - p[rows])).sum()) / rows.sum()
        assert abs(opened[rows].mean() - p[rows].mean()) < 4 * se + 1e-3, b
    # Seeded: same seed same draws, another seed other draws.
    again = synth.simulate_feedback(frame, "fashion", "personalized", 19, seed=3)
    other = synth.simulate_feedback(frame, "fashion", "personalized", 19, seed=4)
    assert feedback.equals(again)
    assert not feedback["opened"].equals(other["opened"])


def test_cli_synth(tmp_path):
    out = tmp_path / "pop"
    result = CliRunner().invoke(app, ["synth", "--users", "5000", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("users", "devices", "wishlists", "products"):
        assert (out / f"{name}.parquet").exists()
        assert f"{name}: {out / f'{name}.parquet'}" in result.output
    assert (out / "ground_truth.json").exists()
    assert "5,000 rows" in result.output
    assert "took " in result.output
    assert pl.read_parquet(out / "users.parquet").height == 5000
    assert sorted(os.listdir(out)) == [
        "devices.parquet",
        "ground_truth.json",
        "products.parquet",
        "users.parquet",
        "wishlists.parquet",
    ]
