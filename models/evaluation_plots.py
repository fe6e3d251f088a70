"""The offline evaluation's figures (`models.evaluate`): expected clicks against audience
share per policy (`lift.png`), calibration per decile (`calibration.png`) and the bandit's
cumulative regret per round (`regret.png`).

matplotlib is imported when a figure is drawn, not with this module: `models.evaluate` is
imported by the CLI and the notebook, which mostly never plot, and choosing the headless
"Agg" backend at import time would take over a notebook's own backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# The line of each targeting policy in the lift figure.
LINE_STYLES = {"ranker": "-", "random": ":", "recency": "-.", "oracle": "--"}


def write_plots(
    result: dict[str, Any],
    totals: dict[str, dict[str, np.ndarray]],
    out_dir: Path,
    *,
    audience_shares: tuple[float, ...],
) -> dict[str, str]:
    """lift.png, calibration.png and regret.png into `out_dir` from `evaluate`'s result and
    its per-policy cumulative curves (`totals`); returns their paths by name."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "lift": _save(plt, *_lift(plt, result, totals, audience_shares), out_dir / "lift.png"),
        "calibration": _save(plt, *_calibration(plt, result), out_dir / "calibration.png"),
        "regret": _save(plt, *_regret(plt, result), out_dir / "regret.png"),
    }


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless backend (see the module docstring for why here)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> str:
    """The finish every figure shares: legend, light grid, tight layout, 110 dpi PNG at
    `path`, and the figure closed so repeated evaluations do not pile up open figures."""
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return str(path)


def _axes(plt: Any, size: tuple[float, float], *, x: str, y: str, title: str) -> tuple[Any, Any]:
    """A figure of one labelled chart, as every figure of the evaluation is."""
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    return fig, ax


def _lift(
    plt: Any,
    result: dict[str, Any],
    totals: dict[str, dict[str, np.ndarray]],
    audience_shares: tuple[float, ...],
) -> tuple[Any, Any]:
    """Expected clicks of the first k users of each policy, k as a share of all users."""
    fig, ax = _axes(
        plt,
        (7, 5),
        x="audience (% of users, best first)",
        y=f"expected clicks ({len(result['categories'])} campaigns)",
        title=f"{result['model_version']}: lift at 20 % {result['clicks_lift_vs_random']:.2f}× "
        f"random (clicks), {result['share_of_oracle']:.1%} of oracle (opens)",
    )
    n = result["users"]
    share = np.arange(n + 1) / n
    for policy, curves in totals.items():
        ax.plot(share * 100, curves["clicks"], LINE_STYLES.get(policy, "-"), label=policy)
    for s in audience_shares:
        ax.axvline(s * 100, color="0.85", lw=0.8, zorder=0)
    return fig, ax


def _calibration(plt: Any, result: dict[str, Any]) -> tuple[Any, Any]:
    """Observed open rate and true P(opened) against the mean prediction, per decile."""
    fig, ax = _axes(
        plt,
        (5.5, 5),
        x="mean predicted P(opened), per decile",
        y="observed open rate",
        title=f"{result['model_version']}: AUC {result['auc']:.3f}, ECE {result['ece']:.4f}",
    )
    table = result["calibration"]
    predicted = [b["mean_predicted"] for b in table]
    top = max(max(predicted), max(b["observed_rate"] for b in table)) * 1.05
    ax.plot([0, top], [0, top], "--", color="0.6", label="perfect")
    ax.plot(predicted, [b["observed_rate"] for b in table], "o-", label="observed opens")
    ax.plot(predicted, [b["true_probability"] for b in table], "x:", label="true P(opened)")
    return fig, ax


def _regret(plt: Any, result: dict[str, Any]) -> tuple[Any, Any]:
    """Cumulative expected regret per round of each variant policy."""
    bandit = result["bandit"]
    fig, ax = _axes(
        plt,
        (6, 4.5),
        x=f"round ({bandit['batch']} users each)",
        y="cumulative expected regret (opens)",
        title=f"vs best fixed variant ({bandit['best_fixed_variant']})",
    )
    for name in ("bandit", "thompson_only", "uniform_random"):
        curve = bandit[name]["regret_per_round"]
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=name)
    ax.axhline(0, color="0.6", lw=0.8)
    return fig, ax
