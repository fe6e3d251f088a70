"""The ranker, its feature contract and the bandit, against the synthetic ground truth.

No Ray, no Redis: plain numpy / polars. The ground truth (models.synth's hidden model) is
used here as the evaluator only; the ranker never reads it."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from models import synth
from models.bandit import choose_variants, select_top
from models.features import FEATURE_COLUMNS, FEATURE_VERSION, features
from models.ranker import DEFAULT_PATH, Ranker, load_ranker, metadata_path, save_ranker
from models.train_default import training_rows

STYLES = list(synth.VARIANT_STYLES)
ALL_VARIANTS = pl.DataFrame({"variant_id": [f"v-{s}" for s in STYLES], "style": STYLES})
# 2026-11-03 18:40 UTC: another day and hour than the training sends (Nov 1, all hours).
NOW = synth.REFERENCE_TIME + 2 * synth.DAY_S + 18 * 3600 + 40 * 60
EVAL_SEED = 20_261_125  # not the training (7) nor the hold-out (8) seed


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    out = tmp_path_factory.mktemp("population")
    synth.synthesize(20_000, EVAL_SEED, out)
    return synth.load_population(out)


@pytest.fixture(scope="module")
def ranker() -> Ranker:
    return load_ranker()


def world_truth(users: pl.DataFrame, category: str, now: float) -> np.ndarray:
    """(n_users, n_styles) ground-truth P(opened), the world's clock at `now`."""
    model = synth.ground_truth(seed=0, now=now)
    hour = (now % synth.DAY_S) / 3600
    return np.column_stack(
        [synth.engagement_probability(users, category, s, hour, model=model) for s in STYLES]
    )


# --- the shipped model against the ground truth ------------------------------------------


@pytest.mark.parametrize(
    ("category", "now"),
    [("electronics", NOW), ("sports", NOW + 9 * 3600), ("fashion", NOW + 30 * synth.DAY_S)],
)
def test_default_ranker_targets_far_better_than_random(
    population: pl.DataFrame, ranker: Ranker, category: str, now: float
) -> None:
    """Top 20 % by the ranker's best-variant score, each user in that variant: expected
    opens (sum of the true P(opened)) vs a random 20 % in random variants (its expectation)
    and the oracle's top 20 % in their true best variants."""
    truth = world_truth(population, category, now)
    scores = ranker.score(population, ALL_VARIANTS, category=category, now=now)
    assert scores.shape == (population.height, len(STYLES))
    assert scores.dtype == np.float64 and np.all((scores > 0) & (scores < 1))

    k = population.height // 5
    best = scores.argmax(axis=1)
    kept = select_top(scores.max(axis=1), audience_limit=k, score_threshold=None)
    assert kept.sum() == k
    model_opens = truth[kept, best[kept]].sum()
    random_opens = k * truth.mean()  # expectation over random users and variants
    oracle_best = truth.max(axis=1)
    oracle_opens = np.sort(oracle_best)[-k:].sum()

    assert model_opens >= 2.0 * random_opens, (model_opens, random_opens)
    assert model_opens >= 0.9 * oracle_opens, (model_opens, oracle_opens)
    # What it actually reaches (a well-specified model): within 1 % of the oracle, and it
    # picks the truly best variant for nearly every user.
    assert model_opens >= 0.99 * oracle_opens, (model_opens, oracle_opens)
    assert np.mean(best == truth.argmax(axis=1)) > 0.9


def test_default_ranker_is_discriminative_and_calibrated(
    population: pl.DataFrame, ranker: Ranker
) -> None:
    """On simulated sends (random style per user): AUC as good as the true probabilities
    give, and mean predicted ≈ observed open rate."""
    rng = np.random.default_rng(1)
    style = rng.integers(0, len(STYLES), size=population.height)
    now = NOW + 3 * 3600
    feedback = synth.simulate_feedback(
        population,
        "home",
        [STYLES[i] for i in style],
        (now % synth.DAY_S) / 3600,
        seed=2,
        model=synth.ground_truth(seed=0, now=now),
    )
    scores = ranker.score(population, ALL_VARIANTS, category="home", now=now)
    predicted = scores[np.arange(population.height), style]
    opened = feedback["opened"].to_numpy()
    auc = roc_auc_score(opened, predicted)
    auc_true = roc_auc_score(opened, feedback["p_open"].to_numpy())
    assert auc > 0.8
    assert auc >= auc_true - 0.01, (auc, auc_true)
    assert abs(predicted.mean() - feedback["p_open"].mean()) < 0.05 * feedback["p_open"].mean()
    assert np.corrcoef(predicted, feedback["p_open"].to_numpy())[0, 1] > 0.99


def test_shipped_artifact_is_small_and_described() -> None:
    assert DEFAULT_PATH.stat().st_size < 200_000
    meta = json.loads(metadata_path(DEFAULT_PATH).read_text())
    assert meta["feature_version"] == FEATURE_VERSION
    assert meta["feature_columns"] == list(FEATURE_COLUMNS)
    assert meta["target"] == "opened"
    assert meta["metrics"]["holdout_auc"] > 0.8
    ranker = load_ranker()
    assert ranker.feature_version == FEATURE_VERSION
    assert ranker.version == meta["version"] and meta["sha256"][:12] in ranker.version


# --- features ---------------------------------------------------------------------------


def test_features_shape_order_and_batch_independence(population: pl.DataFrame) -> None:
    users = population.head(50)
    variants = ALL_VARIANTS[[4, 0, 2]]
    matrix = features(users, variants, category="beauty", now=NOW)
    assert matrix.dtype == np.float32
    assert matrix.shape == (50 * 3, len(FEATURE_COLUMNS))
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    col = {c: i for i, c in enumerate(FEATURE_COLUMNS)}
    # user-major: row u*V + v; user columns repeat per variant, style columns follow variants
    user_cols = [col[c] for c in ("affinity", "log1p_idle_days", "hour_evening_cos")]
    np.testing.assert_array_equal(matrix[0::3][:, user_cols], matrix[1::3][:, user_cols])
    assert np.all(matrix[0::3, col["style_emoji"]] == 1)
    assert np.all(matrix[1::3, [col[f"style_{s}"] for s in STYLES[1:]]] == 0)  # plain
    assert np.all(matrix[2::3, col["style_personalized"]] == 1)
    np.testing.assert_allclose(
        matrix[:, col["affinity"]][0::3], users["affinity_beauty"].to_numpy(), rtol=1e-6
    )
    # the same rows whatever the batch: one user, one variant at a time
    for u in (0, 17, 49):
        for v in range(3):
            alone = features(users[u : u + 1], variants[v : v + 1], category="beauty", now=NOW)
            np.testing.assert_array_equal(alone[0], matrix[u * 3 + v])


def test_linear_fast_path_scores_like_the_feature_matrix(
    population: pl.DataFrame, ranker: Ranker
) -> None:
    """`Ranker.score` skips the (n·v, F) matrix for a logistic regression: same numbers as
    predict_proba on `features`, for every style and with missing columns too."""
    for users in (population.head(3000), population.head(500).drop("attributes", "platforms")):
        for category in ("fashion", None):
            fast = ranker.score(users, ALL_VARIANTS, category=category, now=NOW)
            matrix = features(users, ALL_VARIANTS, category=category, now=NOW)
            slow = ranker.model.predict_proba(matrix)[:, 1].reshape(fast.shape)
            np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)


def test_training_rows_are_the_serving_rows(population: pl.DataFrame) -> None:
    users = population.head(200)
    variant_index = np.random.default_rng(3).integers(0, len(STYLES), size=200)
    trained = training_rows(users, ALL_VARIANTS, variant_index, category="home", now=NOW)
    served = features(users, ALL_VARIANTS, category="home", now=NOW)
    np.testing.assert_array_equal(
        trained, served.reshape(200, len(STYLES), -1)[np.arange(200), variant_index]
    )


def test_feature_values_by_hand() -> None:
    now = epoch("2026-07-01T12:00:00")  # New York on EDT (UTC−4): 08:00 local
    users = pl.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "country": ["US", "DE", "US"],
            "timezone": ["America/New_York", None, "Not/AZone"],
            "attributes": [{"tier": "gold"}, {"tier": None}, {"tier": "basic"}],
            "platforms": [["ios", "web"], [], None],
            "last_active_at": [now - 9 * synth.DAY_S, None, now + 50.0],
            "affinity_home": [0.3, None, 1.7],
        }
    )
    variants = pl.DataFrame({"variant_id": ["x", "y"], "style": ["discount", "bogus"]})
    m = features(users, variants, category="home", now=now).reshape(3, 2, -1)
    f = {c: m[:, :, i] for i, c in enumerate(FEATURE_COLUMNS)}
    np.testing.assert_allclose(f["affinity"][:, 0], [0.3, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(
        f["log1p_idle_days"][:, 0], [math.log(10), math.log1p(365), 0.0], rtol=1e-6
    )
    # a: 08:00 New York; b: no zone → Germany's Europe/Berlin, CEST 14:00; c: unknown → UTC
    hours = np.array([8.0, 14.0, 12.0])
    np.testing.assert_allclose(
        f["hour_evening_cos"][:, 0], np.cos(2 * np.pi * (hours - 20) / 24), atol=1e-6
    )
    np.testing.assert_array_equal(f["hour_night"][:, 0], [0, 0, 0])
    np.testing.assert_array_equal(f["has_ios"][:, 0], [1, 0, 0])
    np.testing.assert_array_equal(f["has_web"][:, 0], [1, 0, 0])
    np.testing.assert_array_equal(f["no_device"][:, 0], [0, 1, 1])
    np.testing.assert_array_equal(f["tier_basic"][:, 0], [0, 1, 1])
    np.testing.assert_array_equal(f["style_discount"], [[1, 0]] * 3)  # "bogus" → plain
    np.testing.assert_array_equal(f["basic_x_discount"], [[0, 0], [1, 0], [1, 0]])
    np.testing.assert_allclose(f["affinity_x_discount"][:, 0], [0.3, 0, 1], rtol=1e-6)

    # Winter: New York on EST (UTC−5), 02:00 local → night
    winter = features(users[:1], variants, category="home", now=epoch("2026-12-01T07:00:00"))
    assert winter[0, FEATURE_COLUMNS.index("hour_night")] == 1
    np.testing.assert_allclose(
        winter[0, FEATURE_COLUMNS.index("hour_evening_cos")],
        np.cos(2 * np.pi * -18 / 24),
        atol=1e-6,
    )


def test_missing_columns_use_documented_defaults(ranker: Ranker) -> None:
    bare = pl.DataFrame({"user_id": ["a", "b"]})
    m = features(bare, pl.DataFrame({"variant_id": ["x"]}), category="fashion", now=NOW)
    assert m.shape == (2, len(FEATURE_COLUMNS)) and np.all(np.isfinite(m))
    row = dict(zip(FEATURE_COLUMNS, m[0], strict=True))
    assert row["affinity"] == 0 and row["tier_basic"] == 1 and row["no_device"] == 0
    assert row["log1p_idle_days"] == pytest.approx(math.log1p(365))
    assert all(row[f"style_{s}"] == 0 for s in STYLES[1:])

    odd = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "country": [None, "ZZ"],
            "timezone": pl.Series([None, None], dtype=pl.String),
            "attributes": ['{"tier": "vip"}', "{}"],  # JSON strings, as profiles store them
            "platforms": pl.Series([None, ["android"]], dtype=pl.List(pl.String)),
            "last_active_at": pl.Series([None, None], dtype=pl.Float64),
            "affinity_fashion": pl.Series([float("nan"), None], dtype=pl.Float32),
        }
    )
    m = features(odd, ALL_VARIANTS, category="fashion", now=NOW).reshape(2, 5, -1)
    assert np.all(np.isfinite(m))
    assert m[0, 0, FEATURE_COLUMNS.index("tier_basic")] == 0
    assert m[1, 0, FEATURE_COLUMNS.index("tier_basic")] == 1
    assert m[1, 0, FEATURE_COLUMNS.index("has_android")] == 1
    for frame in (bare, odd, odd.drop("attributes"), odd.head(0)):
        for category in ("fashion", None, "toys"):
            scores = ranker.score(frame, ALL_VARIANTS, category=category, now=NOW)
            assert scores.shape == (frame.height, 5)
            assert np.all((scores > 0) & (scores < 1))
    assert ranker.score(bare, ALL_VARIANTS.head(0), category=None, now=NOW).shape == (2, 0)


# --- choose_variants --------------------------------------------------------------------


def test_choose_variants_without_feedback_is_the_model_argmax() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((5_000, 4))
    chosen = choose_variants(scores, None, exploration=0.0, rng=rng)
    assert chosen.dtype == np.int64 and chosen.shape == (5_000,)
    np.testing.assert_array_equal(chosen, scores.argmax(axis=1))
    # weak, equal feedback changes nothing: the lift is ≈ 1 for all variants
    equal = np.array([[50, 50]] * 4)
    same = choose_variants(scores, equal * 1_000_000, exploration=0.0, rng=rng)
    assert np.mean(same == scores.argmax(axis=1)) > 0.99


def test_choose_variants_follows_strong_feedback() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    # the model slightly prefers variant 0 for everyone, with per-user noise
    scores = 0.10 + 0.01 * rng.random((n, 3))
    scores[:, 0] += 0.004
    before = np.bincount(choose_variants(scores, None, exploration=0.0, rng=rng), minlength=3)
    stats = np.array([[100, 9_900], [400, 9_600], [100, 9_900]])  # variant 1 opens 4× as often
    after = np.bincount(choose_variants(scores, stats, exploration=0.0, rng=rng), minlength=3)
    assert before.argmax() == 0 and after[1] > 0.95 * n, (before, after)
    # the model still orders users: a user who scores variant 1 far below keeps variant 0
    scores[:100, 1] = 0.01
    chosen = choose_variants(scores, stats, exploration=0.0, rng=rng)
    assert np.all(chosen[:100] != 1)
    # the explore share follows the posterior too
    explored = choose_variants(scores, stats, exploration=1.0, rng=rng)
    assert np.mean(explored == 1) > 0.95


@pytest.mark.parametrize("exploration", [0.05, 0.2, 0.5])
def test_exploration_share(exploration: float) -> None:
    rng = np.random.default_rng(2)
    n, v = 100_000, 4
    scores = np.tile([0.9, 0.1, 0.2, 0.3], (n, 1))  # exploit always picks variant 0
    chosen = choose_variants(scores, None, exploration=exploration, rng=rng)
    # explored users pick uniformly: a share exploration·(v−1)/v leaves variant 0
    expected = exploration * (v - 1) / v
    observed = np.mean(chosen != 0)
    assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n)
    counts = np.bincount(chosen[chosen != 0], minlength=v)[1:]
    assert counts.min() > 0.9 * counts.mean()  # uniform among the explored variants


def test_choose_variants_validates_and_is_seeded() -> None:
    scores = np.random.default_rng(3).random((100, 3))
    a = choose_variants(
        scores, [[1, 2], [3, 4], [5, 6]], exploration=0.3, rng=np.random.default_rng(9)
    )
    b = choose_variants(
        scores, [[1, 2], [3, 4], [5, 6]], exploration=0.3, rng=np.random.default_rng(9)
    )
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        choose_variants(scores, np.ones((2, 2)), exploration=0.1, rng=np.random.default_rng())
    with pytest.raises(ValueError):
        choose_variants(scores, None, exploration=1.5, rng=np.random.default_rng())
    assert choose_variants(
        np.zeros((0, 3)), None, exploration=0.1, rng=np.random.default_rng()
    ).shape == (0,)


# --- select_top -------------------------------------------------------------------------


def reference_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Top k by a full stable sort: higher score first, earlier position on ties."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


def test_select_top_exact_threshold_and_both() -> None:
    scores = np.array([0.5, 0.9, 0.1, 0.9, 0.7, 0.5, 0.5])
    assert select_top(scores, audience_limit=None, score_threshold=None).all()
    np.testing.assert_array_equal(
        select_top(scores, audience_limit=3, score_threshold=None), [0, 1, 0, 1, 1, 0, 0]
    )
    # ties at the cut-off: the earliest positions win
    np.testing.assert_array_equal(
        select_top(scores, audience_limit=5, score_threshold=None), [1, 1, 0, 1, 1, 1, 0]
    )
    np.testing.assert_array_equal(
        select_top(scores, audience_limit=None, score_threshold=0.5), scores >= 0.5
    )
    np.testing.assert_array_equal(
        select_top(scores, audience_limit=2, score_threshold=0.95), np.zeros(7, dtype=bool)
    )
    np.testing.assert_array_equal(
        select_top(scores, audience_limit=10, score_threshold=0.6), scores >= 0.6
    )
    np.testing.assert_array_equal(
        select_top(scores, audience_limit=4, score_threshold=0.5), [1, 1, 0, 1, 1, 0, 0]
    )
    assert not select_top(scores, audience_limit=0, score_threshold=None).any()
    assert select_top(np.zeros(0), audience_limit=5, score_threshold=0.1).shape == (0,)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=0, max_size=60),
    st.integers(0, 70),
    st.one_of(st.none(), st.integers(0, 6)),
)
def test_select_top_matches_a_full_sort(values: list[int], k: int, threshold: int | None) -> None:
    scores = np.array(values, dtype=np.float64) / 6  # many ties
    thr = None if threshold is None else threshold / 6
    kept = select_top(scores, audience_limit=k, score_threshold=thr)
    eligible = scores >= thr if thr is not None else np.ones(len(scores), dtype=bool)
    expected = reference_top(np.where(eligible, scores, -np.inf), min(k, int(eligible.sum())))
    np.testing.assert_array_equal(kept, expected & eligible)


# --- model files ------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    path = tmp_path / "ranker.skops"
    shutil.copy(DEFAULT_PATH, path)
    shutil.copy(metadata_path(DEFAULT_PATH), metadata_path(path))
    return path


def test_save_and_load_round_trip(tmp_path: Path, population: pl.DataFrame) -> None:
    default = load_ranker()
    path = save_ranker(
        default.model, tmp_path / "m" / "r.skops", metrics={"auc": 1}, trained_on="t"
    )
    meta = json.loads(metadata_path(path).read_text())
    assert {"feature_version", "version", "sha256", "metrics", "created_at", "trained_on"} <= set(
        meta
    )
    loaded = load_ranker(path)
    users = population.head(1_000)
    np.testing.assert_array_equal(
        loaded.score(users, ALL_VARIANTS, category="home", now=NOW),
        default.score(users, ALL_VARIANTS, category="home", now=NOW),
    )


def test_wrong_feature_version_is_refused(model_copy: Path) -> None:
    meta_file = metadata_path(model_copy)
    meta = json.loads(meta_file.read_text())
    meta["feature_version"] = "f0"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="feature_version"):
        load_ranker(model_copy)


def test_corrupt_or_foreign_files_are_refused(model_copy: Path) -> None:
    meta_file = metadata_path(model_copy)
    meta = json.loads(meta_file.read_text())
    # bytes changed after saving: the sha256 no longer matches
    model_copy.write_bytes(model_copy.read_bytes()[:-100])
    with pytest.raises(ValueError, match="sha256"):
        load_ranker(model_copy)
    # not a skops archive at all (metadata without a digest, so the archive is opened)
    del meta["sha256"]
    meta_file.write_text(json.dumps(meta))
    model_copy.write_bytes(b"\x80\x04 this is a pickle, honest")
    with pytest.raises(ValueError, match="skops"):
        load_ranker(model_copy)
    # no metadata
    meta_file.unlink()
    with pytest.raises(ValueError, match="metadata"):
        load_ranker(model_copy)
    # metadata that is not JSON
    meta_file.write_text("{nope")
    with pytest.raises(ValueError, match="metadata"):
        load_ranker(model_copy)


def test_untrusted_types_are_refused(tmp_path: Path) -> None:
    import operator

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = np.random.default_rng(0).random((50, len(FEATURE_COLUMNS))).astype(np.float32)
    y = np.arange(50) % 2
    model = make_pipeline(FunctionTransformer(operator.neg), load_ranker().model).fit(x, y)
    path = save_ranker(model, tmp_path / "evil.skops", metrics={}, trained_on="test")
    with pytest.raises(ValueError, match="untrusted types.*_operator.neg"):
        load_ranker(path)
