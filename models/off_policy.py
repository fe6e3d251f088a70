"""Off-policy evaluation: what a candidate policy's expected reward per send would have been,
estimated from sends another (the live) policy chose — "had this model been live last
week, how many opens?" — with bootstrap confidence intervals.

Inputs, one entry per logged send i (numpy arrays, no loop over sends):

- `reward` r_i (opened or clicked, 0/1 or any number);
- `propensity` p_i, the live policy's probability of the logged variant
  (`models.propensity`, logged with the send);
- `target` π_i, the candidate's probability of that same variant for that user;
- for DR, a reward model's prediction `q_logged` q̂(x_i, a_i) and its expectation under
  the candidate, `q_target` Σ_a π(a | x_i) q̂(x_i, a).

Estimators (Dudík et al. 2011; Swaminathan & Joachims 2015), with w_i = π_i / p_i:

- IPS   = mean(w r): unbiased when p_i > 0 wherever π_i > 0; variance grows with w.
- SNIPS = Σ w r / Σ w: IPS normalized by its own weights — a little biased, much steadier.
- DR    = mean(q_target + w (r − q_logged)): the reward model's estimate corrected by IPS
  on its residuals; unbiased if either the propensities or the model are right.

Confidence intervals are percentile intervals of `draws` bootstrap replicates. Resampling a
million sends a thousand times row by row is 10⁹ gathers, so sends are first dealt into
`blocks` random blocks of (nearly) equal size and the blocks are resampled: each replicate
is a multinomial count vector over the blocks times the blocks' sums of (w r, w, DR term,
1), every estimator a ratio of two such sums. For means of i.i.d. terms this has the same
variance as the row bootstrap (a block sum is a sum of m i.i.d. terms, and K blocks of m
rows give K · m σ² / n² = σ² / n), and it costs O(n + draws · blocks) whatever n is. With
n ≤ `blocks` every send is its own block: the ordinary bootstrap.

Why not Open Bandit Pipeline's estimators: they are the reference these follow (and
`tests/unit/test_off_policy_obd.py` reproduces the paper's check on its data), but its code
needs Python < 3.11 and torch, which Herald does not pull in; the estimators themselves are
a few lines of numpy each, and their bootstrap (a Python loop over resamples of every row)
takes minutes on a million sends where this takes well under a second.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DRAWS = 1_000
BLOCKS = 2_000
LEVEL = 0.95
ESTIMATORS = ("ips", "snips", "dr")


class Estimate(NamedTuple):
    """One estimator's value and its bootstrap interval [low, high] at `level`."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


class Evaluation(NamedTuple):
    """`estimates` per estimator (and `observed`: the logged rewards' own mean, the live
    policy's on-policy rate, with its interval); `n` sends; `ess`, the effective sample
    size (Σ w)² / Σ w² — how many sends the estimate is really worth; `max_weight`."""

    estimates: dict[str, Estimate]
    n: int
    ess: float
    max_weight: float

    def as_dict(self) -> dict:
        return {
            **{k: e.as_dict() for k, e in self.estimates.items()},
            "n": self.n,
            "ess": self.ess,
            "max_weight": self.max_weight,
        }


def _checked(reward, propensity, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.asarray(reward, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if not (r.shape == p.shape == t.shape and r.ndim == 1):
        raise ValueError(f"one value per send: shapes {r.shape}, {p.shape}, {t.shape}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0) or np.any(p > 1):
        raise ValueError("propensities must be within (0, 1] (a null one cannot be weighted)")
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t > 1):
        raise ValueError("target probabilities must be within [0, 1]")
    return r, p, t


def _block_sums(columns: np.ndarray, blocks: int, rng: np.random.Generator) -> np.ndarray:
    """(K, c) sums of the rows' columns over K random blocks of nearly equal size."""
    n = columns.shape[0]
    k = min(n, blocks)
    block = rng.permutation(n) % k
    return np.stack([np.bincount(block, weights=col, minlength=k) for col in columns.T], axis=1)


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def evaluate(
    reward,
    propensity,
    target,
    *,
    q_logged=None,
    q_target=None,
    draws: int = DRAWS,
    blocks: int = BLOCKS,
    level: float = LEVEL,
    rng: np.random.Generator | None = None,
) -> Evaluation:
    """IPS, SNIPS, DR (when `q_logged` and `q_target` are given) and the observed rate, each
    with a percentile bootstrap interval over `draws` replicates (see the module doc)."""
    r, p, t = _checked(reward, propensity, target)
    if r.shape[0] == 0:
        raise ValueError("no logged sends to evaluate on")
    rng = rng if rng is not None else np.random.default_rng()
    w = t / p
    dr = None
    if q_logged is not None and q_target is not None:
        dr = np.asarray(q_target, np.float64) + w * (r - np.asarray(q_logged, np.float64))
    columns = np.column_stack(
        [w * r, w, dr if dr is not None else np.zeros_like(r), r, np.ones_like(r)]
    )
    sums = _block_sums(columns, blocks, rng)
    k = sums.shape[0]
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=draws).astype(np.float64)
    boot = counts @ sums  # (draws, 5): resampled sums of each column
    total = columns.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = {
            "ips": (0, 4),
            "snips": (0, 1),
            **({"dr": (2, 4)} if dr is not None else {}),
            "observed": (3, 4),
        }
        estimates = {
            name: Estimate(float(total[a] / total[b]), *_interval(boot[:, a] / boot[:, b], level))
            for name, (a, b) in ratios.items()
        }
    ess = float(w.sum() ** 2 / np.square(w).sum()) if w.any() else 0.0
    return Evaluation(estimates, int(r.shape[0]), ess, float(w.max()))


def fit_reward_model(
    x_logged: np.ndarray,
    reward: np.ndarray,
    x_all: np.ndarray,
    *,
    folds: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """q̂ for DR, cross-fitted: a logistic regression per fold, trained on the other folds'
    sends (`x_logged`: features of the logged variant, (n, F)) and predicting its own fold's
    — at the logged variant (n,) and at every variant (`x_all`, (n, V, F)) — so no send's
    q̂ has seen its own reward (a model that memorized it would cancel the correction)."""
    from sklearn.linear_model import LogisticRegression  # lazy: only DR needs it

    n, v, f = x_all.shape
    y = np.asarray(reward) > 0
    fold = np.random.default_rng(seed).integers(0, folds, size=n)
    q_logged, q_all = np.empty(n), np.empty((n, v))
    for k in range(folds):  # a few folds, not a loop over sends
        train, test = fold != k, fold == k
        if not test.any():
            continue
        if y[train].all() or not y[train].any():  # one class: its rate is the prediction
            q_logged[test], q_all[test] = float(y[train].mean()), float(y[train].mean())
            continue
        model = LogisticRegression(max_iter=300).fit(x_logged[train], y[train])
        q_logged[test] = model.predict_proba(x_logged[test])[:, 1]
        q_all[test] = model.predict_proba(x_all[test].reshape(-1, f))[:, 1].reshape(-1, v)
    return q_logged, q_all
