"""Train the shipped default ranker from a synthetic population's simulated feedback.

    python -m models.train_default [--users 400000] [--seed 7] [--out models/default]

writes `models/default/ranker.skops` and `models/default/ranker.json` (metadata with the
hold-out metrics). The data: a synthetic population (`models.synth.synthesize`); each user
gets one notification of a random category, in a random variant style, sent at a random
hour (one hour and category per group of users, so `features` — the same function serving
uses — is called with a scalar `now` per group). What they did comes from
`models.synth.simulate_feedback`, the simulated world, whose clock is set to the send time.
The ranker learns from those Bernoulli outcomes only; it never sees the world's
coefficients. Metrics are measured on a second population (another seed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from cluster.vocabulary import CATEGORIES, VARIANT_STYLES
from models import synth
from models.features import FEATURE_COLUMNS, features
from models.ranker import DEFAULT_PATH, Ranker, save_ranker

TRAIN_SEED = 7
HOLDOUT_SEED = 8
TRAIN_USERS = 400_000
HOLDOUT_USERS = 200_000
HOURS = 24
REGULARIZATION_C = 10.0

VARIANTS = pl.DataFrame({"variant_id": list(VARIANT_STYLES), "style": list(VARIANT_STYLES)})


def world(now: float) -> dict[str, Any]:
    """The simulated world (synth's hidden engagement model) with its clock at `now`: time
    zone offsets and idle days as of the send. Only the simulator and evaluators use it."""
    return synth.ground_truth(seed=0, now=now)


def hour_utc(now: float) -> float:
    return (now % synth.DAY_S) / 3600.0


def training_rows(
    users: pl.DataFrame,
    variants: pl.DataFrame,
    variant_index: np.ndarray,
    *,
    category: str | None,
    now: float,
) -> np.ndarray:
    """The feature rows of the (user, variant) pairs actually sent: row u*V + variant_index[u]
    of `features(users, variants, ...)` — the very rows serving scores."""
    matrix = features(users, variants, category=category, now=now)
    v = variants.height
    return matrix[np.arange(users.height) * v + np.asarray(variant_index)]


def simulated_sends(
    users: pl.DataFrame, *, seed: int, start: float = synth.REFERENCE_TIME
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, opened, true P(opened)) for one random notification per user: a random category,
    style and send hour in the 24 hours from `start`."""
    rng = np.random.default_rng(seed)
    n = users.height
    group = rng.integers(0, HOURS * len(CATEGORIES), size=n)
    style = rng.integers(0, VARIANTS.height, size=n)
    minutes = rng.uniform(0, 3600, size=HOURS * len(CATEGORIES))
    xs, ys, ps = [], [], []
    for g in range(HOURS * len(CATEGORIES)):  # a loop over groups, not users
        rows = np.flatnonzero(group == g)
        if len(rows) == 0:
            continue
        hour, category = divmod(g, len(CATEGORIES))
        category_name = CATEGORIES[category]
        now = start + hour * 3600.0 + minutes[g]
        chunk = users[rows]
        xs.append(training_rows(chunk, VARIANTS, style[rows], category=category_name, now=now))
        feedback = synth.simulate_feedback(
            chunk,
            category_name,
            VARIANTS["style"].gather(style[rows]),
            hour_utc(now),
            seed=int(rng.integers(2**31)),
            model=world(now),
        )
        ys.append(feedback["opened"].to_numpy())
        ps.append(feedback["p_open"].to_numpy())
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(ps)


def targeting(
    ranker: Ranker,
    users: pl.DataFrame,
    *,
    category: str,
    now: float,
    share: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Expected opens (sum of the world's P(opened)) of a campaign to `share` of `users` at
    `now`: the ranker's top users by best-variant score, each in that variant; a random
    audience in random variants; the oracle's top users in their best variants."""
    k = int(round(share * users.height))
    truth = np.column_stack(
        [
            synth.engagement_probability(users, category, s, hour_utc(now), model=world(now))
            for s in VARIANTS["style"]
        ]
    )
    scores = ranker.score(users, VARIANTS, category=category, now=now)
    best = scores.argmax(axis=1)
    top = np.argpartition(-scores.max(axis=1), k - 1)[:k]
    model_opens = truth[top, best[top]].sum()
    rng = np.random.default_rng(seed)
    random_users = rng.choice(users.height, size=k, replace=False)
    random_opens = truth[random_users, rng.integers(0, VARIANTS.height, size=k)].sum()
    oracle_best = truth.max(axis=1)
    oracle_opens = oracle_best[np.argpartition(-oracle_best, k - 1)[:k]].sum()
    return {
        "model": float(model_opens),
        "random": float(random_opens),
        "oracle": float(oracle_opens),
        "lift_vs_random": float(model_opens / random_opens),
        "share_of_oracle": float(model_opens / oracle_opens),
        "best_variant_agreement": float(np.mean(best == truth.argmax(axis=1))),
    }


def train(
    *, users: int = TRAIN_USERS, seed: int = TRAIN_SEED, holdout_users: int = HOLDOUT_USERS
) -> tuple[LogisticRegression, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        synth.synthesize(users, seed, Path(tmp) / "train")
        train_pop = synth.load_population(Path(tmp) / "train")
        synth.synthesize(holdout_users, HOLDOUT_SEED, Path(tmp) / "holdout")
        holdout_pop = synth.load_population(Path(tmp) / "holdout")

    t0 = time.perf_counter()
    x, y, _ = simulated_sends(train_pop, seed=seed)
    model = LogisticRegression(C=REGULARIZATION_C, max_iter=2000, tol=1e-6)
    model.fit(x, y)
    fit_s = time.perf_counter() - t0

    xh, yh, ph = simulated_sends(holdout_pop, seed=HOLDOUT_SEED)
    predicted = model.predict_proba(xh)[:, 1]
    ranker = Ranker(model, version="candidate")
    lift = {
        c: targeting(ranker, holdout_pop, category=c, now=synth.REFERENCE_TIME + 19.5 * 3600)
        for c in CATEGORIES
    }
    metrics: dict[str, Any] = {
        "target": "opened",
        "train_rows": int(len(y)),
        "train_open_rate": float(y.mean()),
        "holdout_rows": int(len(yh)),
        "holdout_open_rate": float(yh.mean()),
        "holdout_mean_predicted": float(predicted.mean()),
        "holdout_auc": float(roc_auc_score(yh, predicted)),
        "holdout_auc_of_true_probability": float(roc_auc_score(yh, ph)),
        "holdout_log_loss": float(log_loss(yh, predicted)),
        "holdout_log_loss_of_true_probability": float(log_loss(yh, ph)),
        "holdout_brier": float(brier_score_loss(yh, predicted)),
        "holdout_corr_with_true_probability": float(np.corrcoef(predicted, ph)[0, 1]),
        "top20_targeting_at_19h30_utc": lift,
        "coefficients": dict(zip(FEATURE_COLUMNS, map(float, model.coef_[0]), strict=True)),
        "intercept": float(model.intercept_[0]),
        "fit_seconds": round(fit_s, 2),
        "regularization_C": REGULARIZATION_C,
    }
    return model, metrics


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=TRAIN_USERS)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    out = args.out if args.out.suffix == ".skops" else args.out / "ranker.skops"
    model, metrics = train(users=args.users, seed=args.seed)
    path = save_ranker(
        model,
        out,
        metrics=metrics,
        trained_on=(
            f"models.synth population of {args.users} users, seed {args.seed}: one simulated "
            "send per user (random category, style, hour), label = opened"
        ),
    )
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    for key in ("holdout_auc", "holdout_auc_of_true_probability", "holdout_log_loss"):
        print(f"{key}: {metrics[key]:.4f}")
    for category, result in metrics["top20_targeting_at_19h30_utc"].items():
        print(
            f"{category}: lift vs random {result['lift_vs_random']:.2f}x, "
            f"{result['share_of_oracle']:.3f} of oracle"
        )
    return path


if __name__ == "__main__":
    main()
