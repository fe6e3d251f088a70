"""Live stream benchmark: WebSockets held open on the stream gateway
(`actors.stream_gateway`; the Serve replicas, `--replicas`, only take the posts), each user
getting one notification per `--period` seconds; live delivery latency (the event's
`accepted_at` → the message read by the client), memory per socket, ingestion latency
while they are open, and what is left after they all close.

    python bench/stream.py --sockets 2000 --seconds 60 --replicas 1

Each socket is one user on `WS /v1/me/stream` with a user token (subprotocol), answering
the server's pings (no library pings, as a browser), held by processes of their own
(`--holders`, one per 5,000 by default); notifications are order updates to users
without devices (inbox only) posted through `POST /v1/events` in batches every 100 ms by
this process. Memory is the RSS of the Serve replicas, the HTTP proxy and the stream
gateway of this run's own Ray (descendants of this process), before the sockets open and
while they are held. Results go to bench/results/stream.json and are
printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import typer
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.user_tokens import mint  # noqa: E402
from cluster.state.clients import sync_client  # noqa: E402
from ops.local import LocalStack  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "stream.json"
SECRET = "bench-stream-user-token-secret-0123456789"


def replica_pids() -> set[int]:
    """This run's ingress replica processes: a pid that changes is a replica Serve replaced
    (e.g. after three missed health checks)."""
    found = set()
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ServeReplica:herald:HeraldIngress" in " ".join(proc.cmdline()):
                found.add(proc.pid)
    return found


def our_rss() -> dict[str, float]:
    """MiB of RSS of this run's Serve replicas, proxy and stream gateway (children of this
    process only, so other Ray instances on the box are not counted)."""
    totals = {"replicas": 0.0, "proxy": 0.0, "gateway": 0.0}
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            if "ServeReplica:herald:HeraldIngress" in title:
                totals["replicas"] += proc.memory_info().rss / 2**20
            elif "ProxyActor" in title:
                totals["proxy"] += proc.memory_info().rss / 2**20
            elif "StreamGateway" in title:
                totals["gateway"] += proc.memory_info().rss / 2**20
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
    """Every socket's reader; latencies of live notifications. A socket waits on its reads
    only (no timer per socket), so thousands cost the holder little CPU."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.open = 0
        self.opened = 0
        self.refused = 0
        self.dropped = 0
        self.errors: Counter[str] = Counter()

    async def hold(
        self, url: str, token: str, stop: asyncio.Event, lifetime_s: float | None = None
    ) -> None:
        """Hold one socket until `stop`; with `lifetime_s`, close it after that long and
        open a new one (churn), until `stop`."""
        while not stop.is_set():
            try:
                async with websockets.connect(
                    url,
                    subprotocols=["herald.v1", f"bearer.{token}"],
                    open_timeout=60,
                    ping_interval=None,  # as a browser: the server's own pings keep it alive
                ) as ws:
                    await self._read(ws, stop, lifetime_s)
            except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
                self.refused += 1
                self.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                await asyncio.sleep(1)
            if lifetime_s is None:
                return

    async def _read(self, ws, stop: asyncio.Event, lifetime_s: float | None) -> None:
        self.open += 1
        self.opened += 1
        closer = asyncio.ensure_future(_close_on(ws, stop, lifetime_s))
        try:
            async for text in ws:
                message = json.loads(text)
                if message["type"] == "notification":
                    self.latencies.append(time.time() - message["item"]["created_at"])
                elif message["type"] == "ping":
                    await ws.send('{"type":"pong"}')
        except websockets.ConnectionClosed as exc:
            self.dropped += 1
            self.errors[f"dropped: {exc.rcvd.code if exc.rcvd else None}"] += 1
        finally:
            self.open -= 1
            closer.cancel()


async def _close_on(ws, stop: asyncio.Event, lifetime_s: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime_s)
    await ws.close()


async def post_notifications(
    api: str, key: str, users: list[str], period_s: float, seconds: float, failed: Counter
) -> tuple[int, list[float]]:
    """One order update per user per `period_s`, in batches every 100 ms; (accepted,
    POST latencies). A POST that fails is counted in `failed` by its error."""
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
            try:
                answer = await client.post("/v1/events", json={"events": events})
            except httpx.HTTPError as exc:  # recorded, not fatal: the run says how many
                failed[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                continue
            latencies.append(time.monotonic() - tick)
            if answer.status_code == 202:
                accepted += len(answer.json()["accepted"])
            else:
                failed[f"HTTP {answer.status_code}"] += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return accepted, latencies


async def _hold_all(
    url: str, tokens: list[str], open_rate: float, conn, lifetime_s: float | None = None
) -> None:
    """One holder process's sockets: open them at `open_rate`, report (open, refused,
    errors) once all are open or refused, hold them until told to stop, then send the
    live latencies."""
    client, stop = Client(), asyncio.Event()
    tasks, opening = [], time.monotonic()
    for i, token in enumerate(tokens):
        life = None if lifetime_s is None else lifetime_s * (0.5 + random.random())
        tasks.append(asyncio.create_task(client.hold(url, token, stop, life)))
        await asyncio.sleep(max(0.0, opening + (i + 1) / open_rate - time.monotonic()))
    while client.opened + client.refused < len(tokens) and time.monotonic() - opening < 300:
        await asyncio.sleep(0.5)
    conn.send((client.open, client.refused, dict(client.errors.most_common(5))))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "stop"
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(
        {"latencies": client.latencies, "opened": client.opened, "dropped": client.dropped,
         "refused": client.refused, "errors": dict(client.errors.most_common(5))}
    )  # fmt: skip


def holder(
    url: str, tokens: list[str], open_rate: float, conn, lifetime_s: float | None = None
) -> None:
    asyncio.run(_hold_all(url, tokens, open_rate, conn, lifetime_s))


@dataclass
class Holders:
    """Socket-holding processes, once all their sockets are open (or refused)."""

    pipes: list
    children: list
    held: dict
    opened_s: float

    def stop(self) -> list[float]:
        """Close every socket; the live latencies the holders saw (their totals of
        sockets opened, dropped by the server and refused go to `ended`)."""
        latencies: list[float] = []
        self.ended: Counter[str] = Counter()
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe, child in zip(self.pipes, self.children, strict=True):
            report = pipe.recv()
            latencies += report.pop("latencies")
            self.ended.update({k: v for k, v in report.items() if k != "errors"})
            self.ended.update(report["errors"])
            child.join(timeout=30)
        return latencies


def start_holders(
    url: str,
    users: list[str],
    open_rate: float,
    procs: int,
    ttl_s: int,
    lifetime_s: float | None = None,
) -> Holders:
    """`users`' sockets on `url` held by `procs` processes of their own, so that neither
    their event loops nor the poster's slow the other down: the POST latencies measure
    the API, not a loop busy with thousands of sockets. Returns once all are open."""
    tokens = [mint(SECRET, user, ttl_s=ttl_s) for user in users]
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    opening = time.monotonic()
    for k in range(procs):
        ours, theirs = context.Pipe()
        child = context.Process(
            target=holder,
            args=(url, tokens[k::procs], open_rate / procs, theirs, lifetime_s),
            daemon=True,
        )
        child.start()
        pipes.append(ours)
        children.append(child)
    reports = [pipe.recv() for pipe in pipes]
    errors: Counter[str] = Counter()
    for _, _, top in reports:
        errors.update(top)
    held = {
        "open": sum(r[0] for r in reports),
        "refused": sum(r[1] for r in reports),
        "errors": dict(errors.most_common(5)),
    }
    return Holders(pipes, children, held, time.monotonic() - opening)


def run(
    stack: LocalStack, sockets: int, seconds: float, period_s: float, open_rate: float, procs: int
):
    users = [f"bench-{i}" for i in range(sockets)]
    url = stack.stream_url + "/v1/me/stream"
    holders = start_holders(url, users, open_rate, procs, 3600 + int(seconds))
    time.sleep(3)
    held = {**holders.held, "rss_mib": our_rss()}
    failed: Counter[str] = Counter()
    accepted, posts = asyncio.run(
        post_notifications(stack.api_url, stack.api_key, users, period_s, seconds, failed)
    )
    held["post_errors"] = dict(failed.most_common(5))
    time.sleep(3)  # the last notifications arrive
    return held, holders.opened_s, accepted, posts, holders.stop()


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def main(
    sockets: int = typer.Option(2000, help="WebSockets to hold, one user each."),
    seconds: float = typer.Option(60, help="How long notifications flow while they are held."),
    period: float = typer.Option(10, help="Seconds between two notifications of one user."),
    replicas: int = typer.Option(1, help="Serve ingress replicas (fixed)."),
    open_rate: float = typer.Option(200, help="Sockets opened per second."),
    holders: int = typer.Option(0, help="Processes holding the sockets (0: one per 5,000)."),
) -> None:
    procs = holders or max(1, -(-sockets // 5000))
    with tempfile.TemporaryDirectory() as data_dir:
        overrides = {"shards": 2, "routers": 1, "user_token_secret": SECRET}
        with LocalStack(data_dir=data_dir, http_port=None, num_cpus=2, **overrides) as stack:
            deploy(stack, replicas)
            store = sync_client(stack.settings)
            before = {"rss_mib": our_rss(), "redis_clients": len(store.client_list())}
            pids = replica_pids()
            held, opened_s, accepted, posts, latencies = run(
                stack, sockets, seconds, period, open_rate, procs
            )
            time.sleep(5)
            after = {"rss_mib": our_rss(), "redis_clients": len(store.client_list())}
            replaced = len(pids - replica_pids())
    grown = sum(held["rss_mib"].values())
    base = sum(before["rss_mib"].values())
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "bench/stream.py", *sys.argv[1:]]),
        "sockets": sockets,
        "replicas": replicas,
        "holder_processes": procs,
        "held_open": held["open"],
        "replicas_replaced": replaced,
        "refused": held["refused"],
        "errors": held["errors"],
        "post_errors": held["post_errors"],
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
