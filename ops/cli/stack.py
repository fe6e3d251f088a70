"""`herald run`, `herald demo` and `herald status`: start the local stack, run the scripted
scenario against it, and look at a running Herald through its HTTP API.

Starting a stack imports Ray, Serve and the whole app (seconds), so `ops.local` is
imported only by the commands that start one: `herald --help` stays fast."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import httpx
import typer

from ops.cli.common import DEFAULT_DATA_DIR, DataDir
from ops.cli.token import stack_token_settings
from ops.demo import STACK_FILE, StackInfo, run_scenario, seed


def _start_stack(data_dir: Path, port: int | None, shards: int, dashboard: bool):
    """Start a LocalStack and record where it runs in `<data_dir>/stack.json`, so later
    `herald demo`, `status`, `dlq` and `import` calls find it without options."""
    from ops.local import LocalStack  # lazy: keeps `herald --help` fast

    stack = LocalStack(
        data_dir=data_dir,
        http_port=port,
        shards=shards,
        dashboard=dashboard,
        **stack_token_settings(data_dir),
    )
    try:
        stack.start()
    except BaseException:
        # Redis and the emulators are already running when Ray or the app fails to start
        # (or Ctrl-C comes mid-start): stop them, don't leave them behind.
        stack.stop()
        raise
    info = StackInfo(
        api_url=stack.api_url,
        api_key=stack.api_key,
        apns_url=stack.apns.url,
        fcm_url=stack.fcm.url,
        ca_file=str(stack.settings.apns.ca_file),
        redis_url=stack.settings.state.redis_url,
        stream_url=stack.stream_url,
    )
    # It holds the admin key: the owner's only, from before the first byte is written.
    recorded = stack.data_dir / STACK_FILE
    recorded.touch(mode=0o600)
    os.chmod(recorded, 0o600)
    info.save(stack.data_dir)
    return stack, info


def _wait_for_ctrl_c() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM.

    Our own handlers, not Python's KeyboardInterrupt: importing polars (≥ 2) replaces the
    process's C-level SIGINT handler with one that does not wake a thread blocked in
    `Event.wait()`, so a plain `wait()` never returned on Ctrl-C. The timed wait also lets
    Python run its handlers when the kernel hands the signal to one of Ray's threads."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    # A second Ctrl-C while stopping interrupts the (slow) Serve shutdown; Redis and the
    # emulators are still stopped, and Ray's processes die with their driver.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _print_banner(info: StackInfo) -> None:
    """Where everything runs, then three curl commands that work as printed (the README
    and tests/cluster/test_cli_run.py rely on these lines and their order)."""
    auth = f"-H 'Authorization: Bearer {info.api_key}'"
    typer.echo(f"API: {info.api_url}")
    typer.echo(f"API key: {info.api_key}")
    typer.echo(f"APNs emulator: {info.apns_url}")
    typer.echo(f"FCM emulator: {info.fcm_url}")
    typer.echo(f"Live streams: {info.stream_url}/v1/me/stream")
    typer.echo("Try:")
    typer.echo(
        f"curl -s {auth} -H 'Content-Type: application/json' {info.api_url}/v1/devices "
        """-d '{"user_id":"u1","platform":"ios","token":"%s"}'""" % ("ab" * 32)
    )
    typer.echo(
        f"curl -s {auth} -H 'Content-Type: application/json' {info.api_url}/v1/events "
        """-d '{"events":[{"event_id":"e1","type":"order.updated","user_id":"u1","""
        """"order_id":"A1","status":"shipped"}]}'"""
    )
    typer.echo(f"curl -s {auth} {info.api_url}/v1/notifications/e1")
    typer.echo(
        f"Inbox demo: {info.api_url}/demo/inbox   (a user token: herald token mint u1)", err=True
    )
    typer.echo(f"OpenAPI docs: {info.api_url}/docs   (Ctrl-C stops everything)", err=True)


def run(
    port: Annotated[
        int, typer.Option(envvar="HERALD_HTTP_PORT", help="HTTP port of the API.")
    ] = 8000,
    shards: Annotated[int, typer.Option(help="Number of UserShard actors.")] = 4,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    dashboard: Annotated[bool, typer.Option(help="Start Ray's dashboard too.")] = True,
    seed_demo: Annotated[bool, typer.Option("--seed/--no-seed", help="Seed demo users.")] = True,
) -> None:
    """Start Redis, the provider emulators, Ray and the Serve app; Ctrl-C stops them all."""
    stack, info = _start_stack(data_dir, port, shards, dashboard)
    try:
        if seed_demo:
            with _api_client(info.api_url, info.api_key, timeout=30) as api:
                seed(api)
        _print_banner(info)
        _wait_for_ctrl_c()
    finally:
        typer.echo("stopping Herald…", err=True)
        stack.stop()


def demo(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    start: Annotated[
        bool, typer.Option(help="Start a stack if none is running at the recorded address.")
    ] = True,
) -> None:
    """Scripted scenario: devices, order updates, what reached each emulator, statuses.
    Exits 0 only if every notification was delivered."""
    info = StackInfo.load(data_dir)
    stack = None
    if info is None or not _reachable(info.api_url):
        if not start:
            typer.echo("no running Herald found; start one with `make run`", err=True)
            raise typer.Exit(2)
        typer.echo("no running Herald found: starting one for the demo…", err=True)
        stack, info = _start_stack(data_dir, None, 2, False)
    try:
        ok = run_scenario(info, echo=typer.echo)
    finally:
        if stack is not None:
            stack.stop()
    raise typer.Exit(0 if ok else 1)


def _reachable(url: str) -> bool:
    """Whether a Herald answers at `url`: stack.json outlives the stack that wrote it."""
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _api_client(api_url: str, api_key: str | None, timeout: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=api_url, headers=headers, timeout=timeout)


def status(
    api_url: Annotated[
        str | None, typer.Option("--api", envvar="HERALD_API_URL", help="Herald's base URL.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--key", envvar="HERALD_API_KEY", help="An admin API key.")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Herald at a glance: readiness, shard sizes, log backlog, router and sender counters
    (from `/readyz` and `/v1/admin/stats`; defaults to the local stack `make run` started)."""
    info = StackInfo.load(data_dir)
    api_url = api_url or (info.api_url if info else "http://127.0.0.1:8000")
    api_key = api_key or (info.api_key if info else None)
    try:
        with _api_client(api_url, api_key, timeout=10) as api:
            ready = api.get("/readyz")
            stats = api.get("/v1/admin/stats")
    except httpx.HTTPError as exc:
        typer.echo(f"Herald at {api_url} is not reachable: {exc}", err=True)
        raise typer.Exit(2) from exc
    if stats.status_code != 200:
        typer.echo(f"GET /v1/admin/stats: {stats.status_code} {stats.text}", err=True)
        raise typer.Exit(2)
    down = [name for name, up in ready.json().get("checks", {}).items() if not up]
    typer.echo(f"Herald at {api_url}: {'ready' if not down else 'NOT READY: ' + ', '.join(down)}")
    for line in _stats_lines(stats.json()):
        typer.echo(line)
    raise typer.Exit(0 if not down else 1)


def _stats_lines(body: dict) -> list[str]:
    """`/v1/admin/stats` summed over replicas: one line each for shards, log backlog,
    router counters and sends per channel/lane (a replica count only where there are more
    than one), short enough to read at a glance."""
    shards = body["shards"]
    total = {k: sum(s[k] for s in shards) for k in ("profiles", "devices", "active_devices")}
    counters: dict[str, int] = {}
    for router in body["routers"]:
        for key, value in router.items():
            if key != "router":
                counters[key] = counters.get(key, 0) + value
    sent: dict[str, list[int]] = {}  # channel/lane -> [sent, replicas]
    for sender in body["senders"]:
        pool = sent.setdefault(f"{sender['channel']}/{sender['lane']}", [0, 0])
        pool[0] += sender["sent"]
        pool[1] += 1
    return [
        f"shards: {len(shards)}  users {total['profiles']:,}  devices {total['devices']:,} "
        f"({total['active_devices']:,} active)",
        "log backlog: " + "  ".join(f"{k} {v:,}" for k, v in body["log_backlog"].items()),
        "routers: " + "  ".join(f"{k} {v:,}" for k, v in sorted(counters.items())),
        "sent: "
        + "  ".join(
            f"{name} {n:,}" + (f" ({replicas} replicas)" if replicas > 1 else "")
            for name, (n, replicas) in sent.items()
        ),
    ]
