"""Ranking-model numbers: offline lift on the synthetic ground truth, training time for
1 M feedback rows, and a hot deploy under traffic on a local stack; with `--off-policy`,
only the off-policy numbers (no cluster): the Open Bandit Dataset estimator check, Herald's
ranker on OBD, and the evaluation time of 1 M logged sends (`bench/models_off_policy.py`).

    .venv/bin/python bench/models.py [--off-policy]

Writes `bench/results/models.json` (the off-policy run updates its `off_policy` part and
keeps the rest) and the evaluation plots to `bench/results/models/`.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models_off_policy import off_policy  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.ranker import load_ranker  # noqa: E402
from models.registry import Registry  # noqa: E402
from models.training import train  # noqa: E402
from ops.local import LocalStack  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def deploy_under_traffic(seconds: float = 10.0) -> dict:
    """Order updates keep coming (20 per POST, as fast as one client goes) while a second
    model version is deployed and rolled back; counts failed requests."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(data_dir=tmp, http_port=None, num_cpus=2, shards=2, routers=1) as stack,
    ):
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        client = httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)
        while client.get("/readyz").status_code != 200:
            time.sleep(0.5)
        registry = Registry(stack.settings.models_root)
        model = copy.deepcopy(load_ranker().model)
        model.coef_ = model.coef_ * 1.05
        candidate = registry.register(model, metrics={}, trained_on="bench candidate")
        stop, failures, requests = threading.Event(), [], [0]

        def traffic() -> None:
            with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as c:
                while not stop.is_set():
                    events = [
                        {"event_id": f"b-{uuid.uuid4().hex}", "type": "order.updated",
                         "user_id": f"u{i}", "order_id": "o", "status": "paid"}
                        for i in range(20)
                    ]  # fmt: skip
                    answer = c.post("/v1/events", json={"events": events})
                    requests[0] += 1
                    if answer.status_code != 202:
                        failures.append(answer.status_code)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        time.sleep(seconds / 2)
        deployed = client.post(f"/v1/models/{candidate}/deploy").json()
        rolled = client.post("/v1/models/rollback").json()
        time.sleep(seconds / 2)
        stop.set()
        thread.join()
        return {
            "deploy_s": round(deployed["took_s"], 3),
            "rollback_s": round(rolled["took_s"], 3),
            "requests_during_deploy": requests[0],
            "failed_requests_during_deploy": len(failures),
        }


def _regret(bandit: dict) -> dict:
    """Final cumulative regret (expected opens vs the best fixed variant) per policy."""
    policies = ("bandit", "thompson_only", "uniform_random")
    return {
        "rounds": bandit["rounds"],
        "batch": bandit["batch"],
        "best_fixed_variant": bandit["best_fixed_variant"],
        **{p: round(bandit[p]["cumulative_regret"], 1) for p in policies},
    }


def main() -> None:
    if "--off-policy" in sys.argv[1:]:
        path = RESULTS / "models.json"
        result = json.loads(path.read_text()) if path.is_file() else {}
        result["off_policy"] = off_policy()
        print(json.dumps(result["off_policy"], indent=1))
        path.write_text(json.dumps(result, indent=1) + "\n")
        return
    out = RESULTS / "models"
    evaluation = evaluate(load_ranker(), users=50_000, out_dir=out)
    headline = evaluation
    _, metrics = train(synth_users=1_000_000)
    deploy = deploy_under_traffic()
    result = {
        "lift_vs_random": round(headline["clicks_lift_vs_random"], 2),
        "share_of_oracle": round(headline["clicks_share_of_oracle"], 4),
        "opens_lift_vs_random": round(headline["lift_vs_random"], 2),
        "opens_share_of_oracle": round(headline["share_of_oracle"], 4),
        "recency_lift_vs_random": round(headline["recency_lift_vs_random"], 2),
        "bandit_regret": _regret(headline["bandit"]),
        "train_s_1m": metrics["train_seconds"],
        "train_rows": metrics.get("train_rows"),
        "holdout_auc": metrics.get("holdout_auc"),
        **deploy,
        "off_policy": off_policy(),
        "command": "python bench/models.py",
    }
    print(json.dumps(result, indent=1))
    (RESULTS / "models.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
