"""Offline evaluation of a ranker against the synthetic world's hidden ground truth.

`evaluate(ranker, users=50_000, seed=..., out_dir=...)` draws a fresh population
(`models.synth`, a seed the training never used) and, for one campaign per category sent at
`now`, compares four targeting policies by the world's expected outcomes (sums of true
probabilities — no Bernoulli noise):

- `ranker` — users by their best-variant score, each in that variant (what a campaign does);
- `random` — a random audience in random variants (its expectation);
- `recency` — the most recently active users first, in random variants (its expectation);
- `oracle` — the world's own best users in their best variants (by P(opened) for precision,
  by P(clicked) for clicks).

For audiences of 5, 10, 20 and 50 % of the users it reports precision@k (the expected share
of the k that open) and expected clicks (sum of `click_probability` in the chosen variant),
summed over the categories' campaigns; `lift_vs_random` and `share_of_oracle` at 20 % (of
expected opens — what the ranker is trained on — and of expected clicks); the ranker's AUC,
log-loss and calibration on simulated sends; and the bandit's regret: Thompson sampling
(`models.bandit.choose_variants` with [opens, non-opens] per variant updated from simulated
opens after each round) against the best fixed variant in hindsight, next to a uniformly
random variant policy and Thompson sampling without the ranker's scores.

The ranker never sees the ground truth; only this evaluator does. With `out_dir`, writes
`lift.png` (expected clicks vs audience share, 4 curves), `calibration.png` (predicted vs
observed P(opened)) and `regret.png` (cumulative regret per round; `models.evaluation_plots`),
and `evaluation.json`.

    python -m models.evaluate [--model FILE] [--users 50000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cluster.vocabulary import CATEGORIES
from models import synth
from models.bandit import choose_variants
from models.evaluation_plots import write_plots
from models.metrics import calibration_table, classification_metrics
from models.ranker import Ranker, load_ranker
from models.train_default import VARIANTS, hour_utc, simulated_sends, world
from models.training_data import synthetic_population

EVAL_SEED = 20_261_125  # neither the default training (7 / 8) nor test seeds
# 2026-11-03 19:30 UTC: evening in Europe, midday in the Americas, night in Asia.
EVAL_NOW = synth.REFERENCE_TIME + 2 * synth.DAY_S + 19.5 * 3600
AUDIENCE_SHARES = (0.05, 0.10, 0.20, 0.50)
HEADLINE_SHARE = 0.20
BANDIT_ROUNDS = 20
BANDIT_BATCH = 2_000
BANDIT_EXPLORATION = 0.1
POLICIES = ("ranker", "random", "recency", "oracle")


def _truth(users: pl.DataFrame, category: str, now: float) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, n_styles) true P(opened) and P(clicked), the world's clock at `now`."""
    model = world(now)
    hour = hour_utc(now)
    opened, clicked = [], []
    for style in VARIANTS["style"]:
        opened.append(synth.engagement_probability(users, category, style, hour, model=model))
        clicked.append(synth.click_probability(users, category, style, hour, model=model))
    return np.column_stack(opened), np.column_stack(clicked)


def _campaign_curves(
    ranker: Ranker, users: pl.DataFrame, category: str, now: float, recency_order: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Per policy, the cumulative expected opens and clicks of its first 1..n users
    (arrays of length n + 1, starting at 0)."""
    p_open, p_click = _truth(users, category, now)
    scores = ranker.score(users, VARIANTS, category=category, now=now)
    best = scores.argmax(axis=1)
    rows = np.arange(users.height)
    ranked = np.argsort(-scores.max(axis=1), kind="stable")
    by_user = {
        "ranker": (p_open[rows, best][ranked], p_click[rows, best][ranked]),
        "recency": (p_open.mean(axis=1)[recency_order], p_click.mean(axis=1)[recency_order]),
    }
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, (opens, clicks) in by_user.items():
        curves[name] = {
            "opens": np.concatenate([[0.0], np.cumsum(opens)]),
            "clicks": np.concatenate([[0.0], np.cumsum(clicks)]),
        }
    k = np.arange(users.height + 1, dtype=np.float64)
    curves["random"] = {"opens": k * p_open.mean(), "clicks": k * p_click.mean()}
    oracle_opens = np.sort(p_open.max(axis=1))[::-1]
    oracle_clicks = np.sort(p_click.max(axis=1))[::-1]
    curves["oracle"] = {
        "opens": np.concatenate([[0.0], np.cumsum(oracle_opens)]),
        "clicks": np.concatenate([[0.0], np.cumsum(oracle_clicks)]),
    }
    return curves


# A variant policy of the bandit comparison: (rows of this round, [opens, non-opens] per
# variant so far or None before any feedback) → the variant index chosen per row.
Policy = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def _bandit_regret(
    ranker: Ranker,
    users: pl.DataFrame,
    *,
    category: str,
    now: float,
    rounds: int,
    batch: int,
    exploration: float,
    seed: int,
) -> dict[str, Any]:
    """Cumulative expected regret per round vs the best fixed variant in hindsight (over
    the same users) for: Thompson sampling with the ranker's scores (`bandit`), Thompson
    sampling alone (constant scores), and a uniformly random variant."""
    rng = np.random.default_rng(seed)
    n = users.height
    size = min(batch, n)
    picks = [rng.choice(n, size=size, replace=False) for _ in range(rounds)]
    p_open, _ = _truth(users, category, now)
    scores = ranker.score(users, VARIANTS, category=category, now=now)
    # The best fixed variant in hindsight: the most expected opens over all rounds' users.
    all_rows = np.concatenate(picks)
    best_fixed = int(p_open[all_rows].sum(axis=0).argmax())
    result: dict[str, Any] = {
        "category": category,
        "rounds": rounds,
        "batch": size,
        "exploration": exploration,
        "best_fixed_variant": str(VARIANTS["style"][best_fixed]),
        "best_fixed_expected_opens": float(p_open[all_rows, best_fixed].sum()),
    }
    for name, policy in _variant_policies(scores, exploration, rng).items():
        result[name] = _play(policy, picks, p_open, best_fixed, rng)
    return result


def _variant_policies(
    scores: np.ndarray, exploration: float, rng: np.random.Generator
) -> dict[str, Policy]:
    """The policies compared: what the ranker adds to Thompson sampling shows as the gap
    between the first two, what learning adds at all as the gap to the third."""
    v = VARIANTS.height
    return {
        "bandit": lambda rows, stats: choose_variants(
            scores[rows], stats, exploration=exploration, rng=rng
        ),
        "thompson_only": lambda rows, stats: choose_variants(
            np.ones((len(rows), v)), stats, exploration=exploration, rng=rng
        ),
        "uniform_random": lambda rows, stats: rng.integers(0, v, size=len(rows)),
    }


def _play(
    policy: Policy,
    picks: list[np.ndarray],
    p_open: np.ndarray,
    best_fixed: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One policy over the rounds (`picks`: each round's users): it chooses, opens are drawn
    from the world's P(opened) and fed back as [opens, non-opens] per variant before the
    next round; regret is counted in expected opens, so the draws only steer learning."""
    v = VARIANTS.height
    stats = np.zeros((v, 2))
    cumulative, regret, opens = [], 0.0, 0.0
    shares = np.zeros(v)
    for rows in picks:
        chosen = policy(rows, stats if stats.sum() else None)
        p = p_open[rows, chosen]
        opened = rng.random(len(rows)) < p  # simulated feedback
        sends = np.bincount(chosen, minlength=v)
        wins = np.bincount(chosen, weights=opened, minlength=v)
        stats[:, 0] += wins
        stats[:, 1] += sends - wins
        shares += sends
        regret += float(p_open[rows, best_fixed].sum() - p.sum())
        opens += float(p.sum())
        cumulative.append(regret)
    return {
        "cumulative_regret": regret,
        "regret_per_round": cumulative,
        "expected_opens": opens,
        "variant_share": {
            str(s): float(c) for s, c in zip(VARIANTS["style"], shares / shares.sum(), strict=True)
        },
    }


def evaluate(
    ranker: Ranker,
    *,
    users: int = 50_000,
    seed: int = EVAL_SEED,
    out_dir: Path | None = None,
    now: float = EVAL_NOW,
    categories: tuple[str, ...] = CATEGORIES,
    bandit_rounds: int = BANDIT_ROUNDS,
    bandit_batch: int = BANDIT_BATCH,
) -> dict[str, Any]:
    """Evaluate `ranker` on a fresh synthetic population of `users` (seed `seed`), one
    campaign per category at `now`; see the module docstring. Returns a JSON-able dict."""
    population = synthetic_population(users, seed)
    n = population.height
    totals, per_category = _campaigns(ranker, population, categories, now)
    x, y, p_true = simulated_sends(population, seed=seed + 1)
    predicted = ranker.predict(x)
    fit = classification_metrics(predicted, y)
    true_calibration = calibration_table(predicted, p_true)
    regret = _bandit_regret(
        ranker,
        population,
        category=categories[0],
        now=now,
        rounds=bandit_rounds,
        batch=bandit_batch,
        exploration=BANDIT_EXPLORATION,
        seed=seed + 2,
    )
    result: dict[str, Any] = {
        "model_version": ranker.version,
        "users": n,
        "seed": seed,
        "now": now,
        "categories": list(categories),
        "audiences": _audiences(totals, n, campaigns=len(categories)),
        **_headline(totals, _headline_k(n)),
        "per_category_at_20%": per_category,
        "auc": fit["auc"],
        "log_loss": fit["log_loss"],
        "brier": fit["brier"],
        "ece": fit["ece"],
        "calibration": [
            {**b, "true_probability": t["observed_rate"]}
            for b, t in zip(fit["calibration"], true_calibration, strict=True)
        ],
        "bandit": regret,
    }
    if out_dir is not None:
        out = Path(out_dir)
        result["plots"] = write_plots(result, totals, out, audience_shares=AUDIENCE_SHARES)
        (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _headline_k(n: int) -> int:
    """The audience size of the headline figures: `HEADLINE_SHARE` of `n` users, at least 1."""
    return max(1, int(round(HEADLINE_SHARE * n)))


def _campaigns(
    ranker: Ranker, population: pl.DataFrame, categories: tuple[str, ...], now: float
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]]]:
    """One campaign per category: (per policy, cumulative expected opens and clicks summed
    over the campaigns; per category, the ranker's lift and share of oracle at the
    headline audience)."""
    n = population.height
    recency_order = np.argsort(
        -population["last_active_at"].cast(pl.Float64).fill_null(-np.inf).to_numpy(),
        kind="stable",
    )
    totals: dict[str, dict[str, np.ndarray]] = {
        p: {"opens": np.zeros(n + 1), "clicks": np.zeros(n + 1)} for p in POLICIES
    }
    per_category: dict[str, dict[str, float]] = {}
    k20 = _headline_k(n)
    for category in categories:
        curves = _campaign_curves(ranker, population, category, now, recency_order)
        for policy in POLICIES:
            for metric in ("opens", "clicks"):
                totals[policy][metric] += curves[policy][metric]
        opens = {policy: curves[policy]["opens"][k20] for policy in ("ranker", "random", "oracle")}
        per_category[category] = {
            "lift_vs_random": float(opens["ranker"] / opens["random"]),
            "share_of_oracle": float(opens["ranker"] / opens["oracle"]),
        }
    return totals, per_category


def _audiences(
    totals: dict[str, dict[str, np.ndarray]], n: int, *, campaigns: int
) -> dict[str, dict[str, Any]]:
    """Per audience share: its size k and, per policy, precision@k (expected share of the k
    that open, over all campaigns), expected opens and expected clicks."""
    audiences = {}
    for share in AUDIENCE_SHARES:
        k = max(1, int(round(share * n)))
        audiences[f"{share:.0%}"] = {
            "k": k,
            **{
                policy: {
                    "precision": float(totals[policy]["opens"][k] / (k * campaigns)),
                    "expected_opens": float(totals[policy]["opens"][k]),
                    "expected_clicks": float(totals[policy]["clicks"][k]),
                }
                for policy in POLICIES
            },
        }
    return audiences


def _headline(totals: dict[str, dict[str, np.ndarray]], k: int) -> dict[str, float]:
    """The ratios reported at the headline audience of `k` users."""

    def ratio(a: str, b: str, metric: str) -> float:
        return float(totals[a][metric][k] / totals[b][metric][k])

    return {
        "lift_vs_random": ratio("ranker", "random", "opens"),
        "share_of_oracle": ratio("ranker", "oracle", "opens"),
        "recency_lift_vs_random": ratio("recency", "random", "opens"),
        "clicks_lift_vs_random": ratio("ranker", "random", "clicks"),
        "clicks_share_of_oracle": ratio("ranker", "oracle", "clicks"),
    }


def describe(result: dict[str, Any]) -> str:
    """A short human summary of `evaluate`'s result."""
    lines = [
        f"model {result['model_version']} on {result['users']:,} fresh users "
        f"(seed {result['seed']}), {len(result['categories'])} campaigns",
        f"AUC {result['auc']:.4f}  log-loss {result['log_loss']:.4f}  "
        f"Brier {result['brier']:.4f}  ECE {result['ece']:.4f}",
        "audience   policy   precision  expected clicks",
    ]
    for label, audience in result["audiences"].items():
        for policy in POLICIES:
            row = audience[policy]
            lines.append(
                f"{label:>8}   {policy:<8} {row['precision']:.4f}     {row['expected_clicks']:,.1f}"
            )
    lines.append(
        f"at 20 %: lift vs random {result['lift_vs_random']:.2f}x (opens), "
        f"{result['clicks_lift_vs_random']:.2f}x (clicks); share of oracle "
        f"{result['share_of_oracle']:.3f} (opens), {result['clicks_share_of_oracle']:.3f} "
        f"(clicks); recency {result['recency_lift_vs_random']:.2f}x"
    )
    b = result["bandit"]
    lines.append(
        f"bandit regret over {b['rounds']}×{b['batch']} ({b['category']}, best fixed "
        f"{b['best_fixed_variant']}): ranker+Thompson {b['bandit']['cumulative_regret']:.1f}, "
        f"Thompson only {b['thompson_only']['cumulative_regret']:.1f}, "
        f"uniform random {b['uniform_random']['cumulative_regret']:.1f}"
    )
    for name, path in result.get("plots", {}).items():
        lines.append(f"{name}: {path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="skops file (default: shipped)")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = evaluate(load_ranker(args.model), users=args.users, seed=args.seed, out_dir=args.out)
    print(describe(result))


if __name__ == "__main__":
    main()
