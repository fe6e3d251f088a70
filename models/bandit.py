"""Variant choice and audience cut-off, vectorized over a batch of users.

`choose_variants` mixes the ranker's per-user scores with Thompson sampling over the
feedback counts (POST /v1/feedback) of each variant; `select_top` keeps the best users of a
campaign by score (top-k and / or threshold) without a full sort.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from models.propensity import DRAWS, choice_probabilities

# How each user came to get their variant (and so the score the audience cut ranked them
# by): the model's choice, or the exploration share's draw.
BY_RANK = "rank"
BY_EXPLORATION = "exploration"


def _clean(scores: np.ndarray) -> np.ndarray:
    """Scores as float64 with NaN as -inf (never preferred)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), -np.inf, scores)


def _check_stats(stats: np.ndarray, n_variants: int) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    if stats.shape != (n_variants, 2):
        raise ValueError(f"stats must have shape ({n_variants}, 2), got {stats.shape}")
    if not np.all(np.isfinite(stats)) or np.any(stats < 0):
        raise ValueError("stats must be finite, non-negative [successes, failures] counts")
    return stats


class Choice(NamedTuple):
    """A logged choice: `chosen` variant index per user; `explored`, True where the
    exploration share drew it; `propensity`, the probability the policy had of choosing it
    (`models.propensity`), with `propensity_se`, its Monte-Carlo error; `p`, the whole
    (n_users, n_variants) matrix of choice probabilities (rows sum to 1)."""

    chosen: np.ndarray
    explored: np.ndarray
    propensity: np.ndarray
    propensity_se: np.ndarray
    p: np.ndarray


def _prepare(scores: np.ndarray, stats: np.ndarray | None, exploration: float):
    if not 0.0 <= exploration <= 1.0:
        raise ValueError(f"exploration must be within [0, 1], got {exploration}")
    scores = _clean(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n_users, n_variants), got shape {scores.shape}")
    if scores.shape[0] and scores.shape[1] == 0:
        raise ValueError("no variants to choose from")
    if stats is not None:
        stats = _check_stats(stats, scores.shape[1])
    return scores, stats


def _choose(
    scores: np.ndarray, stats: np.ndarray | None, exploration: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, explored) for clean scores and checked stats (see `choose_variants`)."""
    n, v = scores.shape
    explore = rng.random(n) < exploration if exploration > 0 else np.zeros(n, dtype=bool)
    if stats is None:
        chosen = np.argmax(scores, axis=1)
    else:
        draw = rng.beta(1.0 + stats[:, 0], 1.0 + stats[:, 1])
        lift = draw / draw.mean()
        chosen = np.argmax(scores * lift[None, :], axis=1)

    m = int(explore.sum())
    if m:
        if stats is None:
            picked = rng.integers(0, v, size=m)
        else:
            draws = rng.beta(1.0 + stats[:, 0], 1.0 + stats[:, 1], size=(m, v))
            picked = np.argmax(draws, axis=1)
        chosen[explore] = picked
    return chosen.astype(np.int64, copy=False), explore


def choose_variants(
    scores: np.ndarray,
    stats: np.ndarray | None,
    *,
    exploration: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Index of the chosen variant per user (int64, shape (n_users,)).

    `scores` is (n_users, n_variants) from `Ranker.score`; `stats` is (n_variants, 2)
    [successes, failures] feedback counts, or None before any feedback.

    - Exploit (each user with probability 1 − `exploration`): argmax over variants of
      score · lift, where lift is one Thompson draw per variant from
      Beta(1 + successes, 1 + failures) for this call (this batch), divided by the mean of
      the draws. Feedback thus shifts choices between variants while the model keeps the
      ordering within a user. Without stats the lift is 1: the model's argmax.
    - Explore (each user with probability `exploration`): a Thompson-sampled variant, an
      independent Beta draw per user and variant (uniform without stats).

    Ties go to the lowest variant index."""
    scores, stats = _prepare(scores, stats, exploration)
    if scores.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _choose(scores, stats, exploration, rng)[0]


def choose_logged(
    scores: np.ndarray,
    stats: np.ndarray | None,
    *,
    exploration: float,
    rng: np.random.Generator,
    draws: int = DRAWS,
) -> Choice:
    """`choose_variants` plus what an off-policy estimator needs logged per send: whether
    the user was explored and the propensity of the chosen variant. The same draws as
    `choose_variants` with the same `rng` pick the variants (the Monte-Carlo estimate of
    the propensities draws from a generator spawned off `rng` afterwards)."""
    scores, stats = _prepare(scores, stats, exploration)
    n, v = scores.shape
    if n == 0:
        empty = np.zeros(0)
        return Choice(np.zeros(0, np.int64), np.zeros(0, bool), empty, empty, np.zeros((0, v)))
    chosen, explored = _choose(scores, stats, exploration, rng)
    mc = np.random.default_rng(rng.integers(0, 2**63))
    p, se = choice_probabilities(scores, stats, exploration=exploration, rng=mc, draws=draws)
    rows = np.arange(n)
    return Choice(chosen, explored, p[rows, chosen], se[rows, chosen], p)


def select_top(
    scores: np.ndarray, *, audience_limit: int | None, score_threshold: float | None
) -> np.ndarray:
    """Boolean mask of the users kept, shape (n_users,).

    - `audience_limit`: the `audience_limit` highest scores; among equal scores at the
      cut-off the earlier positions win (deterministic). Uses np.argpartition / partition,
      no full sort.
    - `score_threshold`: scores >= threshold.
    - Both: users meeting both (the top `audience_limit` of those above the threshold).
    - Neither: everyone. NaN scores are never kept by a limit or a threshold."""
    scores = _clean(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one score per user, got shape {scores.shape}")
    n = scores.shape[0]
    keep = np.ones(n, dtype=bool)
    if score_threshold is not None:
        keep &= scores >= score_threshold
    if audience_limit is None:
        return keep
    if audience_limit < 0:
        raise ValueError(f"audience_limit must be >= 0, got {audience_limit}")
    candidates = np.where(keep, scores, -np.inf)
    eligible = int(np.count_nonzero(candidates > -np.inf))
    k = min(int(audience_limit), eligible)
    if k >= eligible:
        return keep & (candidates > -np.inf)
    if k == 0:
        return np.zeros(n, dtype=bool)
    # k-th largest value without sorting everything: argpartition puts it at position n-k.
    kth_index = np.argpartition(candidates, n - k)[n - k]
    cutoff = candidates[kth_index]
    top = candidates > cutoff
    need = k - int(np.count_nonzero(top))
    if need > 0:
        tied = np.flatnonzero(candidates == cutoff)[:need]  # earliest positions win ties
        top[tied] = True
    return top
