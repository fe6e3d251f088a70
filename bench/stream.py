"""Live stream benchmark: WebSockets held open on a fixed number of Serve replicas, each
user getting one notification per `--period` seconds; live delivery latency (the event's
`accepted_at` → the message read by the client), memory per socket, ingestion latency
while they are open, and what is left after they all close.

    python bench/stream.py --sockets 2000 --seconds 60 --replicas 1

Each socket is one user on `WS /v1/me/stream` with a user token (subprotocol), answering
the server's pings; notifications are order updates to users without devices (inbox only)
posted through `POST /v1/events` in batches every 100 ms. Memory is the RSS of the Serve
replicas and the HTTP proxy of this run's own Ray (descendants of this process), before the
sockets open and while they are held. Results go to bench/results/stream.json and are
printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
import redis
import typer
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.user_tokens import mint  # noqa: E402
from ops.local import LocalStack  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "stream.json"
SECRET = "bench-stream-user-token-secret-0123456789"


def our_rss() -> dict[str, float]:
    """MiB of RSS of this run's Serve replicas and proxy (children of this process only,
    so other Ray instances on the box are not counted)."""
    totals = {"replicas": 0.0, "proxy": 0.0}
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            if "ServeReplica:herald:HeraldIngress" in title:
                totals["replicas"] += proc.memory_info().rss / 2**20
            elif "ProxyActor" in title:
                totals["proxy"] += proc.memory_info().rss / 2**20
    return totals


def deploy(stack: LocalStack, replicas: int) -> None:
    """The app again with exactly `replicas` ingress replicas (no autoscaling)."""
    from ray import serve

    import serve_app

    fixed = {"min_replicas": replicas, "max_replicas": replicas}
    app = serve_app.HeraldIngress.options(autoscaling_config=fixed).bind(stack.settings)
    serve.run(app, name="herald", route_prefix="/", blocking=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = serve.status().applications.get("herald")
        running = status is not None and status.status == "RUNNING"
        if running and httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200:
            return
        time.sleep(1)
    raise RuntimeError("the app did not come back")


class Client:
    """Every socket's reader; latencies of live notifications."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.open = 0
        self.refused = 0
        self.errors: Counter[str] = Counter()

    async def hold(self, url: str, token: str, stop: asyncio.Event) -> None:
        try:
            async with websockets.connect(
                url, subprotocols=["herald.v1", f"bearer.{token}"], open_timeout=60
            ) as ws:
                self.open += 1
                try:
                    while not stop.is_set():
                        try:
                            text = await asyncio.wait_for(ws.recv(), 1.0)
                        except TimeoutError:
                            continue
                        message = json.loads(text)
                        if message["type"] == "notification":
                            self.latencies.append(time.time() - message["item"]["created_at"])
                        elif message["type"] == "ping":
                            await ws.send('{"type":"pong"}')
                finally:
                    self.open -= 1
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            self.refused += 1
            self.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1


async def post_notifications(
    api: str, key: str, users: list[str], period_s: float, seconds: float
) -> tuple[int, list[float]]:
    """One order update per user per `period_s`, in batches every 100 ms; (accepted,
    POST latencies)."""
    per_batch = max(1, round(len(users) * 0.1 / period_s))
    accepted, latencies, n = 0, [], 0
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as client:
        while time.monotonic() - started < seconds:
            tick = time.monotonic()
            events = []
            for _ in range(per_batch):
                user = users[n % len(users)]
                events.append(
                    {
                        "event_id": f"bs-{os.getpid()}-{n}",
                        "type": "order.updated",
                        "user_id": user,
                        "order_id": f"bo-{n}",
                        "status": "shipped",
                    }
                )
                n += 1
            answer = await client.post("/v1/events", json={"events": events})
            latencies.append(time.monotonic() - tick)
            if answer.status_code == 202:
                accepted += len(answer.json()["accepted"])
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return accepted, latencies


async def run(stack: LocalStack, sockets: int, seconds: float, period_s: float, open_rate: float):
    users = [f"bench-{i}" for i in range(sockets)]
    url = stack.api_url.replace("http", "ws") + "/v1/me/stream"
    client, stop = Client(), asyncio.Event()
    tasks = []
    opening = time.monotonic()
    for i, user in enumerate(users):
        token = mint(SECRET, user, ttl_s=3600 + int(seconds))
        tasks.append(asyncio.create_task(client.hold(url, token, stop)))
        await asyncio.sleep(max(0.0, opening + (i + 1) / open_rate - time.monotonic()))
    while client.open + client.refused < sockets and time.monotonic() - opening < 300:
        await asyncio.sleep(0.5)
    opened_s = time.monotonic() - opening
    await asyncio.sleep(3)
    held = {"open": client.open, "refused": client.refused, "rss_mib": our_rss()}
    held["errors"] = dict(client.errors.most_common(5))
    accepted, posts = await post_notifications(
        stack.api_url, stack.api_key, users, period_s, seconds
    )
    await asyncio.sleep(3)  # the last notifications arrive
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return held, opened_s, accepted, posts, client.latencies


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def main(
    sockets: int = typer.Option(2000, help="WebSockets to hold, one user each."),
    seconds: float = typer.Option(60, help="How long notifications flow while they are held."),
    period: float = typer.Option(10, help="Seconds between two notifications of one user."),
    replicas: int = typer.Option(1, help="Serve ingress replicas (fixed)."),
    open_rate: float = typer.Option(200, help="Sockets opened per second."),
) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        overrides = {"shards": 2, "routers": 1, "user_token_secret": SECRET}
        with LocalStack(data_dir=data_dir, http_port=None, num_cpus=2, **overrides) as stack:
            deploy(stack, replicas)
            store = redis.Redis.from_url(stack.settings.state.redis_url)
            before = {"rss_mib": our_rss(), "redis_clients": len(store.client_list())}
            held, opened_s, accepted, posts, latencies = asyncio.run(
                run(stack, sockets, seconds, period, open_rate)
            )
            time.sleep(5)
            after = {"rss_mib": our_rss(), "redis_clients": len(store.client_list())}
    grown = held["rss_mib"]["replicas"] + held["rss_mib"]["proxy"]
    base = before["rss_mib"]["replicas"] + before["rss_mib"]["proxy"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "bench/stream.py", *sys.argv[1:]]),
        "sockets": sockets,
        "replicas": replicas,
        "held_open": held["open"],
        "refused": held["refused"],
        "errors": held["errors"],
        "open_s": round(opened_s, 1),
        "kib_per_socket": round((grown - base) * 1024 / max(held["open"], 1), 1),
        "rss_before_mib": before["rss_mib"],
        "rss_held_mib": held["rss_mib"],
        "rss_after_mib": after["rss_mib"],
        "redis_clients": {"before": before["redis_clients"], "after": after["redis_clients"]},
        "notifications_accepted": accepted,
        "notifications_received": len(latencies),
        "live_p50_s": percentile(latencies, 50),
        "live_p99_s": percentile(latencies, 99),
        "post_p50_s": percentile(posts, 50),
        "post_p99_s": percentile(posts, 99),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*history, result], indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
