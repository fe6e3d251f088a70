"""Transactional benchmark: order updates at a steady rate through the HTTP API to the
provider emulators; sent/s and accepted → provider-acknowledged latency.

    python bench/transactional.py --rate 1700 --seconds 60

Every user has one phone (half iOS, half Android) and the inbox, so each order update is
one push plus one inbox item. The rate counts pushes. Results go to
bench/results/transactional.json and are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu_groups, stream  # noqa: E402
from cluster.settings import HeraldSettings  # noqa: E402
from cluster.state import keys  # noqa: E402
from cluster.state.clients import sync_client  # noqa: E402
from ops.demo import apns_token, fcm_token  # noqa: E402
from ops.embedded_redis import EmbeddedRedis  # noqa: E402
from ops.importer import import_devices  # noqa: E402
from ops.local import LocalStack  # noqa: E402
from ops.redis_cluster import LocalRedisCluster  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "transactional.json"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    python = sys.version.split()[0]
    return f"{platform.machine()} {os.cpu_count()} cores {mem:.0f} GiB, Python {python}"


async def post_steadily(
    url: str, key: str, users: list[str], rate: float, seconds: float, batch_ms: int
) -> tuple[list[str], int]:
    """Post order updates in batches every `batch_ms`, keeping the average rate exact; a
    POST answered other than 202, or not answered in 30 s, counts as an error (its events
    may still have been logged: they are not among `accepted`, so never counted lost)."""
    rng = np.random.default_rng(7)
    per_batch = max(1, round(rate * batch_ms / 1000))
    batches = int(seconds * 1000 / batch_ms)
    accepted: list[str] = []
    errors = 0
    run = os.urandom(4).hex()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal errors
            picks = rng.integers(0, len(users), per_batch)
            events = [
                {
                    "event_id": f"b{run}-{i}-{j}",
                    "type": "order.updated",
                    "user_id": users[u],
                    "order_id": f"o{i}-{j}",
                    "status": "shipped",
                }
                for j, u in enumerate(picks)
            ]
            try:
                answer = await client.post("/v1/events", json={"events": events})
            except httpx.HTTPError:  # counted, not fatal: a long run reports what failed
                errors += 1
                return
            if answer.status_code == 202:
                accepted.extend(answer.json()["accepted"])
            else:
                errors += 1

        start = time.monotonic()
        tasks = []
        for i in range(batches):
            delay = start + i * batch_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return accepted, errors


def seconds_at(latency: np.ndarray, q: float) -> float | None:
    """The q-th percentile of the latencies in seconds (4 decimals); None when there are none."""
    return round(float(np.percentile(latency, q)), 4) if len(latency) else None


def write_result(output: Path, result: dict) -> None:
    """Save a benchmark's result JSON and print it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result, indent=2))


def phones(ids: list[str]) -> pa.Table:
    """One phone per user, iPhones and Android phones taking turns."""
    return pa.table(
        {
            "user_id": ids,
            "platform": ["ios" if i % 2 else "android" for i in range(len(ids))],
            "token": [apns_token() if i % 2 else fcm_token() for i in range(len(ids))],
        }
    )


def collect(settings: HeraldSettings, ids: list[str], timeout_s: float) -> list[dict]:
    """Wait until every accepted notification's push is final; return the push records."""
    client = sync_client(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        pipe = client.pipeline(transaction=False)
        for nid in ids:
            pipe.hgetall(keys.notification(settings, nid))
        records = pipe.execute()
        pushes: list[dict] = []
        pending = 0
        for fields in records:
            meta = json.loads(fields.get(b"meta", b"{}"))
            found = False
            for name, value in fields.items():
                if name.startswith(b"d:") and name != b"d:inbox":
                    found = True
                    record = json.loads(value)
                    record["accepted_at"] = meta.get("accepted_at")
                    pushes.append(record)
                    pending += record["status"] in ("queued", "retrying")
            pending += not found
        if pending == 0 or time.monotonic() > deadline:
            return pushes
        time.sleep(1)


@contextlib.contextmanager
def _redis(tmp: Path, cluster: bool, system: bool) -> Iterator[dict]:
    """LocalStack's Redis arguments: none (its embedded Redis), or a 3-master cluster's
    URL, the cluster running (AOF, fsync always, as the embedded one) until the run ends;
    or one system redis-server, to tell the cluster's cost from its binary's."""
    if cluster:
        with LocalRedisCluster(tmp / "redis-cluster") as running:
            yield {"redis_url": running.url, "redis_cluster": True}
    elif system:
        server = EmbeddedRedis(tmp / "redis-system", appendfsync="always",
                               executable=shutil.which("redis-server"))  # fmt: skip
        try:
            yield {"redis_url": server.start().url}
        finally:
            server.stop()
    else:
        yield {}


def summarize(
    pushes: list[dict],
    accepted: list[str],
    errors: int,
    t0: float,
    posted_s: float,
    cpu_spent: dict[str, float],
    rate: float,
) -> dict:
    """The run's numbers from the final push records."""
    delivered = [p for p in pushes if p["status"] == "delivered"]
    latency = np.array([p["acked_at"] - p["accepted_at"] for p in delivered])
    acked = np.array([p["acked_at"] for p in delivered])
    span = float(acked.max() - t0) if len(acked) else float("nan")
    return {
        "target_per_s": rate,
        "posted_per_s": round(len(accepted) / posted_s, 1),
        "sent_per_s": round(len(delivered) / span, 1) if len(acked) else 0.0,
        "p50_s": seconds_at(latency, 50),
        "p99_s": seconds_at(latency, 99),
        "max_s": seconds_at(latency, 100),
        "accepted": len(accepted),
        "delivered": len(delivered),
        "lost": len(accepted) - len(delivered),
        "http_errors": errors,
        # CPU per delivered push (µs) by process group, from posting's start to the last
        # status read: the CPU budget's unit (each push also writes one inbox item).
        "cpu_us_per_push": cpu_groups.per_notification_us(cpu_spent, len(delivered)),
    }  # fmt: skip


def hold(stack: LocalStack, sockets: int) -> stream.Holders | None:
    """`sockets` live streams of other users (inbox only) held while the benchmark posts."""
    if not sockets:
        return None
    url = stack.stream_url + "/v1/me/stream"
    users = [f"bench-{i}" for i in range(sockets)]
    holders = stream.start_holders(url, users, 300, -(-sockets // 5000), 7200)
    typer.echo(f"holding {holders.held}", err=True)
    return holders


def main(
    rate: float = typer.Option(1700, help="Pushes per second to post."),
    seconds: float = typer.Option(60, help="How long to post."),
    users: int = typer.Option(20_000, help="Users (one phone each)."),
    batch_ms: int = typer.Option(100, help="Post a batch every this many ms."),
    shards: int = typer.Option(2),
    routers: int = typer.Option(2),
    output: Path = typer.Option(RESULTS),
    redis_cluster: bool = typer.Option(
        False, help="Run on a local 3-master Redis Cluster instead of one embedded Redis."
    ),
    system_redis: bool = typer.Option(
        False, help="One Redis, but the system's redis-server (the cluster's binary)."
    ),
    hold_sockets: int = typer.Option(
        0, help="Live streams held open (other users, inbox only) while posting."
    ),
    replicas: int = typer.Option(0, help="Fixed ingress replicas (0: autoscaled, 1 to 4)."),
) -> None:
    command = "python bench/transactional.py " + shlex.join(sys.argv[1:])
    with (
        tempfile.TemporaryDirectory() as tmp,
        _redis(Path(tmp), redis_cluster, system_redis) as on_redis,
        LocalStack(
            data_dir=tmp, http_port=None, num_cpus=2, shards=shards, routers=routers,
            user_token_secret=stream.SECRET, **on_redis,
        ) as stack,
    ):  # fmt: skip
        if replicas:
            stream.deploy(stack, replicas)
        ids = [f"bu{i}" for i in range(users)]
        import_devices(stack.settings, phones(ids))
        while httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code != 200:
            time.sleep(0.5)
        holders = hold(stack, hold_sockets)
        typer.echo(f"{users} users imported; posting {rate}/s for {seconds}s", err=True)
        cpu_before = cpu_groups.snapshot()
        t0 = time.time()
        accepted, errors = asyncio.run(
            post_steadily(stack.api_url, stack.api_key, ids, rate, seconds, batch_ms)
        )
        posted_s = time.time() - t0
        pushes = collect(stack.settings, accepted, 300)
        cpu_spent = cpu_groups.per_group(cpu_before, cpu_groups.snapshot())
        if holders:
            holders.stop()

    result = summarize(pushes, accepted, errors, t0, posted_s, cpu_spent, rate)
    result.update(
        redis="3-master Redis Cluster"
        if redis_cluster
        else "one Redis" + (" (system redis-server)" if system_redis else ""),
        sockets_held=holders.held if holders else None,
        ingress_replicas=replicas or "autoscaled",
        machine=machine(),
        command=command,
    )
    write_result(output, result)


if __name__ == "__main__":
    typer.run(main)
