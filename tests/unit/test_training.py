"""Training from a feedback log, the log's on-disk layout, and offline evaluation.

No Ray, no Redis. The simulated world (models.synth) draws the feedback and, in
`evaluate`, judges the targeting; the trained model never reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from models import synth
from models.evaluate import evaluate
from models.features import FEATURE_COLUMNS
from models.registry import Registry
from models.train_default import VARIANTS, training_rows
from models.training import (
    log_features,
    read_feedback_log,
    simulate_feedback_log,
    synthetic_population,
    train,
    write_feedback_log,
)

SEED = 20_261_124


@pytest.fixture(scope="module")
def feedback() -> pl.DataFrame:
    """A simulated feedback log: 50,000 sends over 3 days."""
    return simulate_feedback_log(synthetic_population(50_000, SEED), seed=SEED, days=3)


@pytest.fixture(scope="module")
def trained(feedback: pl.DataFrame):
    return train(feedback, holdout_share=0.2)


def test_simulated_log_follows_the_contract(feedback: pl.DataFrame) -> None:
    for column in ("user_id", "timezone", "country", "attributes", "platforms"):
        assert column in feedback.columns
    assert feedback.schema["sent_at"] == pl.Float64
    assert feedback.schema["opened"] == pl.Boolean
    assert set(feedback["style"].unique()) == set(synth.VARIANT_STYLES)
    assert set(feedback["category"].unique()) == set(synth.CATEGORIES)
    span = feedback["sent_at"].max() - feedback["sent_at"].min()
    assert span > 2.5 * synth.DAY_S  # spread over the days, so a time split means something
    assert 0.02 < feedback["opened"].mean() < 0.15


def test_log_features_are_the_serving_features(feedback: pl.DataFrame) -> None:
    """Per row, exactly the row `features` gives that user in that variant at that time."""
    batch = feedback.filter(
        (pl.col("category") == "home")
        & (pl.col("sent_at") == pl.col("sent_at").min().over("category"))
    )
    assert batch.height > 5
    expected = training_rows(
        batch,
        VARIANTS,
        batch["style"].replace_strict({s: i for i, s in enumerate(VARIANTS["style"])}).to_numpy(),
        category="home",
        now=float(batch["sent_at"][0]),
    )
    got = log_features(pl.concat([feedback.head(100), batch]))[100:]
    np.testing.assert_array_equal(got, expected)
    matrix = log_features(feedback)
    assert matrix.shape == (feedback.height, len(FEATURE_COLUMNS)) and np.isfinite(matrix).all()


def test_training_on_feedback_with_a_time_based_holdout(
    trained, feedback: pl.DataFrame, tmp_path: Path
) -> None:
    model, metrics = trained
    assert metrics["holdout_auc"] > 0.75
    assert metrics["train_rows"] + metrics["holdout_rows"] == feedback.height
    assert 0.15 < metrics["holdout_rows"] / feedback.height < 0.25
    cutoff = metrics["data_range"]["holdout_cutoff"]
    # the hold-out is the latest sends: everything at or after the cut-off, nothing before
    assert (feedback["sent_at"] >= cutoff).sum() == metrics["holdout_rows"]
    assert metrics["data_range"]["sent_at_max"] == feedback["sent_at"].max()
    assert 0 < metrics["holdout_log_loss"] < 0.3 and 0 < metrics["holdout_brier"] < 0.1
    table = metrics["holdout_calibration"]
    assert len(table) == 10 and sum(b["count"] for b in table) == metrics["holdout_rows"]
    predicted = [b["mean_predicted"] for b in table]
    assert predicted == sorted(predicted)
    # ~1,000 sends per bin: the observed rates carry ~1.5 points of sampling noise at the top
    assert abs(table[-1]["mean_predicted"] - table[-1]["observed_rate"]) < 0.08
    assert metrics["holdout_ece"] < 0.02

    registry = Registry(tmp_path / "models")
    version = registry.register(model, metrics=metrics, trained_on="a simulated log")
    assert (
        registry.show(version)["data_range"]["holdout_from"]
        == metrics["data_range"]["holdout_from"]
    )
    registry.deploy(version)
    ranker = registry.load()
    assert ranker.version == version
    users = feedback.head(50)
    scores = ranker.score(users, VARIANTS, category="beauty", now=synth.REFERENCE_TIME)
    assert scores.shape == (50, VARIANTS.height) and np.all((scores > 0) & (scores < 1))


def test_training_refuses_unusable_logs(feedback: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="lack column"):
        train(feedback.drop("opened"))
    with pytest.raises(ValueError, match="too few"):
        train(feedback.head(5))
    with pytest.raises(ValueError, match="holdout_share"):
        train(feedback, holdout_share=1.0)


def test_feedback_log_round_trips_with_day_partitions(
    feedback: pl.DataFrame, tmp_path: Path
) -> None:
    root = tmp_path / "feedback"
    back = read_feedback_log(write_feedback_log(feedback, root))
    days = sorted(p.name for p in root.iterdir())
    assert days == ["day=2026-11-01", "day=2026-11-02", "day=2026-11-03"]
    assert all(len(list((root / d).glob("*.parquet"))) == 1 for d in days)
    assert not list(root.rglob(".*"))  # no temporary files left behind
    assert back.schema == feedback.schema
    key = ["sent_at", "user_id"]
    assert back.sort(key).equals(feedback.sort(key))

    one_day = read_feedback_log(root, since="2026-11-02", until="2026-11-02")
    start = synth.REFERENCE_TIME + synth.DAY_S
    in_day = feedback.filter((pl.col("sent_at") >= start) & (pl.col("sent_at") < start + 86_400))
    assert one_day.height == in_day.height > 0

    write_feedback_log(feedback.head(10), root)  # writers append files, never rewrite
    assert read_feedback_log(root).height == feedback.height + 10
    with pytest.raises(FileNotFoundError):
        read_feedback_log(tmp_path / "empty")

    # files with different columns (a campaign's sends carry only its category's affinity)
    mixed = tmp_path / "mixed"
    base = feedback.head(20).drop(pl.col("^affinity_.*$"), "clicked")
    write_feedback_log(base.with_columns(affinity_home=pl.lit(0.5, pl.Float32)), mixed)
    write_feedback_log(base.with_columns(affinity_sports=pl.lit(0.25, pl.Float32)), mixed)
    both = read_feedback_log(mixed)
    assert both.height == 40
    assert both["affinity_home"].null_count() == both["affinity_sports"].null_count() == 20


def test_evaluate_against_the_ground_truth(trained, tmp_path: Path) -> None:
    from models.ranker import Ranker

    model, _ = trained
    result = evaluate(
        Ranker(model, version="candidate"),
        users=8_000,
        seed=SEED + 1,
        out_dir=tmp_path / "eval",
        bandit_rounds=20,
        bandit_batch=1_000,
    )
    assert result["lift_vs_random"] >= 2.0
    assert result["share_of_oracle"] >= 0.9
    assert result["clicks_lift_vs_random"] >= 2.0
    at20 = result["audiences"]["20%"]
    assert at20["ranker"]["precision"] > at20["recency"]["precision"] > at20["random"]["precision"]
    assert at20["oracle"]["expected_clicks"] >= at20["ranker"]["expected_clicks"]
    for label in ("5%", "10%", "20%", "50%"):
        assert set(result["audiences"][label]) == {"k", "ranker", "random", "recency", "oracle"}
    bandit = result["bandit"]
    assert bandit["bandit"]["cumulative_regret"] < bandit["uniform_random"]["cumulative_regret"]
    assert len(bandit["bandit"]["regret_per_round"]) == 20
    for name in ("lift", "calibration", "regret"):
        path = Path(result["plots"][name])
        assert path.suffix == ".png" and path.stat().st_size > 5_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "eval" / "evaluation.json").stat().st_size > 0
