"""Off-policy numbers for `bench/models.py`: the Open Bandit Dataset estimator check (BTS's
click rate estimated from the random policy's log vs its own), Herald's ranker trained on
part of OBD's random log and estimated on the rest, and the time to evaluate 1 M logged
sends with 1,000 bootstrap draws. No cluster."""

from __future__ import annotations

import platform
import subprocess
import time

import numpy as np

from models import obd
from models.off_policy import evaluate


def evaluation_time(n: int = 1_000_000, draws: int = 1_000, seed: int = 0) -> dict:
    """IPS + SNIPS + DR with bootstrap intervals on n simulated sends (best of 3)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 1.0, n)
    target = (rng.random(n) < 0.5).astype(np.float64)
    reward = (rng.random(n) < 0.1).astype(np.float64)
    q = np.full(n, 0.1)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        evaluate(reward, p, target, q_logged=q, q_target=q, draws=draws, rng=rng)
        times.append(time.perf_counter() - started)
    return {"sends": n, "draws": draws, "best_s": round(min(times), 3),
            "runs_s": [round(t, 3) for t in times]}  # fmt: skip


def _estimated(check: dict) -> dict:
    return {
        name: {k: round(v, 6) if isinstance(v, float) else v for k, v in check[name].items()}
        for name in ("ips", "snips", "dr")
    }


def off_policy() -> dict:
    checks = {c: obd.estimator_check(c) for c in ("all", "men", "women")}
    headline = checks["all"]
    try:
        from models.obd_ranker import ranker_on_obd  # piece 5; absent until it lands
    except ImportError:
        ranker = None
    else:
        ranker = {c: ranker_on_obd(c) for c in ("all", "men", "women")}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {
        "obd_bts_true_ctr": headline["obd_bts_true_ctr"],
        "obd_random_ctr": headline["obd_random_ctr"],
        "obd_bts_estimated_ctr": _estimated(headline),
        "obd_by_campaign": {
            c: {"obd_bts_true_ctr": r["obd_bts_true_ctr"], "estimated": _estimated(r)}
            for c, r in checks.items()
        },  # fmt: skip
        "herald_ranker_on_obd": ranker,
        "ope_time_1m": evaluation_time(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "load_at_end": load,
    }
