"""The load test's short version: locust (headless, FastHttpUser) against the test cluster for
a few seconds — events, devices, status polls, price drops and campaigns — with no failure."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.cluster.test_dead_letters import wait_for

pytestmark = pytest.mark.slow

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"


def test_short_load_has_no_failures(stack, tmp_path):
    locust = Path(sys.executable).with_name("locust")
    prefix = tmp_path / "load"
    run = subprocess.run(
        [str(locust), "-f", str(LOCUSTFILE), "--host", stack.api_url, "--headless",
         "-u", "5", "-r", "5", "-t", "12s", "--csv", str(prefix), "--only-summary"],
        # Small: the session's other tests share this cluster and must not queue behind it.
        env={**os.environ, "HERALD_LOAD_KEY": "test-admin", "HERALD_LOAD_BATCH": "20",
             "HERALD_LOAD_AUDIENCE": "5", "HERALD_LOAD_PRODUCT_PREFIX": "load-p"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    with open(f"{prefix}_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0, run.stderr[-2000:]
    assert int(total["Request Count"]) > 30
    assert int(rows["POST /v1/events"]["Request Count"]) > 10
    assert run.returncode == 0, run.stderr[-2000:]
    # and the cluster works its backlog off
    headers = {"Authorization": "Bearer test-admin"}

    def drained() -> bool:
        stats = httpx.get(f"{stack.api_url}/v1/admin/stats", headers=headers, timeout=60)
        return all(n == 0 for n in stats.json()["log_backlog"].values())

    wait_for(drained, timeout_s=120)
