"""Propensities in the feedback log: what the live policy's probability of each send was.

The estimate (`models.propensity`) is checked against the policy itself — the frequency with
which `choose_variants` really picks each variant over many independent runs — and the
logged column against the contract an off-policy estimator relies on: per user, the
probabilities over the variants they could get sum to 1, and a deterministic choice is 1.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from models.bandit import BY_EXPLORATION, BY_RANK, choose_logged, choose_variants
from models.propensity import choice_probabilities
from models.ranker import load_ranker
from models.synth import REFERENCE_TIME, load_population, synthesize
from pipelines import campaigns, feedback_log, price_drops

NOW = REFERENCE_TIME + 14 * 3600
STYLES = ("plain", "urgent", "discount", "emoji", "personalized")


def _campaign(n_variants: int, exploration: float, audience_limit: int | None = None) -> dict:
    return {
        "campaign_id": "ope",
        "segment": {"active_within_days": 60},
        "variants": [
            {"variant_id": f"v{i}", "title": "t", "body": "b", "style": STYLES[i]}
            for i in range(n_variants)
        ],
        "channels": ["push", "inbox"],
        "category": "home",
        "audience_limit": audience_limit,
        "exploration": exploration,
    }


@pytest.fixture(scope="module")
def users(tmp_path_factory) -> pl.DataFrame:
    out = Path(tmp_path_factory.mktemp("pop"))
    synthesize(3_000, seed=11, out_dir=out)
    return load_population(out).with_columns(
        push=True,
        inbox=True,
        cat_marketing=True,
        quiet_start_min=pl.lit(None, pl.Int16),
        quiet_end_min=pl.lit(None, pl.Int16),
        max_marketing_per_day=pl.lit(3, pl.Int32),
        has_push_device=pl.col("platforms").list.len() > 0,
    )


@pytest.mark.parametrize("n_variants", [2, 3, 5])
def test_estimate_matches_the_policys_own_frequencies(n_variants: int) -> None:
    """Run the live policy 3,000 times on the same 150 users: each user's share of each
    variant is the propensity, within the binomial error of the runs plus the estimate's."""
    rng = np.random.default_rng(n_variants)
    scores = 0.08 + 0.03 * rng.random((150, n_variants))
    stats = np.array([[40 + 15 * i, 900] for i in range(n_variants)], dtype=np.float64)
    runs = 3_000
    counts = np.zeros_like(scores)
    for _ in range(runs):  # the policy's randomness, run after run (a test, not a hot path)
        chosen = choose_variants(scores, stats, exploration=0.2, rng=rng)
        counts[np.arange(150), chosen] += 1
    estimate = choice_probabilities(scores, stats, exploration=0.2, rng=rng)
    np.testing.assert_allclose(estimate.p.sum(axis=1), 1.0, atol=1e-9)
    # a floor on the error: a Monte-Carlo count of 0 has an estimated error of 0
    floor = 0.5 / 256 if n_variants > 3 else 0.0
    error = np.sqrt(estimate.p * (1 - estimate.p) / runs + estimate.se**2 + floor**2)
    z = np.abs(counts / runs - estimate.p) / np.maximum(error, 1e-9)
    assert z.max() < 5.0, (z.max(), np.abs(counts / runs - estimate.p).max())


def test_deterministic_choice_is_one_and_without_feedback_is_exact() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((1_000, 3))
    logged = choose_logged(scores, None, exploration=0.0, rng=rng)
    np.testing.assert_array_equal(logged.chosen, scores.argmax(axis=1))
    assert np.all(logged.propensity == 1.0) and np.all(logged.propensity_se == 0.0)
    mixed = choose_logged(scores, None, exploration=0.3, rng=rng)
    best = mixed.chosen == scores.argmax(axis=1)
    np.testing.assert_allclose(mixed.propensity[best], 0.7 + 0.1)
    np.testing.assert_allclose(mixed.propensity[~best], 0.1)
    assert np.all(mixed.propensity_se == 0.0)
    # NaN scores (never preferred) still give rows that sum to 1
    scores[:10, 0] = np.nan
    weird = choose_logged(scores, [[3, 30], [5, 30], [1, 30]], exploration=0.1, rng=rng)
    np.testing.assert_allclose(weird.p.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(weird.p[:10, 0] <= 0.1 + 1e-9)  # only exploration picks a NaN score


@pytest.mark.parametrize("n_variants", [2, 3])
def test_logged_propensities_sum_to_one_per_user(users: pl.DataFrame, n_variants: int) -> None:
    """Plan the same campaign 30 times (fresh draws each time, the same feedback): per user,
    the logged propensity of each variant they got is one number (up to its Monte-Carlo
    error), and those numbers over the variants they could get sum to 1."""
    campaign = _campaign(n_variants, exploration=0.6)
    hit = campaigns.targeted(users, campaign, NOW).head(300)
    stats = [[20 + 2 * i, 400] for i in range(n_variants)]  # overlapping posteriors
    ranker, logs = load_ranker(), []
    for run in range(30):
        chosen, _ = campaigns.plan(
            hit, campaign, now=NOW, ranker=ranker, variant_stats=stats,
            rng=np.random.default_rng(run),
        )  # fmt: skip
        sent = feedback_log.sends(chosen, hit, campaign, model_version="m", now=NOW)
        logs.append(sent.select("user_id", "variant_id", *feedback_log.PROPENSITY_COLUMNS))
    log = pl.concat(logs)
    assert log["propensity"].is_between(0.0, 1.0, closed="right").all()
    assert set(log["audience"]) == {BY_RANK, BY_EXPLORATION}
    per_variant = log.group_by("user_id", "variant_id").agg(
        p=pl.col("propensity").mean(),
        spread=pl.col("propensity").std(),
        se=pl.col("propensity_se").max(),
    )
    assert (per_variant["spread"].fill_null(0.0) <= 5 * per_variant["se"] + 1e-9).all()
    whole = per_variant.group_by("user_id").agg(
        pl.col("p").sum(), seen=pl.len(), se=pl.col("se").sum()
    )
    complete = whole.filter(pl.col("seen") == n_variants)  # users who got every variant
    assert complete.height > 0.9 * whole.height
    assert ((complete["p"] - 1.0).abs() <= 5 * complete["se"] + 1e-6).all()
    assert (whole["p"] <= 1.0 + 5 * whole["se"] + 1e-6).all()  # never more than certain


def test_audience_cut_keeps_the_logged_columns(users: pl.DataFrame) -> None:
    campaign = _campaign(3, exploration=0.2, audience_limit=100)
    hit = campaigns.targeted(users, campaign, NOW)
    chosen, _ = campaigns.plan(
        hit, campaign, now=NOW, ranker=load_ranker(), variant_stats=None,
        rng=np.random.default_rng(3),
    )  # fmt: skip
    merged = campaigns.top(pl.concat([chosen, chosen.head(0)]), 50)
    assert merged.height == 50 and merged["propensity"].null_count() == 0
    explored = merged.filter(pl.col("audience") == BY_EXPLORATION)
    by_rank = merged.filter(pl.col("audience") == BY_RANK)
    # without feedback: 1 − ε + ε/V for the model's choice; an explored user got it or not
    assert np.allclose(by_rank["propensity"], 0.8 + 0.2 / 3)
    assert set(np.round(explored["propensity"], 9)) <= {round(0.8 + 0.2 / 3, 9), round(0.2 / 3, 9)}


def test_price_drop_sends_are_deterministic() -> None:
    chosen = pl.DataFrame(
        {"notification_id": ["e1:u1"], "user_id": ["u1"], "event_id": ["e1"],
         "category": ["home"], "score": [0.2]}
    )  # fmt: skip
    sent = price_drops.sends(chosen, model_version="m", now=NOW)
    assert sent.select(feedback_log.PROPENSITY_COLUMNS).row(0) == (1.0, 0.0, BY_RANK)
