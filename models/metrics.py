"""How good a P(opened) is: discrimination (AUC), log-loss, Brier and calibration of
predicted probabilities against outcomes — shared by training's hold-out report
(`models.training`) and the offline evaluation (`models.evaluate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

CALIBRATION_BINS = 10


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
    """The count-weighted mean gap between predicted and observed rate over the bins of
    `calibration_table`: one number for how far the probabilities are off (NaN for none)."""
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
