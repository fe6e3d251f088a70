"""Off-policy estimators on simulated logs whose truth is known: a logging policy with known
propensities picks one of three variants per user, rewards are drawn from a known model, and
the candidate's true value is computed exactly from that model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.off_policy import evaluate, fit_reward_model

V, F = 3, 4


def _world(n: int, rng: np.random.Generator):
    """Contexts, true P(reward) per variant, a logging policy (softmax of a *different*
    score, so it is not the candidate), its choices and the rewards."""
    x = rng.normal(size=(n, F))
    coef = np.array([[0.8, -0.5, 0.0, 0.3], [-0.4, 0.9, 0.2, 0.0], [0.1, 0.1, -0.7, 0.6]])
    mu = 1.0 / (1.0 + np.exp(-(x @ coef.T - 2.0)))  # (n, V) true P(reward)
    logits = x @ rng.normal(scale=0.7, size=(F, V))
    logging = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    logging = 0.9 * logging + 0.1 / V  # an exploration floor, as Herald's policy has
    cum = logging.cumsum(axis=1)
    action = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), V - 1)
    reward = (rng.random(n) < mu[np.arange(n), action]).astype(np.float64)
    return x, mu, logging, action, reward


def _candidate(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """A deterministic candidate: argmax of a noisy view of the truth (good, not perfect)."""
    noisy = mu + 0.03 * np.sin(7.0 * x[:, :1])
    best = noisy.argmax(axis=1)
    return np.eye(V)[best]


def _features(x: np.ndarray) -> np.ndarray:
    """(n, V, F·V) one block of the context per variant: what a reward model can learn."""
    n = x.shape[0]
    out = np.zeros((n, V, F * V))
    for a in range(V):
        out[:, a, a * F : (a + 1) * F] = x
    return out


def _run(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x, mu, logging, action, reward = _world(n, rng)
    pi = _candidate(x, mu)
    rows = np.arange(n)
    truth = float((pi * mu).sum(axis=1).mean())  # exact, in expectation over rewards
    x_all = _features(x)
    q_logged, q_all = fit_reward_model(x_all[rows, action], reward, x_all, seed=seed)
    result = evaluate(
        reward, logging[rows, action], pi[rows, action],
        q_logged=q_logged, q_target=(pi * q_all).sum(axis=1), draws=1_000, rng=rng,
    )  # fmt: skip
    return result, truth, float((logging * mu).sum(axis=1).mean())


def test_estimators_cover_the_truth_and_are_unbiased():
    """Over 30 independent logs, IPS and DR cover the true value in about 95 % of their
    intervals and average to it; SNIPS too; and the live policy's observed rate is its own
    truth."""
    covered = {"ips": 0, "snips": 0, "dr": 0, "observed": 0}
    errors = {"ips": [], "dr": []}
    reps = 30
    for seed in range(reps):
        result, truth, live = _run(8_000, seed)
        for name in covered:
            e = result.estimates[name]
            covered[name] += e.low <= (live if name == "observed" else truth) <= e.high
        for name in errors:
            errors[name].append(result.estimates[name].value - truth)
    assert all(c >= 0.8 * reps for c in covered.values()), covered
    for name, err in errors.items():  # mean error within 3 standard errors of 0
        err = np.asarray(err)
        assert abs(err.mean()) < 3 * err.std(ddof=1) / np.sqrt(reps) + 1e-4, (name, err.mean())


def test_candidate_better_than_live_is_seen_as_better():
    result, truth, live = _run(50_000, 99)
    assert truth > live  # the candidate knows the truth, the logger does not
    dr = result.estimates["dr"]
    assert dr.low <= truth <= dr.high and dr.low > result.estimates["observed"].value
    assert result.ess < result.n and result.max_weight <= V / 0.1 + 1e-9


def test_a_million_sends_with_a_thousand_draws_in_bounded_time():
    rng = np.random.default_rng(5)
    n = 1_000_000
    p = rng.uniform(0.05, 1.0, n)
    target = (rng.random(n) < 0.5).astype(np.float64)
    reward = (rng.random(n) < 0.1).astype(np.float64)
    q = np.full(n, 0.1)
    started = time.perf_counter()
    result = evaluate(reward, p, target, q_logged=q, q_target=q, draws=1_000, rng=rng)
    took = time.perf_counter() - started
    assert took < 5.0, took  # the goal, on a shared 2-core box
    assert set(result.estimates) == {"ips", "snips", "dr", "observed"}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="propensities"):
        evaluate([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="propensities"):
        evaluate([1.0], [float("nan")], [1.0])
    with pytest.raises(ValueError, match="target"):
        evaluate([1.0], [0.5], [1.5])
    with pytest.raises(ValueError, match="one value per send"):
        evaluate([1.0, 0.0], [0.5], [1.0])
    small = evaluate([1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 0.0])
    assert "dr" not in small.estimates and small.estimates["ips"].value == pytest.approx(2 / 3)
