"""Off-policy evaluation of a candidate ranker on Herald's own feedback log: "had this model
been live for these sends, how many opens and clicks per send?"

`evaluate_candidate(rows, ranker)` takes the log as `pipelines.feedback_log.training_rows`
joins it (one row per send with the feature inputs as scored, `propensity`, `opened`,
`clicked`) and answers, per reward, the live policy's observed rate and the candidate's IPS,
SNIPS and DR estimates with bootstrap intervals (`models.off_policy`).

- **The candidate's policy** is what a campaign would do with it before any feedback: the
  argmax of its scores over the campaign's variants, with `exploration` (the campaign
  default, 0.1) spread uniformly — π(v | u) = (1 − ε) 1[v = argmax] + ε / V. The variants
  of a campaign are the ones its sends logged (with exploration every variant of a sizable
  campaign shows up); a log without `variant_id` (a simulated one) uses the styles.
- **The reward model** for DR is a logistic regression on the feature contract, fitted on
  the log itself with 2-fold cross-fitting (`models.off_policy.fit_reward_model`'s idea,
  scored on the same per-group feature matrix as the candidate). DR is unbiased if the
  propensities are right whatever the model; a good model only narrows the interval.
- Sends logged before propensities existed (null `propensity`) cannot be weighted: they
  are left out and counted (`skipped`); none at all is a ValueError.

One `Ranker.score` and one `features` call per (campaign, send time) group — a loop over
campaign batches, never over sends.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from models.features import features
from models.off_policy import evaluate
from models.ranker import Ranker

REWARDS = ("opened", "clicked")
EXPLORATION = 0.1
FOLDS = 2


def _keyed(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows with `_group` (campaign or category, and send time), `_variant` (variant id,
    else style), `_row` (position), `_fold` (cross-fitting fold, by user)."""
    campaign = pl.col("campaign_id") if "campaign_id" in rows.columns else pl.col("category")
    variant = pl.col("variant_id") if "variant_id" in rows.columns else pl.col("style")
    return rows.with_columns(
        _campaign=campaign.cast(pl.String).fill_null(""),
        _variant=variant.cast(pl.String),
        _style=pl.col("style").cast(pl.String).fill_null("plain"),
        _row=pl.int_range(pl.len(), dtype=pl.Int64),
        _fold=pl.col("user_id").hash(7) % FOLDS,
    ).with_columns(_group=pl.concat_str("_campaign", pl.lit("|"), pl.col("sent_at").cast(str)))


def _variants(keyed: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Per campaign, its logged variants (id, style), sorted by id."""
    table = keyed.group_by("_campaign").agg(pl.struct("_variant", "_style").unique())
    out = {}
    for campaign, pairs in table.iter_rows():  # one row per campaign
        frame = pl.DataFrame(pairs).unique("_variant").sort("_variant")
        out[campaign] = frame.select(variant_id="_variant", style="_style")
    return out


def _groups(keyed: pl.DataFrame, ranker: Ranker, exploration: float):
    """Per (campaign, send time) group: its rows, variants, the logged variant's index, the
    candidate's (n, V) policy and the (n, V, F) feature matrix — one `features` call, which
    the candidate's scores and the reward model's both read."""
    variants = _variants(keyed)
    for part in keyed.partition_by("_group", maintain_order=True):
        frame = variants[part["_campaign"][0]]
        index = {v: i for i, v in enumerate(frame["variant_id"])}
        logged = part["_variant"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
        category, now = part["category"][0], float(part["sent_at"][0])
        v = frame.height
        matrix = features(part, frame, category=category, now=now)
        scores = ranker.predict(matrix).reshape(part.height, v)
        pi = np.full(scores.shape, exploration / v)
        pi[np.arange(part.height), scores.argmax(axis=1)] += 1.0 - exploration
        yield part, logged, pi, matrix.reshape(part.height, v, -1)


def _fit(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Per fold, (coef, intercept) of a logistic regression fitted on the other folds."""
    fitted = []
    for k in range(FOLDS):
        train = fold != k
        if y[train].all() or not y[train].any():  # one class: exactly its rate (0 or 1)
            fitted.append((np.zeros(x.shape[1]), np.inf if y[train].any() else -np.inf))
            continue
        model = LogisticRegression(C=1.0, max_iter=300).fit(x[train], y[train])
        fitted.append((model.coef_[0], float(model.intercept_[0])))
    return fitted


def evaluate_candidate(
    rows: pl.DataFrame,
    ranker: Ranker,
    *,
    exploration: float = EXPLORATION,
    draws: int = 1_000,
    seed: int = 0,
) -> dict:
    """Per reward in `REWARDS`: `observed` (the live policy's rate), `ips`, `snips`, `dr`
    (value, low, high), `n`, `ess`, `max_weight`; plus `sends`, `skipped`, `campaigns`."""
    if "propensity" not in rows.columns:
        raise ValueError("the feedback log has no propensities (sends logged before them)")
    usable = rows.filter(pl.col("propensity").is_not_null() & (pl.col("propensity") > 0))
    if usable.height == 0:
        raise ValueError("no logged sends with a propensity to evaluate on")
    keyed = _keyed(usable)
    groups = list(_groups(keyed, ranker, exploration))
    order = np.concatenate([g[0]["_row"].to_numpy() for g in groups])
    x = np.concatenate([g[3][np.arange(len(g[1])), g[1]] for g in groups])
    target = np.concatenate([g[2][np.arange(len(g[1])), g[1]] for g in groups])
    fold = np.concatenate([g[0]["_fold"].to_numpy() for g in groups])
    propensity = usable["propensity"].to_numpy()[order]
    out = {"sends": usable.height, "skipped": rows.height - usable.height,
           "campaigns": keyed["_campaign"].n_unique(), "exploration": exploration}  # fmt: skip
    for reward in REWARDS:
        y = usable[reward].cast(pl.Float64).to_numpy()[order]
        fitted = _fit(x, y > 0, fold)
        q_logged, q_target = _reward_model(groups, fitted, fold)
        out[reward] = evaluate(
            y, propensity, target, q_logged=q_logged, q_target=q_target, draws=draws,
            rng=np.random.default_rng(seed),
        ).as_dict()  # fmt: skip
    return out


def _reward_model(groups, fitted, fold) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted q̂ at the logged variant and its expectation under the candidate, in the
    groups' row order: each send scored by the model of the fold it was not trained on."""
    q_logged, q_target, start = [], [], 0
    for part, logged, pi, matrix in groups:
        mine = fold[start : start + part.height]
        start += part.height
        q = np.zeros(pi.shape)
        for k, (coef, intercept) in enumerate(fitted):
            logits = matrix @ coef.astype(np.float32) + intercept
            with np.errstate(over="ignore"):  # ±inf logits: a one-class fold, q exactly 0 or 1
                q = np.where((mine == k)[:, None], 1.0 / (1.0 + np.exp(-logits)), q)
        q_logged.append(q[np.arange(part.height), logged])
        q_target.append((pi * q).sum(axis=1))
    return np.concatenate(q_logged), np.concatenate(q_target)


def describe(result: dict, *, version: str) -> str:
    """Lines for the terminal: per reward, the live rate and the candidate's estimates."""
    lines = [
        f"off-policy evaluation of {version} on {result['sends']:,} logged sends "
        f"({result['campaigns']} campaigns; {result['skipped']:,} without a propensity left out; "
        f"candidate exploration {result['exploration']})"
    ]
    for reward in REWARDS:
        r = result[reward]
        live = r["observed"]
        lines.append(
            f"  {reward} per send: live {live['value']:.4f} [{live['low']:.4f}, {live['high']:.4f}]"
        )
        for name in ("ips", "snips", "dr"):
            e = r[name]
            lift = e["value"] / live["value"] if live["value"] else float("nan")
            interval = f"[{e['low']:.4f}, {e['high']:.4f}]"
            lines.append(f"    {name:<5} {e['value']:.4f} {interval}  ×{lift:.2f} live")
        lines.append(
            f"    effective sample size {r['ess']:,.0f}, largest weight {r['max_weight']:.1f}"
        )
    return "\n".join(lines)


def lift_verdict(result: dict, *, reward: str = "opened", estimator: str = "dr") -> str | None:
    """None when the candidate's lower bound (`estimator`, `reward` per send) is above the
    live policy's observed rate on the same sends; else why not, in one sentence. The gate
    compares a lower bound with a point estimate on purpose: shipping needs evidence that
    the candidate is better, not the absence of evidence that it is worse."""
    r = result[reward]
    low, live = r[estimator]["low"], r["observed"]["value"]
    if r["observed"]["high"] == 0.0:
        return f"no {reward} among the {r['n']:,} logged sends: nothing shows a lift"
    if low > live:
        return None
    return (
        f"the candidate's {estimator.upper()} lower bound of {reward} per send, {low:.4f} "
        f"(95 % interval {low:.4f}–{r[estimator]['high']:.4f} on {r['n']:,} logged sends), "
        f"is not above the live policy's observed {live:.4f}"
    )
