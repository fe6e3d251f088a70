"""Transactional latency while a large campaign fans out: order updates at steady rates
through the HTTP API, accepted → provider-acknowledged p50/p99, with a campaign over
`--campaign-users` synthetic users running in the marketing lane the whole time.

    python bench/load.py --campaign-users 1000000 --rate 100 --rate 400 --rate 1667

The campaign is posted first and the order updates start once its deliveries flow; every
rate's window must end with the campaign still running, or the run says so. The highest
rate whose p99 stays within `--p99-goal-s` with nothing lost is `max_rate_held_per_s`.
Results go to bench/results/load.json and are printed.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transactional import (  # noqa: E402
    collect,
    machine,
    phones,
    post_steadily,
    seconds_at,
    write_result,
)
from models.synth import synthesize  # noqa: E402
from ops.importer import import_devices, import_users  # noqa: E402
from ops.local import LocalStack  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "load.json"
PEAK_PER_S = 100_000 / 60  # the specified peak: 100,000 notifications a minute


def start_campaign(api: httpx.Client, campaign_id: str, audience: int) -> dict:
    """A flash sale to every synthetic user (all of them match `not country ZZ`), then wait
    until its first deliveries are handed to the senders."""
    body = {
        "campaign_id": campaign_id,
        "segment": {"not": {"country": ["ZZ"]}},
        "variants": [
            {"variant_id": "plain", "title": "Flash sale", "body": "Up to 50 % off"},
            {
                "variant_id": "urgent",
                "title": "2 hours left",
                "body": "Ends soon",
                "style": "urgent",
            },
        ],  # fmt: skip
        "category": "fashion",
        "audience_limit": audience,
        "respect_quiet_hours": False,
    }
    api.post("/v1/campaigns", json=body).raise_for_status()
    deadline = time.monotonic() + 600
    while True:
        status = api.get(f"/v1/campaigns/{campaign_id}").json()
        if status["sent"] > 0 or status["state"] in ("done", "failed"):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"the campaign never started sending: {status}")
        time.sleep(1)


def summarize(rate: float, accepted: list[str], errors: int, pushes: list[dict]) -> dict:
    delivered = [p for p in pushes if p["status"] == "delivered"]
    latency = np.array([p["acked_at"] - p["accepted_at"] for p in delivered])

    return {
        "rate_per_s": round(rate, 1),
        "p50_s": seconds_at(latency, 50),
        "p99_s": seconds_at(latency, 99),
        "accepted": len(accepted),
        "delivered": len(delivered),
        "lost": len(accepted) - len(delivered),
        "failures": errors,
    }


def main(
    rate: list[float] = typer.Option([100.0, 400.0, PEAK_PER_S], help="Order updates/s."),
    seconds: float = typer.Option(60, help="How long to post at each rate."),
    campaign_users: int = typer.Option(1_000_000, help="Synthetic users the campaign targets."),
    users: int = typer.Option(20_000, help="Order-update customers (one phone each)."),
    p99_goal_s: float = typer.Option(1.0, help="p99 a rate must stay within to count as held."),
    shards: int = typer.Option(2),
    routers: int = typer.Option(2),
    output: Path = typer.Option(RESULTS),
) -> None:
    command = "python bench/load.py " + shlex.join(sys.argv[1:])
    runs: list[dict] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(
            data_dir=Path(tmp) / "herald", http_port=None, num_cpus=2, shards=shards,
            routers=routers,
        ) as stack,
    ):  # fmt: skip
        paths = synthesize(campaign_users, seed=11, out_dir=Path(tmp) / "population")
        import_users(stack.settings, pq.read_table(paths.users))
        import_devices(stack.settings, pq.read_table(paths.devices))
        ids = [f"lu{i}" for i in range(users)]
        import_devices(stack.settings, phones(ids))
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as api:
            while api.get("/readyz").status_code != 200:
                time.sleep(0.5)
            campaign_id = f"load-{int(time.time())}"
            started = start_campaign(api, campaign_id, campaign_users)
            typer.echo(f"campaign {campaign_id}: {started['selected']} selected", err=True)
            for r in rate:
                accepted, errors = asyncio.run(
                    post_steadily(stack.api_url, stack.api_key, ids, r, seconds, 100)
                )
                pushes = collect(stack.settings, accepted, 300)
                campaign = api.get(f"/v1/campaigns/{campaign_id}").json()
                run = summarize(r, accepted, errors, pushes)
                run["campaign_state_after"] = campaign["state"]
                run["campaign_sent_after"] = campaign["sent"]
                runs.append(run)
                typer.echo(json.dumps(run), err=True)
            api.delete(f"/v1/campaigns/{campaign_id}")

    held = [
        r["rate_per_s"]
        for r in runs
        if r["lost"] == 0 and r["p99_s"] is not None and r["p99_s"] <= p99_goal_s
        and r["campaign_state_after"] == "running"
    ]  # fmt: skip
    peak = max(runs, key=lambda r: r["rate_per_s"])
    result = {
        "rate_per_s": peak["rate_per_s"],
        "p50_s": peak["p50_s"],
        "p99_s": peak["p99_s"],
        "campaign_users": campaign_users,
        "campaign_selected": started["selected"],
        "max_rate_held_per_s": max(held) if held else 0.0,
        "failures": sum(r["failures"] + r["lost"] for r in runs),
        "runs": runs,
        "p99_goal_s": p99_goal_s,
        "machine": machine(),
        "command": command,
    }
    write_result(output, result)


if __name__ == "__main__":
    typer.run(main)
