"""The probability with which the live policy (`models.bandit.choose_variants`) picks each
variant for each user — the *propensity* an off-policy estimator divides by.

Why it is computed and logged at send time: "had this other model been live, how many more
opens?" can only be answered from the logs when each send records how likely the live
policy was to choose what it chose (`models.off_policy`). Afterwards the scores, the
feedback counts and the exploration share of that moment are gone.

The policy, per user u with scores s_u· over V variants and feedback counts (a_v, b_v):

    P(v | u) = (1 − ε) · P_exploit(v | u) + ε · P_explore(v)

- No feedback (`stats` None): exploit is the model's argmax (ties to the lowest index), so
  P_exploit is 1 for it and 0 elsewhere; explore is uniform, 1 / V. With ε = 0 the choice
  is deterministic and its propensity exactly 1.0.
- With feedback, exploit is argmax_v s_uv · θ_v with one draw θ_v ~ Beta(1 + a_v, 1 + b_v)
  shared by the batch; explore is argmax_v of an independent draw per user. Neither has a
  closed form for V > 2, so both are **Monte-Carlo estimates** over draws of the posterior:
  P̂ = (draws where v wins) / M. P_explore does not depend on the user: one set of
  `EXPLORE_DRAWS` draws per batch. P_exploit does: for V = 2, v = 0 wins iff
  log θ_1 − log θ_0 ≤ log s_0 − log s_1, so one sorted sample of `PAIR_DRAWS` differences
  answers every user by binary search (O(n log M)); for V = 3, v wins a draw iff the
  user's two log-score gaps are dominated by the draw's two log-θ gaps, a 2-D dominance
  count that one M × M cumulative grid of `TRIPLE_DRAWS` draws answers for every user in
  O(log M); for V > 3, `draws` draws per batch are shared by all users and the
  (users × draws) comparisons run in chunks of users (V passes each) — except for users
  whose one variant beats every other's best draw with its worst, whose choice is certain
  on these draws (exact, and most users once feedback is strong).

Error: each P̂ is a binomial proportion, standard error sqrt(P̂ (1 − P̂) / M) (at most
0.5 / sqrt(M): 0.0022 for V = 2, 0.011 for V = 3, 0.031 at the default 256 draws for
V > 3, 0.0035 for the explore part); the logged `propensity_se` combines the two parts,
(1 − ε) · se_exploit + ε · se_explore (an upper bound: the parts are independent). The
error of 1 / P̂ is largest where P̂ is small, which the exploration floor ε · P_explore
bounds away from 0. The M draws are shared by all users of a batch, so their errors are
correlated; the estimate is still unbiased for each user's marginal choice probability.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DRAWS = 256  # posterior draws per batch for V > 3 (shared by every user of the batch)
PAIR_DRAWS = 50_000  # draws for V = 2: binary search, so many draws cost little
TRIPLE_DRAWS = 2_048  # draws for V = 3: an M × M dominance grid (16 MB of int32)
EXPLORE_DRAWS = 20_000  # draws of the per-user Thompson choice (the same for every user)
CHUNK_CELLS = 2_000_000  # users × draws compared at once: bounds the memory (≈ 10 MB)


class Propensities(NamedTuple):
    """`p`: (n_users, n_variants) choice probabilities, each row summing to 1; `se`: the
    Monte-Carlo standard error of each (0 where exact)."""

    p: np.ndarray
    se: np.ndarray


def _binomial_se(p: np.ndarray, draws: int) -> np.ndarray:
    return np.sqrt(np.clip(p * (1.0 - p), 0.0, None) / draws)


def explore_probabilities(
    stats: np.ndarray | None, n_variants: int, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """P(v) of the per-user Thompson choice (uniform without stats), and its error."""
    if stats is None:
        return np.full(n_variants, 1.0 / n_variants), np.zeros(n_variants)
    draws = rng.beta(1.0 + stats[:, 0], 1.0 + stats[:, 1], size=(EXPLORE_DRAWS, n_variants))
    p = np.bincount(np.argmax(draws, axis=1), minlength=n_variants) / EXPLORE_DRAWS
    return p, _binomial_se(p, EXPLORE_DRAWS)


def _exploit_pair(scores: np.ndarray, stats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) P_exploit for two variants: one sorted sample of log θ_1 − log θ_0."""
    theta = rng.beta(1.0 + stats[:, 0], 1.0 + stats[:, 1], size=(PAIR_DRAWS, 2))
    diff = np.sort(np.log(theta[:, 1]) - np.log(theta[:, 0]))
    positive = (scores[:, 0] > 0) & (scores[:, 1] > 0)
    safe = np.where(positive[:, None], scores, 1.0)
    gap = np.log(safe[:, 0]) - np.log(safe[:, 1])
    first = np.searchsorted(diff, gap, side="right") / PAIR_DRAWS
    # a zero or -inf score (NaN cleaned) makes the product's order certain: θ > 0 keeps
    # signs, and equal products tie to index 0, as np.argmax does
    first = np.where(positive, first, (scores[:, 0] >= scores[:, 1]).astype(np.float64))
    return np.column_stack([first, 1.0 - first])


def _exploit_triple(scores: np.ndarray, stats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) P_exploit for three variants, exact on `TRIPLE_DRAWS` draws in O(n log M).

    Variant v wins draw m iff g_mv − g_mw ≥ l_w − l_v for both others w (g = log θ,
    l = log s): a 2-D dominance count of the user's point among the draws' points. The
    draws' ranks on each axis index an M × M grid whose 2-D cumulative sum answers every
    user with two binary searches and one lookup (inclusion-exclusion)."""
    theta = rng.beta(1.0 + stats[:, 0], 1.0 + stats[:, 1], size=(TRIPLE_DRAWS, 3))
    g, log_s = np.log(theta), np.log(scores)
    p = np.empty(scores.shape)
    m = TRIPLE_DRAWS
    ranks = np.arange(m)
    for v in range(3):  # the three winners, not a loop over users
        w1, w2 = (w for w in range(3) if w != v)
        x, y = g[:, v] - g[:, w1], g[:, v] - g[:, w2]
        ox, oy = np.argsort(x), np.argsort(y)
        rank_x, rank_y = np.empty_like(ranks), np.empty_like(ranks)
        rank_x[ox], rank_y[oy] = ranks, ranks
        below = np.zeros((m + 1, m + 1), dtype=np.int32)  # below[i, j]: x-rank < i, y-rank < j
        below[rank_x + 1, rank_y + 1] = 1
        below.cumsum(axis=0, out=below).cumsum(axis=1, out=below)
        i = np.searchsorted(x[ox], log_s[:, w1] - log_s[:, v], side="left")  # #{x < a}
        j = np.searchsorted(y[oy], log_s[:, w2] - log_s[:, v], side="left")  # #{y < b}
        dominated = m - i - j + below[i, j]  # #{x ≥ a and y ≥ b}, by inclusion-exclusion
        p[:, v] = dominated / m
    return p


def _exploit_many(
    scores: np.ndarray, stats: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """(n, V) P_exploit: the argmax of s_u · θ_m for `draws` shared draws θ_m, per user,
    the comparison a running maximum over the V variants (V passes over a chunk)."""
    n, v = scores.shape
    theta = rng.beta(1.0 + stats[:, 0], 1.0 + stats[:, 1], size=(draws, v)).astype(np.float32)
    p = np.zeros((n, v), dtype=np.float64)
    # A user whose one variant wins even at its lowest draw against every other's highest
    # is certain: only the others need the comparison (most users, once feedback is strong).
    with np.errstate(divide="ignore"):
        log_s = np.log(np.where(scores > 0, scores, 0.0))
    g = np.log(theta.astype(np.float64))
    floor = (log_s + g.min(axis=0)).max(axis=1, keepdims=True)
    possible = (log_s + g.max(axis=0)) >= floor
    certain = (possible.sum(axis=1) == 1) & np.all(scores > 0, axis=1)
    p[certain] = possible[certain]
    if not certain.all():
        p[~certain] = _compare(scores[~certain].astype(np.float32), theta)
    return p


def _compare(s: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(n, V) share of the draws each variant wins, in chunks of users."""
    (n, v), draws = s.shape, theta.shape[0]
    p = np.empty((n, v), dtype=np.float64)
    step = max(1, CHUNK_CELLS // draws)
    for start in range(0, n, step):  # chunks of thousands of users, not a loop per user
        part = s[start : start + step]
        best = part[:, 0, None] * theta[None, :, 0]  # (chunk, draws)
        winner = np.zeros(best.shape, dtype=np.int8)
        for j in range(1, v):
            value = part[:, j, None] * theta[None, :, j]
            winner[value > best] = j  # strictly greater: ties stay with the lower index
            np.maximum(best, value, out=best)
        for j in range(v):
            p[start : start + part.shape[0], j] = np.count_nonzero(winner == j, axis=1) / draws
    return p


def exploit_probabilities(
    scores: np.ndarray,
    stats: np.ndarray | None,
    *,
    rng: np.random.Generator,
    draws: int = DRAWS,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, V) P_exploit and its Monte-Carlo error (exact 0/1 without stats)."""
    n, v = scores.shape
    if stats is None or v == 1:
        p = np.zeros((n, v))
        p[np.arange(n), np.argmax(scores, axis=1)] = 1.0
        return p, np.zeros((n, v))
    if v == 2:
        return (p := _exploit_pair(scores, stats, rng)), _binomial_se(p, PAIR_DRAWS)
    p = np.empty((n, v))
    se = np.empty((n, v))
    regular = np.all(scores > 0, axis=1)  # NaN-cleaned (-inf) or zero scores: brute force
    if v == 3 and regular.any():
        p[regular] = _exploit_triple(scores[regular], stats, rng)
        se[regular] = _binomial_se(p[regular], TRIPLE_DRAWS)
    else:
        regular[:] = False
    if not regular.all():
        p[~regular] = _exploit_many(scores[~regular], stats, draws, rng)
        se[~regular] = _binomial_se(p[~regular], draws)
    return p, se


def choice_probabilities(
    scores: np.ndarray,
    stats: np.ndarray | None,
    *,
    exploration: float,
    rng: np.random.Generator,
    draws: int = DRAWS,
) -> Propensities:
    """P(v | u) of `choose_variants` for clean (n, V) scores (NaN already -inf) and
    validated stats; each row sums to 1. `rng` is for the Monte-Carlo draws only: pass a
    generator other than the one the choice itself draws from, or the logged choice and
    its estimate would share draws."""
    n, v = scores.shape
    exploit, exploit_se = exploit_probabilities(scores, stats, rng=rng, draws=draws)
    if exploration == 0.0:
        return Propensities(exploit, exploit_se)
    explore, explore_se = explore_probabilities(stats, v, rng=rng)
    p = (1.0 - exploration) * exploit + exploration * explore[None, :]
    se = (1.0 - exploration) * exploit_se + exploration * explore_se[None, :]
    return Propensities(p, se)
