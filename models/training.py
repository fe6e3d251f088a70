"""Train a ranker from a feedback log (or from simulated feedback), with a time-based hold-out.

What a feedback log holds, how it is stored and how one is simulated: `models.training_data`
(its names are re-exported here). The metrics: `models.metrics`.

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
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from models.features import FEATURE_COLUMNS, FEATURE_VERSION
from models.metrics import (
    CALIBRATION_BINS,
    calibration_table,
    classification_metrics,
    expected_calibration_error,
)
from models.ranker import save_ranker
from models.train_default import REGULARIZATION_C, VARIANTS, training_rows
from models.training_data import (
    DEFAULT_SEED,
    REQUIRED_COLUMNS,
    SEND_LOG_COLUMNS,
    SIMULATED_DAYS,
    USER_LOG_COLUMNS,
    read_feedback_log,
    simulate_feedback_log,
    synthetic_population,
    write_feedback_log,
)

# The data and metric names callers have always imported from here.
__all__ = [
    "CALIBRATION_BINS",
    "DEFAULT_SEED",
    "DEFAULT_SYNTH_USERS",
    "REQUIRED_COLUMNS",
    "SEND_LOG_COLUMNS",
    "SIMULATED_DAYS",
    "TIME_BUCKET_S",
    "USER_LOG_COLUMNS",
    "calibration_table",
    "classification_metrics",
    "describe",
    "expected_calibration_error",
    "log_features",
    "read_feedback_log",
    "simulate_feedback_log",
    "synthetic_population",
    "train",
    "write_feedback_log",
]

DEFAULT_SYNTH_USERS = 200_000
TIME_BUCKET_S = 300.0


# --- features ------------------------------------------------------------------------------------


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
    rows, source = _usable_rows(rows, synth_users, seed)
    data_s = time.perf_counter() - started

    t0 = time.perf_counter()
    x = log_features(rows)
    y = rows["opened"].cast(pl.Int64).to_numpy()
    features_s = time.perf_counter() - t0

    ordered, cutoff, holdout = _time_split(
        rows["sent_at"].cast(pl.Float64).to_numpy(), y, holdout_share
    )
    train_rows = ~holdout
    t0 = time.perf_counter()
    model = LogisticRegression(C=C, max_iter=2000, tol=1e-6)
    model.fit(x[train_rows], y[train_rows])
    fit_s = time.perf_counter() - t0

    predicted = model.predict_proba(x)[:, list(model.classes_).index(1)]
    metrics: dict[str, Any] = {
        "target": "opened",
        "feature_version": FEATURE_VERSION,
        "source": source,
        "rows": int(rows.height),
        **_split_metrics(predicted, y, holdout, holdout_share),
        "data_range": _data_range(ordered, cutoff),
        "coefficients": dict(zip(FEATURE_COLUMNS, map(float, model.coef_[0]), strict=True)),
        "intercept": float(model.intercept_[0]),
        "regularization_C": C,
        "data_seconds": round(data_s, 2),
        "features_seconds": round(features_s, 2),
        "fit_seconds": round(fit_s, 2),
        "train_seconds": round(features_s + fit_s, 2),
    }
    return model, metrics


def _usable_rows(
    rows: pl.DataFrame | None, synth_users: int | None, seed: int
) -> tuple[pl.DataFrame, str]:
    """(the sends to train on, where they came from): the given log, or a simulated one
    when there is none, without the rows that lack a send time or an outcome. Refuses a
    log without the required columns or with too few rows to split in time."""
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
    return rows, source


def _time_split(
    sent_at: np.ndarray, y: np.ndarray, holdout_share: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """(sent_at sorted, cut-off time, hold-out mask): every send at or after the cut-off is
    held out, so the model is judged on sends later than any it learnt from — as it will
    be used. Refuses a split that leaves either side empty or the training side one-class."""
    ordered = np.sort(sent_at)
    cutoff = float(ordered[min(len(ordered) - 1, int(len(ordered) * (1.0 - holdout_share)))])
    holdout = sent_at >= cutoff
    train_rows = ~holdout
    if train_rows.sum() == 0 or holdout.sum() == 0:
        raise ValueError("the time-based split left no training or no hold-out rows")
    if len(np.unique(y[train_rows])) < 2:
        raise ValueError("the training sends are all opened or all not opened")
    return ordered, cutoff, holdout


def _split_metrics(
    predicted: np.ndarray, y: np.ndarray, holdout: np.ndarray, holdout_share: float
) -> dict[str, Any]:
    """The hold-out and training-side metrics under the names `train` reports them."""
    train_rows = ~holdout
    held = classification_metrics(predicted[holdout], y[holdout])
    fitted = classification_metrics(predicted[train_rows], y[train_rows])
    return {
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
    }


def _data_range(ordered: np.ndarray, cutoff: float) -> dict[str, Any]:
    """First and last send and the hold-out cut-off, readable and as epoch seconds: what
    the registry records as the model's `data_range`."""
    return {
        "from": _iso(ordered[0]),
        "to": _iso(ordered[-1]),
        "holdout_from": _iso(cutoff),
        "sent_at_min": float(ordered[0]),
        "sent_at_max": float(ordered[-1]),
        "holdout_cutoff": cutoff,
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="seconds")


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
        out = args.out if args.out.suffix == ".skops" else args.out / "ranker.skops"
        save_ranker(model, out, metrics=metrics, trained_on=metrics["source"])
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
