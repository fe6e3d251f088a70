"""The Open Bandit Dataset (Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS 2021
datasets track): logged impressions of ZOZOTOWN's fashion recommendation widget under two
policies, uniform random and Bernoulli Thompson Sampling (BTS), with clicks, the logging
propensity, hashed user features, user–item affinities and item features.

Data nobody here generated, so it tests what a synthetic world cannot: the small sample that
ships inside the `obp` wheel (version 0.4.1: `obp/dataset/obd/{random,bts}/{all,men,women}/`,
10,000 impressions per file) is read straight from the installed package's files — found
with `importlib.util.find_spec`, which does not import obp (its code needs Python < 3.11
and torch; `pip install --no-deps obp==0.4.1` installs just the files) — or from
`OBD_DIR` (a directory holding `random/` and `bts/`).

`estimator_check` is the paper's evaluation of estimators: from the random policy's log,
estimate the click rate BTS would get — BTS's choice probabilities come from its ZOZOTOWN
prior (`obp/policy/conf/prior_bts.yaml`), ranked over `LEN_LIST` positions by Monte-Carlo
draws as OBP computes them — and compare with the click rate BTS really had in its own log.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import polars as pl

from models.off_policy import evaluate

LEN_LIST = 3  # the widget shows three items; `position` is 1..3 in the files
BTS_SIMS = 100_000
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))


def root() -> Path:
    """Where the dataset's `random/` and `bts/` folders are; FileNotFoundError with what to
    install when neither `OBD_DIR` nor the obp wheel's files are there."""
    env = os.environ.get("OBD_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Open Bandit Dataset not found: `pip install --no-deps obp==0.4.1` or set OBD_DIR"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset" / "obd"


def load(policy: str, campaign: str = "all") -> pl.DataFrame:
    """One policy's log: item_id, position (0-based), click, propensity and the user
    columns (hashed categorical features, `user-item_affinity_<item>`), in time order."""
    frame = pl.read_csv(root() / policy / campaign / f"{campaign}.csv")
    return (
        frame.drop("")
        .with_columns(pl.col("position") - 1, propensity=pl.col("propensity_score"))
        .sort("timestamp", maintain_order=True)
    )


def items(campaign: str = "all") -> pl.DataFrame:
    """Item features: item_feature_0 (numeric), item_feature_1..3 (hashed categories)."""
    return pl.read_csv(root() / "random" / campaign / "item_context.csv").drop("")


def _prior(campaign: str) -> tuple[np.ndarray, np.ndarray]:
    import yaml  # lazy: only the BTS prior is YAML (PyYAML comes with Ray)

    base = root().parent.parent / "policy" / "conf" / "prior_bts.yaml"
    if not base.is_file():
        base = root() / "prior_bts.yaml"
    prior = yaml.safe_load(base.read_text())[campaign]
    return np.asarray(prior["alpha"], np.float64), np.asarray(prior["beta"], np.float64)


def bts_action_dist(campaign: str = "all", *, sims: int = BTS_SIMS, seed: int = 12345):
    """(n_items, LEN_LIST) P(item shown at position) of BTS with its ZOZOTOWN prior: draw
    θ ~ Beta(α, β) per item `sims` times, rank the items by θ, count who lands where (what
    OBP's `BernoulliTS.compute_batch_action_dist` does; context-free, so one table)."""
    alpha, beta = _prior(campaign)
    rng = np.random.default_rng(seed)
    dist = np.zeros((alpha.shape[0], LEN_LIST))
    step = 20_000
    for start in range(0, sims, step):  # a few chunks of draws, bounded memory
        theta = rng.beta(alpha, beta, size=(min(step, sims - start), alpha.shape[0]))
        top = np.argsort(-theta, axis=1)[:, :LEN_LIST]
        for k in range(LEN_LIST):
            dist[:, k] += np.bincount(top[:, k], minlength=alpha.shape[0])
    return dist / sims


def _design(log: pl.DataFrame, n_items: int):
    """The reward model's one-hot blocks: user features, item, position (the additive
    logit u(x) + b(item) + c(position) scores every item without an (n, items, F) array)."""
    import scipy.sparse as sp

    codes = [log[c].cast(pl.Categorical).to_physical().to_numpy() for c in USER_FEATURES]
    sizes = [int(c.max()) + 1 for c in codes]
    n = log.height
    offsets = np.cumsum([0, *sizes])
    user_cols = np.column_stack([c + o for c, o in zip(codes, offsets, strict=False)])
    users = sp.csr_matrix(
        (np.ones(user_cols.size), user_cols.ravel(), np.arange(0, user_cols.size + 1, 4)),
        shape=(n, int(offsets[-1])),
    )
    item = sp.csr_matrix((np.ones(n), (np.arange(n), log["item_id"].to_numpy())), (n, n_items))
    pos = sp.csr_matrix((np.ones(n), (np.arange(n), log["position"].to_numpy())), (n, LEN_LIST))
    return users, item, pos


def reward_model(log: pl.DataFrame, n_items: int, *, folds: int = 2, seed: int = 0):
    """Cross-fitted q̂ for DR: (q at the logged item (n,), q at every item (n, n_items)) of
    a logistic regression on user features + item + position one-hots."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    users, item, pos = _design(log, n_items)
    x = sp.hstack([users, item, pos]).tocsr()
    y = log["click"].to_numpy() > 0
    fold = np.random.default_rng(seed).integers(0, folds, size=log.height)
    q_logged, q_all = np.empty(log.height), np.empty((log.height, n_items))
    nu = users.shape[1]
    for k in range(folds):  # a couple of folds, not a loop over impressions
        train, test = fold != k, fold == k
        model = LogisticRegression(C=0.5, max_iter=500).fit(x[train], y[train])
        coef = model.coef_[0]
        base = users[test] @ coef[:nu] + pos[test] @ coef[nu + n_items :] + model.intercept_[0]
        logits = base[:, None] + coef[nu : nu + n_items][None, :]
        q_all[test] = 1.0 / (1.0 + np.exp(-logits))
        q_logged[test] = q_all[test][np.arange(int(test.sum())), log["item_id"].to_numpy()[test]]
    return q_logged, q_all


def estimate_policy(
    log: pl.DataFrame, target: np.ndarray, *, draws: int = 1_000, seed: int = 0
) -> dict:
    """IPS / SNIPS / DR of a policy on a logged OBD sample: `target` (n, n_items) is its
    probability of each item at each row's position (rows sum to 1)."""
    rows = np.arange(log.height)
    item = log["item_id"].to_numpy()
    q_logged, q_all = reward_model(log, target.shape[1], seed=seed)
    return evaluate(
        log["click"].to_numpy(), log["propensity"].to_numpy(), target[rows, item],
        q_logged=q_logged, q_target=(target * q_all).sum(axis=1), draws=draws,
        rng=np.random.default_rng(seed),
    ).as_dict()  # fmt: skip


def estimator_check(campaign: str = "all", *, draws: int = 1_000, seed: int = 0) -> dict:
    """BTS's click rate estimated from the random log vs its own logged (on-policy) rate:
    per estimator the value, interval, relative error and whether the truth is inside."""
    random_log, bts_log = load("random", campaign), load("bts", campaign)
    dist = bts_action_dist(campaign)
    target = dist[:, random_log["position"].to_numpy()].T  # (n, items): BTS at each position
    truth = float(bts_log["click"].mean())
    result = estimate_policy(random_log, target, draws=draws, seed=seed)
    out = {
        "campaign": campaign,
        "obd_bts_true_ctr": truth,
        "obd_random_ctr": float(random_log["click"].mean()),
        "n_random": random_log.height,
        "n_bts": bts_log.height,
    }
    for name in ("ips", "snips", "dr"):
        e = result[name]
        out[name] = {**e, "relative_error": abs(e["value"] - truth) / truth,
                     "truth_inside": e["low"] <= truth <= e["high"]}  # fmt: skip
    out["ess"], out["max_weight"] = result["ess"], result["max_weight"]
    return out
