"""Herald's kind of ranker on real users: trained on the first half of OBD's random-policy log
(in time), its click rate estimated off-policy on the second half, against the random
policy's observed rate and BTS's (estimated on the same half, and logged).

Mapping: each of OBD's items is a variant; a send is (user, item, position). Herald's
feature contract (`models.features`) has no columns for a shop's own attributes — OBD's
hashed user features, item categories and user–item affinities — so this uses the same
estimator (a binary LogisticRegression, the shipped ranker's C) on *generic* attributes, the
shape a contract extension would take: user categorical one-hots, item one-hots, item
numeric and categorical attributes, the user–item affinity, the position, and user ×
item-category interactions (what lets a linear model personalize, as affinity × style does
in Herald's contract). The contract itself is unchanged (`FEATURE_VERSION` "f1"): extending
it means retraining the shipped default and is left for when a shop needs it.

The policy: at each position, the items ranked by score, the k-th best at position k (the
widget's three slots), with `EXPLORATION` spread uniformly, as a campaign explores.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models import obd
from models.train_default import REGULARIZATION_C

EXPLORATION = 0.1
ITEM_CATEGORIES = ("item_feature_1", "item_feature_2", "item_feature_3")


def _one_hot(codes: list[np.ndarray]) -> np.ndarray:
    """Dense one-hot blocks side by side, one block per code array."""
    blocks = []
    for c in codes:
        block = np.zeros((c.shape[0], int(c.max()) + 1), dtype=np.float32)
        block[np.arange(c.shape[0]), c] = 1.0
        blocks.append(block)
    return np.hstack(blocks)


def _codes(frame: pl.DataFrame, columns) -> list[np.ndarray]:
    return [frame[c].cast(pl.String).cast(pl.Categorical).to_physical().to_numpy() for c in columns]


def _parts(log: pl.DataFrame, items: pl.DataFrame):
    """User one-hots (n, U), item attributes (I, A) and affinities (n, I)."""
    users = _one_hot(_codes(log, obd.USER_FEATURES))
    item = np.hstack(
        [np.eye(items.height, dtype=np.float32), items["item_feature_0"].to_numpy()[:, None],
         _one_hot(_codes(items, ITEM_CATEGORIES))]
    )  # fmt: skip
    n_items = items.height
    affinity = log.select([f"user-item_affinity_{i}" for i in range(n_items)]).to_numpy()
    return users, item.astype(np.float32), affinity.astype(np.float32)


def _design(users, item, affinity, chosen, position) -> np.ndarray:
    """Rows of (user, item, position): user | item attributes | affinity | position |
    user ⊗ item categories."""
    n, cats = users.shape[0], item[:, item.shape[0] + 1 :]
    pos = np.eye(obd.LEN_LIST, dtype=np.float32)[position]
    cross = (users[:, :, None] * cats[chosen][:, None, :]).reshape(n, -1)
    aff = affinity[np.arange(n), chosen][:, None]
    return np.hstack([users, item[chosen], aff, pos, cross])


def _scores(model, users, item, affinity) -> np.ndarray:
    """(n, I) logits of every item (position left out: it shifts all items alike)."""
    coef = model.coef_[0]
    nu, ni = users.shape[1], item.shape[1]
    cats = item[:, item.shape[0] + 1 :]
    w_item = coef[nu : nu + ni]
    w_aff = coef[nu + ni]
    w_cross = coef[nu + ni + 1 + obd.LEN_LIST :].reshape(nu, cats.shape[1])
    return (item @ w_item)[None, :] + w_aff * affinity + users @ w_cross @ cats.T


def policy_from_scores(logits: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(n, I) probability of each item at each row's position: the item ranked
    position + 1-th by score gets 1 − ε, and ε is spread over all items."""
    n, n_items = logits.shape
    pi = np.full((n, n_items), EXPLORATION / n_items)
    pi[np.arange(n), ranked_pick(logits, position)] += 1.0 - EXPLORATION
    return pi


def ranker_on_obd(campaign: str = "all", *, draws: int = 1_000, seed: int = 0) -> dict:
    """Train on the first half of the random log, estimate on the second: the ranker's
    IPS / SNIPS / DR click rate, random's observed rate, BTS's estimate and logged rate."""
    log, items = obd.load("random", campaign), obd.items(campaign)
    users, item, affinity = _parts(log, items)
    half = log.height // 2
    chosen, position = log["item_id"].to_numpy(), log["position"].to_numpy()
    x = _design(users[:half], item, affinity[:half], chosen[:half], position[:half])
    y = log["click"].to_numpy()[:half] > 0
    model = LogisticRegression(C=REGULARIZATION_C, max_iter=1_000).fit(x, y)
    test = log.slice(half)
    logits = _scores(model, users[half:], item, affinity[half:])
    ours = obd.estimate_policy(test, policy_from_scores(logits, position[half:]), draws=draws)
    logged = logits[np.arange(test.height), chosen[half:]]
    clicks = test["click"].to_numpy() > 0
    matched = ranked_pick(logits, position[half:]) == chosen[half:]
    bts = obd.bts_action_dist(campaign)[:, position[half:]].T
    theirs = obd.estimate_policy(test, bts, draws=draws)
    return {
        "campaign": campaign,
        "train_rows": half,
        "train_clicks": int(y.sum()),
        "test_rows": test.height,
        "exploration": EXPLORATION,
        "herald_ranker": {k: ours[k] for k in ("ips", "snips", "dr")},
        "random_observed": ours["observed"],
        "bts_estimated": {k: theirs[k] for k in ("ips", "snips", "dr")},
        "bts_logged_ctr": float(obd.load("bts", campaign)["click"].mean()),
        "ess": ours["ess"],
        # sends where the logged item is the ranker's pick: the only ones its click rate
        # is learned from, and how many clicks they hold (0: the interval means little)
        "matched_sends": int(matched.sum()),
        "matched_clicks": int((clicks & matched).sum()),
        "test_auc": float(roc_auc_score(clicks, logged))
        if 0 < clicks.sum() < clicks.size
        else None,
    }


def ranked_pick(logits: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The item the ranker puts at each row's position (without exploration)."""
    ranked = np.argsort(-logits, axis=1)[:, : obd.LEN_LIST]
    return ranked[np.arange(logits.shape[0]), position]
