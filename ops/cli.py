"""`herald`: run the local stack, run the demo scenario, look at a running cluster."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import httpx
import typer

from ops.demo import StackInfo, run_scenario, seed

app = typer.Typer(help="Herald: personalized notification fan-out on Ray.", no_args_is_help=True)

DataDir = Annotated[Path, typer.Option(help="Where the local stack keeps its state.")]


def _start_stack(data_dir: Path, port: int | None, shards: int, dashboard: bool):
    from ops.local import LocalStack

    stack = LocalStack(data_dir=data_dir, http_port=port, shards=shards, dashboard=dashboard)
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
    )
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


@app.command()
def run(
    port: Annotated[int, typer.Option(help="HTTP port of the API.")] = 8000,
    shards: Annotated[int, typer.Option(help="Number of UserShard actors.")] = 4,
    data_dir: DataDir = Path(".herald"),
    dashboard: Annotated[bool, typer.Option(help="Start Ray's dashboard too.")] = True,
    seed_demo: Annotated[bool, typer.Option("--seed/--no-seed", help="Seed demo users.")] = True,
) -> None:
    """Start Redis, the provider emulators, Ray and the Serve app; Ctrl-C stops them all."""
    stack, info = _start_stack(data_dir, port, shards, dashboard)
    try:
        if seed_demo:
            headers = {"Authorization": f"Bearer {info.api_key}"}
            with httpx.Client(base_url=info.api_url, headers=headers, timeout=30) as api:
                seed(api)
        auth = f"-H 'Authorization: Bearer {info.api_key}'"
        typer.echo(f"API: {info.api_url}")
        typer.echo(f"API key: {info.api_key}")
        typer.echo(f"APNs emulator: {info.apns_url}")
        typer.echo(f"FCM emulator: {info.fcm_url}")
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
        typer.echo(f"OpenAPI docs: {info.api_url}/docs   (Ctrl-C stops everything)", err=True)
        _wait_for_ctrl_c()
    finally:
        typer.echo("stopping Herald…", err=True)
        stack.stop()


@app.command()
def demo(
    data_dir: DataDir = Path(".herald"),
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


dlq = typer.Typer(help="The dead-letter stream: deliveries and events that gave up.")
app.add_typer(dlq, name="dlq")


def _settings(data_dir: Path):
    """HERALD_* settings; the local stack's Redis when no HERALD_REDIS_URL is set."""
    import os

    from cluster.settings import HeraldSettings

    info = StackInfo.load(data_dir)
    if "HERALD_REDIS_URL" not in os.environ and info is not None:
        return HeraldSettings(redis_url=info.redis_url)
    return HeraldSettings()


@dlq.command("list")
def dlq_list(
    count: Annotated[int, typer.Option(help="Most entries to show.")] = 50,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Dead letters, oldest first: id, kind, reason, and what it was."""
    import json

    from cluster.state.dead_letters import list_dead_letters

    entries = list_dead_letters(_settings(data_dir), count)
    for entry in entries:
        typer.echo(f"{entry['id']}  {entry['kind']:<8} {entry['reason']}")
        typer.echo(f"    {json.dumps(entry['body'])[:200]}")
    typer.echo(f"{len(entries)} dead letter(s)", err=True)


@dlq.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="Entry ids; all when none.")] = None,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Send dead letters again: deliveries with a fresh attempt budget, events to their lane."""
    from cluster.state.dead_letters import replay_dead_letters

    n = replay_dead_letters(_settings(data_dir), ids or None)
    typer.echo(f"replayed {n} dead letter(s)")


@app.command()
def synth(
    users: Annotated[int, typer.Option(min=1, help="Number of synthetic users.")] = 100_000,
    seed_: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same files.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory to write the Parquet files to.")] = Path(
        "synth"
    ),
) -> None:
    """Write a synthetic population (users, devices, wishlists, products as Parquet) and its
    hidden ground-truth engagement model (ground_truth.json)."""
    import time

    from models.synth import synthesize

    started = time.perf_counter()
    paths = synthesize(users, seed_, out)
    took = time.perf_counter() - started
    for name in ("users", "devices", "wishlists", "products"):
        path = getattr(paths, name)
        size = path.stat().st_size / 1e6
        typer.echo(f"{name}: {path} ({paths.rows[name]:,} rows, {size:.1f} MB)")
    typer.echo(f"ground truth: {paths.ground_truth}")
    typer.echo(f"took {took:.2f} s")


def _running_shards(namespace: str) -> int:
    """How many UserShard actors the running cluster has in `namespace`."""
    import ray

    from cluster.names import shard_name

    prefix = shard_name(0).removesuffix("0")
    found = [
        int(actor["name"].removeprefix(prefix))
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == namespace
        and actor["name"].startswith(prefix)
        and actor["name"].removeprefix(prefix).isdigit()
    ]
    return max(found) + 1 if found else 0


@app.command("import")
def import_(
    src: Annotated[Path, typer.Argument(help="A `herald synth` output directory.")],
    address: Annotated[
        str, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster to connect to.")
    ] = "auto",
    shards: Annotated[
        int | None,
        typer.Option(help="Shard count of the running stack (default: counted from Ray)."),
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows per shard call.")] = 50_000,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Bulk-load users.parquet, devices.parquet and wishlists.parquet (whichever exist) from
    DIR into the running stack's shards, bypassing HTTP; prints rows and rows/s per table."""
    import time

    import pyarrow.parquet as pq
    import ray

    from ops.importer import import_devices, import_users, import_wishlists

    files = {
        name: src / f"{name}.parquet"
        for name in ("users", "devices", "wishlists")
        if (src / f"{name}.parquet").exists()
    }
    if not files:
        typer.echo(f"no users/devices/wishlists .parquet in {src}", err=True)
        raise typer.Exit(2)
    settings = _settings(data_dir)
    try:
        ray.init(address=address, namespace=settings.topology.namespace, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        hint = "" if address == "auto" else " (token auth on? set RAY_AUTH_MODE=token)"
        typer.echo(f"no running Ray cluster at {address!r}{hint}: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        shards = shards or _running_shards(settings.topology.namespace)
        if not shards:
            typer.echo(
                f"no Herald shards in Ray namespace {settings.topology.namespace!r}", err=True
            )
            raise typer.Exit(2)
        settings = settings.with_overrides(shards=shards)
        loaders = {"users": import_users, "devices": import_devices}
        total_started = time.perf_counter()
        for name, path in files.items():
            started = time.perf_counter()
            table = pq.read_table(path)
            if name == "wishlists":
                written = import_wishlists(settings, table, chunk_users=chunk_rows)
            else:
                written = loaders[name](settings, table, chunk_rows=chunk_rows)
            took = time.perf_counter() - started
            rate = written / max(took, 1e-9)
            typer.echo(f"{name}: {written:,} rows in {took:.2f} s ({rate:,.0f} rows/s)")
        typer.echo(f"{shards} shards, took {time.perf_counter() - total_started:.2f} s")
    finally:
        ray.shutdown()


@app.command()
def status(
    api_url: Annotated[
        str | None, typer.Option("--api", envvar="HERALD_API_URL", help="Herald's base URL.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--key", envvar="HERALD_API_KEY", help="An admin API key.")
    ] = None,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Herald at a glance: readiness, shard sizes, log backlog, router and sender counters
    (from `/readyz` and `/v1/admin/stats`; defaults to the local stack `make run` started)."""
    info = StackInfo.load(data_dir)
    api_url = api_url or (info.api_url if info else "http://127.0.0.1:8000")
    api_key = api_key or (info.api_key if info else None)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=api_url, headers=headers, timeout=10) as api:
            ready = api.get("/readyz")
            stats = api.get("/v1/admin/stats")
    except httpx.HTTPError as exc:
        typer.echo(f"Herald at {api_url} is not reachable: {exc}", err=True)
        raise typer.Exit(2) from exc
    if stats.status_code != 200:
        typer.echo(f"GET /v1/admin/stats: {stats.status_code} {stats.text}", err=True)
        raise typer.Exit(2)
    down = [name for name, up in ready.json().get("checks", {}).items() if not up]
    body = stats.json()
    shards = body["shards"]
    total = {k: sum(s[k] for s in shards) for k in ("profiles", "devices", "active_devices")}
    typer.echo(f"Herald at {api_url}: {'ready' if not down else 'NOT READY: ' + ', '.join(down)}")
    typer.echo(
        f"shards: {len(shards)}  users {total['profiles']:,}  devices {total['devices']:,} "
        f"({total['active_devices']:,} active)"
    )
    typer.echo("log backlog: " + "  ".join(f"{k} {v:,}" for k, v in body["log_backlog"].items()))
    counters: dict[str, int] = {}
    for router in body["routers"]:
        for key, value in router.items():
            if key != "router":
                counters[key] = counters.get(key, 0) + value
    typer.echo("routers: " + "  ".join(f"{k} {v:,}" for k, v in sorted(counters.items())))
    sent: dict[str, list[int]] = {}  # channel/lane -> [sent, replicas]
    for sender in body["senders"]:
        total = sent.setdefault(f"{sender['channel']}/{sender['lane']}", [0, 0])
        total[0] += sender["sent"]
        total[1] += 1
    typer.echo(
        "sent: "
        + "  ".join(
            f"{name} {n:,}" + (f" ({replicas} replicas)" if replicas > 1 else "")
            for name, (n, replicas) in sent.items()
        )
    )
    raise typer.Exit(0 if not down else 1)


def _reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- herald model: the model registry ---------------------------------------------------

model = typer.Typer(
    help="The ranking model registry: list, train, evaluate, deploy, roll back.",
    no_args_is_help=True,
)
app.add_typer(model, name="model")

ModelDir = Annotated[
    Path | None,
    typer.Option(
        envvar="HERALD_MODEL_DIR",
        help="The model registry directory (default: <data-dir>/models).",
    ),
]


def _registry(model_dir: Path | None, data_dir: Path):
    from models.registry import Registry

    return Registry(model_dir if model_dir is not None else data_dir / "models")


def _refuse(exc: BaseException) -> typer.Exit:
    """One line on stderr and exit status 2, for an unknown version or a refused model."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    typer.echo(f"error: {message}".splitlines()[0], err=True)
    return typer.Exit(2)


@model.command("list")
def model_list(model_dir: ModelDir = None, data_dir: DataDir = Path(".herald")) -> None:
    """Registered versions, newest first; `*` marks the deployed one."""
    try:
        versions = _registry(model_dir, data_dir).list()
    except (KeyError, ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    for meta in versions:
        metrics = meta.get("metrics") or {}
        auc = metrics.get("holdout_auc")
        auc_text = f"AUC {auc:.4f}  " if isinstance(auc, int | float) else ""
        typer.echo(
            f"{'*' if meta['current'] else ' '} {meta['version']:<22} "
            f"{str(meta.get('registered_at', ''))[:19]:<19}  {auc_text}"
            f"{str(meta.get('trained_on', ''))[:70]}"
        )


@model.command("show")
def model_show(
    version: Annotated[str, typer.Argument(help="A registered version.")],
    model_dir: ModelDir = None,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """A version's metadata (JSON): metrics, training data, feature version, sha256."""
    import json

    try:
        meta = _registry(model_dir, data_dir).show(version)
    except (KeyError, ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    typer.echo(json.dumps(meta, indent=2, sort_keys=True))


@model.command("deploy")
def model_deploy(
    version: Annotated[str, typer.Argument(help="A registered version.")],
    model_dir: ModelDir = None,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Point the registry at VERSION after loading it under the feature contract."""
    try:
        previous = _registry(model_dir, data_dir).deploy(version)
    except (KeyError, ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    typer.echo(f"deployed {version} (previous: {previous})")


@model.command("rollback")
def model_rollback(model_dir: ModelDir = None, data_dir: DataDir = Path(".herald")) -> None:
    """Re-deploy the version deployed before the current one."""
    registry = _registry(model_dir, data_dir)
    try:
        previous = registry.rollback()
    except (KeyError, ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    typer.echo(f"rolled back to {registry.current()} (previous: {previous})")


@model.command("train")
def model_train(
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="A feedback log: DIR/day=YYYY-MM-DD/*.parquet, or the cluster's feedback "
            "directory (DIR/sends + DIR/actions)."
        ),
    ] = None,
    synth_users: Annotated[
        int | None, typer.Option(min=100, help="Train on simulated feedback of N synthetic users.")
    ] = None,
    register: Annotated[bool, typer.Option(help="Register the model in the registry.")] = False,
    seed_: Annotated[int, typer.Option("--seed", help="Seed of the simulation.")] = 7,
    holdout_share: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Latest share of sends held out.")
    ] = 0.2,
    model_dir: ModelDir = None,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Train a ranker on a feedback log or on simulated feedback; prints the hold-out
    metrics (time-based split), and with --register adds it to the registry."""
    import time

    from models.training import describe, read_feedback_log, train

    if feedback is not None and synth_users is not None:
        typer.echo("error: give --feedback or --synth-users, not both", err=True)
        raise typer.Exit(2)
    started = time.perf_counter()
    try:
        rows = None
        if feedback is not None and (feedback / "sends").is_dir():
            # the cluster's layout (sends + actions): join them into one row per send
            from pipelines.feedback_log import training_rows

            rows = training_rows(feedback)
        elif feedback is not None:
            rows = read_feedback_log(feedback)
        fitted, metrics = train(
            rows, synth_users=synth_users, seed=seed_, holdout_share=holdout_share
        )
    except (ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    typer.echo(describe(metrics))
    typer.echo(f"took {time.perf_counter() - started:.2f} s")
    if register:
        source = f"feedback log {feedback.resolve()}" if feedback is not None else metrics["source"]
        try:
            version = _registry(model_dir, data_dir).register(
                fitted, metrics=metrics, trained_on=source
            )
        except (KeyError, ValueError, OSError) as exc:
            raise _refuse(exc) from exc
        typer.echo(f"registered {version} (deploy it with `herald model deploy {version}`)")


@model.command("evaluate")
def model_evaluate(
    version: Annotated[
        str | None, typer.Argument(help="A registered version (default: the deployed one).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write lift / calibration / regret PNGs and JSON here.")
    ] = None,
    users: Annotated[int, typer.Option(min=1_000, help="Size of the fresh population.")] = 50_000,
    model_dir: ModelDir = None,
    data_dir: DataDir = Path(".herald"),
) -> None:
    """Offline evaluation against the synthetic world's ground truth: precision@k and
    expected clicks vs random / recency / oracle targeting, calibration, bandit regret."""
    from models.evaluate import describe, evaluate

    try:
        ranker = _registry(model_dir, data_dir).load(version)
    except (KeyError, ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    typer.echo(describe(evaluate(ranker, users=users, out_dir=out)))


if __name__ == "__main__":
    app()
