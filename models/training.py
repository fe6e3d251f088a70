"""Train a ranker from a feedback log (or from simulated feedback), with a time-based hold-out.

The feedback log
----------------
One row per send; the contract the cluster side writes and `train` reads:

- the users-frame columns the feature contract reads (`models.features`): `user_id`,
  `timezone`, `country`, `attributes` (Struct or JSON string), `platforms` (List[String]),
  `last_active_at` (Float64 epoch s), `affinity_<category>` (Float32) — as they were at the
  send;
- `sent_at` Float64 epoch seconds (UTC), `category` String, `style` String (the variant's
  style, `models.synth.VARIANT_STYLES`; unknown → "plain"), `opened` Boolean; optional
  extra columns (`clicked`, `notification_id`, `variant_id`, `campaign_id`, ...) are kept and
  ignored by training.

On disk (`write_feedback_log` / `read_feedback_log`) it is a Parquet dataset partitioned by
the UTC day of `sent_at`, hive style: `<dir>/day=YYYY-MM-DD/<part>.parquet`. Writers add
new files (a unique name per write, renamed into place when complete), never rewrite old
ones; readers may filter whole days.

Training
--------
`features(users, variants, category=..., now=...)` — the one function serving uses — is
called once per group of sends with the same category and the same `sent_at` bucket
(`TIME_BUCKET_S`, 5 minutes: the hour-of-day and idle-days columns move by < 0.2 % of a
day within it); each row's variant is picked out of the group's (user, variant) matrix. A
loop over groups (≈ days × 24 × 12 × categories at most), never over rows. The model is the
ranker's shape: a binary scikit-learn LogisticRegression on `FEATURE_COLUMNS`, label
`opened`. The hold-out is the latest `holdout_share` of the sends by `sent_at` (all sends at
or after the cut-off time); the model returned is fitted on the sends before it.

    python -m models.training [--synth-users 1000000] [--feedback DIR] [--out FILE]

prints the metrics and the training time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from models import synth
from models.features import FEATURE_COLUMNS, FEATURE_VERSION
from models.train_default import REGULARIZATION_C, VARIANTS, hour_utc, training_rows, world

DEFAULT_SEED = 7
DEFAULT_SYNTH_USERS = 200_000
SIMULATED_DAYS = 7
TIME_BUCKET_S = 300.0
CALIBRATION_BINS = 10

# What `features` reads from a user row; the log carries these as of the send.
USER_LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "timezone",
    "country",
    "attributes",
    "platforms",
    "last_active_at",
    *(f"affinity_{c}" for c in synth.CATEGORIES),
)
SEND_LOG_COLUMNS: tuple[str, ...] = ("sent_at", "category", "style", "opened")
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", *SEND_LOG_COLUMNS)


# --- the feedback log on disk --------------------------------------------------------------


def _day_column(rows: pl.DataFrame) -> pl.Expr:
    return (
        pl.from_epoch(pl.col("sent_at").cast(pl.Float64).mul(1e6).cast(pl.Int64), time_unit="us")
        .dt.strftime("%Y-%m-%d")
        .alias("day")
    )


def write_feedback_log(rows: pl.DataFrame, path: Path) -> Path:
    """Append `rows` (a feedback log frame, see the module docstring) to the day-partitioned
    Parquet dataset at `path` (`path/day=YYYY-MM-DD/part-<uuid>.parquet`); returns `path`.
    Each file is written under a hidden temporary name and renamed when complete, so a
    reader never sees a partial file."""
    path = Path(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"feedback rows lack column(s) {missing}")
    if "day" in rows.columns:
        rows = rows.drop("day")
    if rows.height == 0:
        path.mkdir(parents=True, exist_ok=True)
        return path
    part = uuid.uuid4().hex
    for (day,), chunk in (
        rows.with_columns(_day_column(rows))
        .partition_by("day", as_dict=True, maintain_order=True)
        .items()
    ):
        folder = path / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".part-{part}.parquet.tmp"
        chunk.drop("day").write_parquet(tmp)
        tmp.rename(folder / f"part-{part}.parquet")
    return path


def read_feedback_log(
    path: Path, *, since: date | str | None = None, until: date | str | None = None
) -> pl.DataFrame:
    """The feedback log at `path` (written by `write_feedback_log`), days `since`..`until`
    inclusive (UTC `YYYY-MM-DD`; None → unbounded): other days' partitions are not read.
    Files may differ in columns (e.g. only the campaign category's `affinity_<category>`):
    a column missing from a file reads as null there. The `day` partition column is not
    returned."""
    path = Path(path)
    files = []
    for folder in sorted(path.glob("day=*")):
        day = folder.name.removeprefix("day=")
        if (since is not None and day < str(since)) or (until is not None and day > str(until)):
            continue
        files.extend(sorted(folder.glob("*.parquet")))
    if not files:
        raise FileNotFoundError(
            f"no feedback log files (day=YYYY-MM-DD/*.parquet) in {path}"
            + (f" from {since} to {until}" if since is not None or until is not None else "")
        )
    frames = [pl.scan_parquet(f) for f in files]
    return pl.concat(frames, how="diagonal_relaxed").collect()


# --- simulated feedback ----------------------------------------------------------------------

_world = lru_cache(maxsize=512)(world)  # the simulated world at a send time (read only)


def synthetic_population(users: int, seed: int) -> pl.DataFrame:
    """A `models.synth` population (the snapshot frame with `timezone`), in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        synth.synthesize(users, seed, Path(tmp))
        return synth.load_population(Path(tmp))


def simulate_feedback_log(
    users: pl.DataFrame | int,
    *,
    seed: int = DEFAULT_SEED,
    days: int = SIMULATED_DAYS,
    start: float = synth.REFERENCE_TIME,
) -> pl.DataFrame:
    """A feedback log of one send per user of `users` (a population frame, or a number of
    synthetic users drawn with `seed`): a random category, a uniformly random variant style
    (the logging policy) and a send time spread over `days` days from `start` — one send
    time per (day, hour, category), as a campaign batch shares its `now`. `opened` /
    `clicked` are drawn from the simulated world (`models.synth`) with its clock at the
    send. Rows are in `sent_at` order."""
    if isinstance(users, int):
        users = synthetic_population(users, seed)
    rng = np.random.default_rng(seed)
    n = users.height
    n_cat = len(synth.CATEGORIES)
    n_groups = days * 24 * n_cat
    group = rng.integers(0, n_groups, size=n)
    style = rng.integers(0, VARIANTS.height, size=n)
    # One send time per (day, hour) slot, shared by its categories (campaign batches at
    # the same moment): the world and the features' zone offsets are computed once per slot.
    minutes = rng.uniform(0, 3600, size=days * 24)
    user_columns = [c for c in USER_LOG_COLUMNS if c in users.columns]
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    frames = []
    for g in range(n_groups):  # a loop over send batches, not users
        rows = order[bounds[g] : bounds[g + 1]]
        if len(rows) == 0:
            continue
        slot, category_index = divmod(g, n_cat)
        category = synth.CATEGORIES[category_index]
        now = start + slot * 3600.0 + minutes[slot]
        chunk = users[rows]
        styles = VARIANTS["style"].gather(style[rows])
        feedback = synth.simulate_feedback(
            chunk,
            category,
            styles,
            hour_utc(now),
            seed=int(rng.integers(2**31)),
            model=_world(now),
        )
        frames.append(
            chunk.select(user_columns).with_columns(
                pl.lit(now, dtype=pl.Float64).alias("sent_at"),
                pl.lit(category, dtype=pl.String).alias("category"),
                styles.alias("style"),
                feedback["opened"],
                feedback["clicked"],
            )
        )
    return pl.concat(frames, how="vertical")


# --- features and metrics ----------------------------------------------------------------------


def log_features(rows: pl.DataFrame, *, bucket_s: float = TIME_BUCKET_S) -> np.ndarray:
    """The `FEATURE_COLUMNS` matrix (float32, one row per log row, in row order): one
    `features` call per (category, `sent_at` bucket), `now` = the bucket's mean sent_at."""
    missing = [c for c in ("sent_at", "category") if c not in rows.columns]
    if missing:
        raise ValueError(f"feedback rows lack column(s) {missing}")
    out = np.empty((rows.height, len(FEATURE_COLUMNS)), dtype=np.float32)
    if rows.height == 0:
        return out
    keyed = rows.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("__row"),
        (pl.col("sent_at").cast(pl.Float64) // bucket_s).alias("__bucket"),
        pl.col("style").cast(pl.String, strict=False).alias("__style")
        if "style" in rows.columns
        else pl.lit(None, dtype=pl.String).alias("__style"),
    )
    style_index = {s: i for i, s in enumerate(VARIANTS["style"])}
    for (category, _), chunk in keyed.partition_by(
        ["category", "__bucket"], as_dict=True, maintain_order=False
    ).items():
        sent = chunk["sent_at"].cast(pl.Float64)
        first, last = float(sent.min()), float(sent.max())
        now = first if first == last else float(sent.mean())  # a batch's exact send time
        variant = (
            chunk["__style"]
            .replace_strict(style_index, default=style_index["plain"], return_dtype=pl.Int64)
            .fill_null(style_index["plain"])
            .to_numpy()
        )
        out[chunk["__row"].to_numpy()] = training_rows(
            chunk, VARIANTS, variant, category=category, now=now
        )
    return out


def calibration_table(
    predicted: np.ndarray, observed: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, float]]:
    """Equal-count bins of the predicted probability (deciles by default): per bin its
    range, count, mean predicted and observed rate."""
    predicted = np.asarray(predicted, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if len(predicted) == 0:
        return []
    order = np.argsort(predicted, kind="stable")
    table = []
    for i, rows in enumerate(np.array_split(order, bins)):
        if len(rows) == 0:
            continue
        table.append(
            {
                "bin": i,
                "count": int(len(rows)),
                "predicted_from": float(predicted[rows[0]]),
                "predicted_to": float(predicted[rows[-1]]),
                "mean_predicted": float(predicted[rows].mean()),
                "observed_rate": float(observed[rows].mean()),
            }
        )
    return table


def expected_calibration_error(table: list[dict[str, float]]) -> float:
    total = sum(b["count"] for b in table)
    if not total:
        return float("nan")
    return float(
        sum(b["count"] * abs(b["mean_predicted"] - b["observed_rate"]) for b in table) / total
    )


def classification_metrics(predicted: np.ndarray, observed: np.ndarray) -> dict[str, Any]:
    """AUC, log-loss, Brier, calibration table and ECE of P(opened) against outcomes."""
    observed = np.asarray(observed).astype(np.int64)
    predicted = np.clip(np.asarray(predicted, dtype=np.float64), 1e-12, 1 - 1e-12)
    both = len(np.unique(observed)) == 2
    table = calibration_table(predicted, observed)
    return {
        "rows": int(len(observed)),
        "open_rate": float(observed.mean()) if len(observed) else float("nan"),
        "mean_predicted": float(predicted.mean()) if len(predicted) else float("nan"),
        "auc": float(roc_auc_score(observed, predicted)) if both else float("nan"),
        "log_loss": float(log_loss(observed, predicted, labels=[0, 1])) if len(observed) else 0,
        "brier": float(brier_score_loss(observed, predicted)) if len(observed) else 0,
        "calibration": table,
        "ece": expected_calibration_error(table),
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="seconds")


# --- training ------------------------------------------------------------------------------------


def train(
    rows: pl.DataFrame | None = None,
    *,
    synth_users: int | None = None,
    seed: int = DEFAULT_SEED,
    holdout_share: float = 0.2,
    C: float = REGULARIZATION_C,
) -> tuple[LogisticRegression, dict[str, Any]]:
    """Fit a LogisticRegression on `FEATURE_COLUMNS` → `opened` from the feedback log
    `rows` (None → a simulated log of `synth_users` synthetic users, one send each, over
    `SIMULATED_DAYS` days; `DEFAULT_SYNTH_USERS` when not given), holding out the latest
    `holdout_share` of the sends by `sent_at`. Returns (model fitted on the earlier sends,
    metrics: hold-out AUC / log-loss / Brier / calibration, train metrics, data range,
    coefficients, timings)."""
    if not 0.0 < holdout_share < 1.0:
        raise ValueError(f"holdout_share must be within (0, 1), got {holdout_share}")
    started = time.perf_counter()
    if rows is None:
        users = synth_users or DEFAULT_SYNTH_USERS
        rows = simulate_feedback_log(users, seed=seed)
        source = f"simulated feedback log: models.synth population of {users} users, seed {seed}"
    else:
        source = "feedback log"
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"feedback rows lack column(s) {missing}")
    rows = rows.filter(pl.col("sent_at").is_not_null() & pl.col("opened").is_not_null())
    if rows.height < 10:
        raise ValueError(f"{rows.height} usable feedback rows: too few to train on")
    data_s = time.perf_counter() - started

    t0 = time.perf_counter()
    x = log_features(rows)
    y = rows["opened"].cast(pl.Int64).to_numpy()
    features_s = time.perf_counter() - t0

    sent_at = rows["sent_at"].cast(pl.Float64).to_numpy()
    ordered = np.sort(sent_at)
    cutoff = float(ordered[min(len(ordered) - 1, int(len(ordered) * (1.0 - holdout_share)))])
    holdout = sent_at >= cutoff
    train_rows = ~holdout
    if train_rows.sum() == 0 or holdout.sum() == 0:
        raise ValueError("the time-based split left no training or no hold-out rows")
    if len(np.unique(y[train_rows])) < 2:
        raise ValueError("the training sends are all opened or all not opened")

    t0 = time.perf_counter()
    model = LogisticRegression(C=C, max_iter=2000, tol=1e-6)
    model.fit(x[train_rows], y[train_rows])
    fit_s = time.perf_counter() - t0

    predicted = model.predict_proba(x)[:, list(model.classes_).index(1)]
    held = classification_metrics(predicted[holdout], y[holdout])
    fitted = classification_metrics(predicted[train_rows], y[train_rows])
    metrics: dict[str, Any] = {
        "target": "opened",
        "feature_version": FEATURE_VERSION,
        "source": source,
        "rows": int(rows.height),
        "train_rows": int(train_rows.sum()),
        "holdout_rows": int(holdout.sum()),
        "holdout_share": holdout_share,
        "holdout_auc": held["auc"],
        "holdout_log_loss": held["log_loss"],
        "holdout_brier": held["brier"],
        "holdout_ece": held["ece"],
        "holdout_open_rate": held["open_rate"],
        "holdout_mean_predicted": held["mean_predicted"],
        "holdout_calibration": held["calibration"],
        "train_auc": fitted["auc"],
        "train_log_loss": fitted["log_loss"],
        "train_open_rate": fitted["open_rate"],
        "data_range": {
            "from": _iso(ordered[0]),
            "to": _iso(ordered[-1]),
            "holdout_from": _iso(cutoff),
            "sent_at_min": float(ordered[0]),
            "sent_at_max": float(ordered[-1]),
            "holdout_cutoff": cutoff,
        },
        "coefficients": dict(zip(FEATURE_COLUMNS, map(float, model.coef_[0]), strict=True)),
        "intercept": float(model.intercept_[0]),
        "regularization_C": C,
        "data_seconds": round(data_s, 2),
        "features_seconds": round(features_s, 2),
        "fit_seconds": round(fit_s, 2),
        "train_seconds": round(features_s + fit_s, 2),
    }
    return model, metrics


def describe(metrics: dict[str, Any]) -> str:
    """A short human summary of `train`'s metrics."""
    r = metrics["data_range"]
    return "\n".join(
        [
            f"{metrics['rows']:,} sends ({r['from']} .. {r['to']}), "
            f"train {metrics['train_rows']:,}, hold-out {metrics['holdout_rows']:,} "
            f"(from {r['holdout_from']})",
            f"hold-out AUC {metrics['holdout_auc']:.4f}  log-loss {metrics['holdout_log_loss']:.4f}"
            f"  Brier {metrics['holdout_brier']:.4f}  ECE {metrics['holdout_ece']:.4f}  "
            f"open rate {metrics['holdout_open_rate']:.4f} "
            f"(predicted {metrics['holdout_mean_predicted']:.4f})",
            "calibration (mean predicted → observed): "
            + "  ".join(
                f"{b['mean_predicted']:.3f}→{b['observed_rate']:.3f}"
                for b in metrics["holdout_calibration"]
            ),
            f"features {metrics['features_seconds']:.2f} s, fit {metrics['fit_seconds']:.2f} s "
            f"(simulation / loading {metrics['data_seconds']:.2f} s)",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feedback", type=Path, help="A feedback log directory.")
    parser.add_argument("--synth-users", type=int, default=None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--holdout-share", type=float, default=0.2)
    parser.add_argument("--out", type=Path, help="Write the model (skops + json) here.")
    parser.add_argument("--metrics", type=Path, help="Write the metrics JSON here.")
    args = parser.parse_args(argv)
    rows = read_feedback_log(args.feedback) if args.feedback else None
    started = time.perf_counter()
    model, metrics = train(
        rows, synth_users=args.synth_users, seed=args.seed, holdout_share=args.holdout_share
    )
    total = time.perf_counter() - started
    print(describe(metrics))
    print(f"total {total:.2f} s")
    if args.metrics:
        args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    if args.out:
        from models.ranker import save_ranker

        out = args.out if args.out.suffix == ".skops" else args.out / "ranker.skops"
        save_ranker(model, out, metrics=metrics, trained_on=metrics["source"])
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
